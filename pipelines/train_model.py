"""Train a style-transfer model (NeAT by default) on curated content/style shards.

One training function (``train.trainer.train``) under three launchers: ``none`` (one process), ``torchrun``
(rank and world size from torchrun's environment) and ``ray`` (Ray Train's ``TorchTrainer``, attached to the
cluster named by ``RAY_ADDRESS`` or a local Ray). ``--resume RUN|CKPT`` continues a run exactly
(``train.trainer.resolve_run``); docs/training.md has the details.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: pipelines/ is first on sys.path, the repo root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli import add_config_file_flags, error_boundary, exit_with, make_parser, setup_logging
from core.config import ConfigError, from_dict, to_dict
from train.config import TrainConfig, pin_local_paths

log = logging.getLogger("bbst.train")


EXAMPLES = (
    ("bbst train --config train/configs/neat_tiny.yaml --set data.root=bbst-demo --set loader.num_workers=1",
     "CPU smoke run of a tiny NeAT on the demo output of `bbst build` (one shard per subset: one reader)"),
    ("bbst train --config train/configs/neat_tiny.yaml --set data.root=bbst-demo --set loader.num_workers=1 --resume",
     "continue that run (stopped or killed) from its newest checkpoint"),
)


def build_parser():
    p = make_parser("train", __doc__.split("\n")[0], EXAMPLES)
    add_config_file_flags(p, "TrainConfig (see train/configs/neat_tiny.yaml, neat_1024.yaml)", "loader.batch_size=8")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN|CKPT",
                   help="continue a run: a run folder (its config.yaml and newest checkpoint), a checkpoint file, "
                        "or nothing (the newest checkpoint of --config's run) (default: start afresh)")
    p.add_argument("--launcher", choices=("none", "torchrun", "ray"), default="none",
                   help="how ranks are started: one process, torchrun's environment, or Ray Train (default: none)")
    return p


def _ray_train_loop(config: dict) -> None:
    """Runs on every Ray Train worker; Ray has already created the process group."""
    import ray.train

    from train.trainer import train

    setup_logging(config.get("log_level", "INFO"))
    cfg = from_dict(TrainConfig, config["cfg"], "<ray train config>")
    os.environ.setdefault("LOCAL_RANK", str(ray.train.get_context().get_local_rank()))
    if cfg.distributed.use_gpu:  # Ray decides which of the visible GPUs is this worker's
        import ray.train.torch

        cfg.distributed.device = str(ray.train.torch.get_device())

    def report(step: int, logs: dict[str, float]) -> None:
        ray.train.report({"step": step, **logs})

    train(cfg, resume=config["resume"], on_log=report)


def run_ray(cfg: TrainConfig, resume: bool | str, log_level: str = "INFO") -> Any:
    try:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError as exc:  # pragma: no cover - ray is a declared dependency
        raise ImportError("--launcher ray needs Ray Train: pip install 'ray[train]'") from exc

    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
    cfg = pin_local_paths(cfg)
    trainer = TorchTrainer(
        _ray_train_loop,
        train_loop_config={"cfg": to_dict(cfg), "resume": resume, "log_level": log_level},
        scaling_config=ScalingConfig(num_workers=cfg.distributed.num_workers, use_gpu=cfg.distributed.use_gpu),
        run_config=RunConfig(name="train_model", storage_path=os.path.join(cfg.logging.dir, "ray")),
    )
    return trainer.fit()


@error_boundary("train")
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, progress=True)
    from train.trainer import resolve_run, train

    cfg, resume = resolve_run(args.config, args.sets, args.resume)
    if args.launcher == "ray":
        result = run_ray(cfg, resume, args.log_level)
        return {"metrics": dict(result.metrics or {}), "error": result.error}
    if args.launcher == "torchrun" and "WORLD_SIZE" not in os.environ:
        raise ConfigError("--launcher torchrun: WORLD_SIZE is not set",
                          hint="start it with torchrun, e.g. torchrun --nproc_per_node 2 pipelines/train_model.py ...")
    return train(cfg, resume=resume)


if __name__ == "__main__":
    exit_with(main())
