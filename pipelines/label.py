"""Labeling session web app: keyboard-first stylistic / not-stylistic decisions with background active learning.

Run ``python pipelines/label.py --pool POOL --db labels.sqlite [--classifier CKPT]`` and open the printed address.
Every decision is committed to SQLite (WAL) before the response returns; the page waits for that response before
it shows the next image, so a confirmed label survives the server being killed. Bound to 127.0.0.1 by default;
any other address needs the access token printed at start. The app itself is ``classifier.labeling``.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: pipelines/ is first on sys.path, the repo root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from classifier.labeling.app import create_app, needs_token, startup_lines
from classifier.labeling.session import LabelConfig
from core.cli import config_parser, error_boundary, format_error, parse_config
from core.errors import BbstError

EXAMPLES = (
    ("bbst label --pool bbst-demo --db labels.sqlite --classifier bbst-demo/demo-classifier",
     "label the demo output, starting from its DEMO classifier; open the printed address"),
    ("bbst label --pool RUN/shards --db labels.sqlite --weights cache --port 8001",
     "label a curation run's shards from scratch with backbone weights from the local caches"),
    ("bbst label --pool imgs/ --db labels.sqlite --model test_vit_shared --retrain-every 10",
     "a folder of images with a tiny random-init test model (a smoke run; useless suggestions)"),
)


def build_parser() -> argparse.ArgumentParser:
    metavars = {"pool": "POOL", "db": "FILE", "classifier": "CKPT", "model": "NAME", "weights": "FILE|cache",
                "style_weights": "FILE|cache", "server.host": "ADDR", "server.port": "N", "server.token": "TOKEN",
                "active.retrain_every": "N", "active.min_per_class": "N"}
    flags = {key: {"metavar": m, **({"required": True} if key == "pool" else {})} for key, m in metavars.items()}
    return config_parser("label", __doc__.splitlines()[0], EXAMPLES, LabelConfig, "sampling.random_share=0.5",
                         flags, rest=False)


@error_boundary("label")
def main(argv=None) -> int:
    cfg, args = parse_config(build_parser(), LabelConfig, argv)
    import uvicorn

    # hand the GIL over sooner (default 5 ms): a request thread waiting behind the feature worker is latency
    sys.setswitchinterval(0.001)
    require = needs_token(cfg.server.host)
    token = (cfg.server.token or secrets.token_urlsafe(24)) if require else None
    try:
        app = create_app(cfg, require_token=require, token=token)
    except (FileNotFoundError, ValueError) as exc:
        if isinstance(exc, BbstError):
            raise  # the boundary prints it (with its hint)
        # a missing or unreadable file deep in the model code: one clear line naming the file, no traceback
        print(format_error("label", exc), file=sys.stderr)
        return 2
    for line in startup_lines(app, cfg, token):
        print(line, flush=True)
    # uvicorn's own startup lines only when asked for: the line above already says where to go
    uvicorn_level = args.log_level.lower() if args.log_level.lower() in ("debug", "trace") else "warning"
    try:
        uvicorn.run(app, host=cfg.server.host, port=cfg.server.port, log_level=uvicorn_level, access_log=False)
    finally:
        app.state.session.close()  # releases the database lock
    return 0


if __name__ == "__main__":
    sys.exit(main())
