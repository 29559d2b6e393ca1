"""Train the stylistic classifier from labels and images: cached features, head, calibration, report, checkpoint.

Labels come from a Parquet/CSV file (``key`` or ``path``, ``label``, optional ``annotator`` and ``time``) or a
labeling-session database (``--labels-db``); images from WebDataset shards or a folder of image files. The work is
``classifier.training.train_classifier`` (docs/classifier.md); this script only parses the flags.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: pipelines/ is first on sys.path, the repo root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli import config_parser, error_boundary, parse_config

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

    return config_parser("train-classifier", __doc__.split("\n\n")[0], EXAMPLES, TrainClassifierConfig,
                         "val_fraction=0.25")


@error_boundary("train-classifier")
def main(argv: list[str] | None = None) -> int:
    from classifier.training import TrainClassifierConfig

    cfg, _ = parse_config(build_parser(), TrainClassifierConfig, argv)
    from classifier.training import json_text, train_classifier

    summary = train_classifier(cfg)
    print(json_text({k: summary[k] for k in ("version", "checkpoint", "metrics")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
