"""Build an evaluation protocol file from images you supply: pick N contents and M styles, record paths and checksums.

``--content``/``--style`` take a folder, an image, or a text file of paths or URLs; ``--template`` supplies the
settings (``n_content``, ``n_style``, sizes...). ``--tiny DIR`` writes a small generated protocol instead. The
work is ``train.evaluation.make_protocol``; docs/evaluation.md has the format.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: pipelines/ is first on sys.path, the repo root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli import config_parser, error_boundary, exit_with, parse_config
from core.config import ConfigError
from train.config import MakeProtocolConfig

log = logging.getLogger("bbst.make_protocol")


EXAMPLES = (
    (("bbst make-protocol --template train/protocols/neat_paper.yaml --content photos/ --style art/ "
     "--out eval/protocol.yaml"), "the paper's 15 content x 50 style protocol from your own images"),
    ("bbst make-protocol --tiny eval-tiny/", "a tiny generated protocol (synthetic images) to try the evaluation"),
)


def build_parser():
    path = {"metavar": "PATH", "required": True}
    return config_parser("make-protocol", __doc__.split("\n")[0], EXAMPLES, MakeProtocolConfig, "n_style=20",
                         {"template": {"metavar": "FILE"}, "content": path, "style": path, "out": path,
                          "tiny": {"metavar": "DIR"}})


@error_boundary("make-protocol")
def main(argv: list[str] | None = None) -> Path:
    cfg, _ = parse_config(build_parser(), MakeProtocolConfig, argv)
    from train.evaluation import make_protocol, write_tiny_protocol

    if cfg.tiny:
        path = write_tiny_protocol(cfg.tiny)
        log.info("wrote %s", path)
        return path
    for flag in ("content", "style", "out"):
        if not getattr(cfg, flag):
            raise ConfigError(f"--{flag} is required (or --tiny DIR)")
    proto = make_protocol(cfg.content, cfg.style, cfg.out, cfg.template, cfg.n_content, cfg.n_style, cfg.seed, cfg.name)
    log.info("wrote %s: %d contents x %d styles = %d pairs", cfg.out, len(proto.contents), len(proto.styles),
             len(proto.pair_list()))
    return Path(cfg.out)


if __name__ == "__main__":
    exit_with(main())
