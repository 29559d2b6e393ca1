"""Build an evaluation protocol file from images you supply: pick N contents and M styles, record paths and checksums.

``python pipelines/make_protocol.py --template train/protocols/neat_paper.yaml --content photos/ --style art/
--out eval/protocol.yaml`` picks 15 content and 50 style images (the template's ``n_content``/``n_style``, or
``--n-content``/``--n-style``) at random with ``--seed``, and writes a protocol whose image paths are relative to
the protocol file, with each local file's SHA-256 so a later run can tell the images changed. ``--content`` and
``--style`` take a folder, an image, or a text file listing one path or fsspec URL per line.

``python pipelines/make_protocol.py --tiny DIR`` writes a small generated protocol (synthetic images) for trying the
evaluation out.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/make_protocol.py` puts pipelines/ first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# the evaluation code (torch) is imported inside main(): `--help` prints before torch loads
from core.cli import error_boundary, exit_with, make_parser
from core.config import ConfigError, from_dict, read_yaml, resolve_file

log = logging.getLogger("bbst.make_protocol")


def gather(source: str) -> list[str]:
    """Images of a folder (sorted), one image, or the lines of a text file (paths or URLs)."""
    from core.images import is_image_name

    p = Path(source)
    if p.is_dir():
        return [str(f) for f in sorted(p.iterdir()) if is_image_name(f.name)]
    if p.is_file() and is_image_name(p.name):
        return [str(p)]
    if p.is_file():
        base = p.parent
        items = [line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]
        return [i if "://" in i or os.path.isabs(i) else str(base / i) for i in items]
    raise ConfigError(f"{source}: no such folder, image or list file")


def pick(items: list[str], n: int, rng: random.Random, what: str) -> list[str]:
    if n <= 0:
        return items
    if len(items) < n:
        raise ConfigError(f"--{what}: {n} images wanted, only {len(items)} found",
                          hint=f"add images or pass --n-{what} {len(items)}")
    return sorted(rng.sample(items, n))


EXAMPLES = (
    (("bbst make-protocol --template train/protocols/neat_paper.yaml --content photos/ --style art/ "
     "--out eval/protocol.yaml"), "the paper's 15 content x 50 style protocol from your own images"),
    ("bbst make-protocol --tiny eval-tiny/", "a tiny generated protocol (synthetic images) to try the evaluation"),
)


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("make-protocol", __doc__.split("\n")[0], EXAMPLES)
    p.add_argument("--template", metavar="FILE",
                   help="protocol YAML whose settings are kept, e.g. train/protocols/neat_paper.yaml "
                        "(default: none, the built-in protocol settings)")
    p.add_argument("--content", metavar="PATH", help="folder, image or list file of content images (required)")
    p.add_argument("--style", metavar="PATH", help="folder, image or list file of style images (required)")
    p.add_argument("--n-content", type=int, default=None, metavar="N",
                   help="content images to pick (default: the template's, else all)")
    p.add_argument("--n-style", type=int, default=None, metavar="N",
                   help="style images to pick (default: the template's, else all)")
    p.add_argument("--seed", type=int, default=None, help="seed of the random pick (default: the template's, else 0)")
    p.add_argument("--name", default=None, help="protocol name written into the tables (default: the template's)")
    p.add_argument("--out", metavar="FILE", help="protocol file to write (required)")
    p.add_argument("--tiny", metavar="DIR",
                   help="instead: write a tiny generated protocol (and its images) in DIR (default: off)")
    return p


@error_boundary("make-protocol")
def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(message)s")
    from train.evaluation import Protocol, save_protocol, sha256_of, write_tiny_protocol

    if args.tiny:
        path = write_tiny_protocol(args.tiny)
        log.info("wrote %s", path)
        return path
    for flag in ("content", "style", "out"):
        if not getattr(args, flag):
            raise ConfigError(f"--{flag} is required (or --tiny DIR)")
    template = resolve_file(args.template, "protocol", "--template") if args.template else None
    proto = from_dict(Protocol, read_yaml(template), template) if template else Protocol()
    if args.n_content is not None:
        proto.n_content = args.n_content
    if args.n_style is not None:
        proto.n_style = args.n_style
    if args.seed is not None:
        proto.seed = args.seed
    rng = random.Random(proto.seed)
    contents = pick(gather(args.content), proto.n_content, rng, "content")
    styles = pick(gather(args.style), proto.n_style, rng, "style")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    here = out.parent.resolve()

    def relative(item: str) -> str:
        return item if "://" in item else os.path.relpath(Path(item).resolve(), here)

    proto.contents = [relative(c) for c in contents]
    proto.styles = [relative(s) for s in styles]
    proto.pairs = []
    proto.name = args.name or (proto.name if proto.name != "custom" else out.stem)
    proto.sha256 = {relative(i): sha256_of(i) for i in contents + styles if "://" not in i}
    proto.__post_init__()
    save_protocol(proto, out)
    log.info("wrote %s: %d contents x %d styles = %d pairs", out, len(contents), len(styles),
             len(contents) * len(styles))
    return out


if __name__ == "__main__":
    exit_with(main())
