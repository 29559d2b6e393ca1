"""Train the stylistic classifier from labels and images: cached features, head, calibration, report, checkpoint.

    python pipelines/train_classifier.py --labels labels.parquet --images DIR/shards --out runs/clf \\
        --model bbst_vitb16_clip --weights cache

Labels come from a Parquet/CSV file (columns ``key`` or ``path``, ``label``, optional ``annotator`` and
``time``/``created_at``) or from a labeling-session database (``--labels-db``); images from WebDataset shards or a
folder of image files. The work is ``classifier.training.train_classifier``; this script only parses the flags.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/train_classifier.py` without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.cli import ConfigFlags, add_config_file_flags, error_boundary, load_args, make_parser, setup_logging

EXAMPLES = (
    ("bbst train-classifier --labels labels.parquet --images RUN/shards --out runs/clf --weights cache",
     "labels from a file (key,label), images from a curation run's shards; backbone weights from the local caches"),
    ("bbst train-classifier --labels-db labels.sqlite --images RUN/shards --out runs/clf2 --weights cache",
     "the decisions of a `bbst label` session"),
    ("bbst train-classifier --labels labels.csv --images imgs/ --model test_vit_shared --out runs/smoke",
     "a smoke run: a tiny random-init test model on a folder of images (no weights needed; useless scores)"),
)


def build_parser():
    from classifier.training import TrainClassifierConfig

    p = make_parser("train-classifier", __doc__.split("\n\n")[0], EXAMPLES)
    add_config_file_flags(p, "TrainClassifierConfig", "val_fraction=0.25")
    flags = ConfigFlags(TrainClassifierConfig)
    flags.add_all(p)  # every option of the dataclass, help from its one-line comment
    p.set_defaults(config_flags=flags)
    return p


@error_boundary("train-classifier")
def main(argv: list[str] | None = None) -> int:
    from classifier.training import TrainClassifierConfig

    args = build_parser().parse_args(argv)
    cfg = load_args(TrainClassifierConfig, args, args.config_flags)
    setup_logging(args.log_level)
    from classifier.training import json_text, train_classifier

    summary = train_classifier(cfg)
    print(json_text({k: summary[k] for k in ("version", "checkpoint", "metrics")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
