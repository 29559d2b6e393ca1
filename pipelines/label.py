"""Labeling session web app: keyboard-first stylistic / not-stylistic decisions with background active learning.

Run ``python pipelines/label.py --pool POOL --db labels.sqlite [--classifier CKPT]`` and open the printed address.
Every decision is committed to SQLite (WAL) before the response returns; the page waits for that response before
it shows the next image, so a confirmed label survives the server being killed. Bound to 127.0.0.1 by default;
any other address needs the access token printed at start. The app itself is ``classifier.labeling``.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/label.py` puts pipelines/ on sys.path, not the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from classifier.labeling.app import create_app, needs_token
from classifier.labeling.pool import PoolError
from classifier.labeling.session import DatabaseInUse, LabelConfig
from classifier.labeling.store import LabelStoreError
from curate.config import ConfigError, load_config

__all__ = ["LabelConfig", "create_app", "main", "needs_token", "parse_args"]


def parse_args(argv=None) -> tuple[LabelConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML file with LabelConfig values")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config value")
    p.add_argument("--pool", help="curation run dir, shards dir, image folder or Parquet list of paths")
    p.add_argument("--db", help="SQLite label database")
    p.add_argument("--classifier", help="starting classifier checkpoint")
    p.add_argument("--model", help="backbone name when starting from scratch")
    p.add_argument("--weights", help="trunk weights for --model: a local file or 'cache'")
    p.add_argument("--style-weights", help="style trunk weights of a two-trunk --model: a local file or 'cache'")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--token", help="access token for non-loopback binds (default: generated)")
    p.add_argument("--retrain-every", type=int, help="retrain after this many new labels")
    p.add_argument("--min-per-class", type=int, help="labels per class before the first head")
    p.add_argument("--log-level", default="info", help="log level; info shows every retrain round (default info)")
    args = p.parse_args(argv)
    overrides: dict = {k: v for k, v in {"pool": args.pool, "db": args.db, "classifier": args.classifier,
                                         "model": args.model, "weights": args.weights,
                                         "style_weights": args.style_weights}.items() if v is not None}
    server = {k: v for k, v in {"host": args.host, "port": args.port, "token": args.token}.items() if v is not None}
    active = {k: v for k, v in {"retrain_every": args.retrain_every, "min_per_class": args.min_per_class}.items()
              if v is not None}
    if server:
        overrides["server"] = server
    if active:
        overrides["active"] = active
    return load_config(LabelConfig, args.config, overrides=overrides, sets=args.set), args


def main(argv=None) -> int:
    try:
        cfg, args = parse_args(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    # hand the GIL over sooner (default 5 ms): a request thread waiting behind the feature worker is latency
    sys.setswitchinterval(0.001)
    require = needs_token(cfg.server.host)
    token = (cfg.server.token or secrets.token_urlsafe(24)) if require else None
    try:
        app = create_app(cfg, require_token=require, token=token)
    except (ConfigError, PoolError, LabelStoreError, DatabaseInUse, FileNotFoundError, ValueError) as exc:
        # bad pool, database, checkpoint or weights: one clear line naming the file, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shown_host = cfg.server.host if ":" not in cfg.server.host else f"[{cfg.server.host}]"
    url = f"http://{shown_host}:{cfg.server.port}/"
    s = app.state.session
    print(f"bbst labeling: {len(s.pool)} images from {s.pool.source}, database {cfg.db}, "
          f"{s.store.label_count()} labels, round {s.store.current_round()}", flush=True)
    if require:
        print(f"access token: {token}", flush=True)
        print(f"open {url}?token={token}", flush=True)
    else:
        print(f"open {url}", flush=True)
    # uvicorn's own startup lines only when asked for: the line above already says where to go
    uvicorn_level = args.log_level.lower() if args.log_level.lower() in ("debug", "trace") else "warning"
    try:
        uvicorn.run(app, host=cfg.server.host, port=cfg.server.port, log_level=uvicorn_level, access_log=False)
    finally:
        s.close()  # releases the database lock
    return 0


if __name__ == "__main__":
    sys.exit(main())
