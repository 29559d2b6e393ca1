"""Top-level configuration of the curation job: the stage configs plus run, Ray and output options."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from core.config import check_range, field_comments
from curate.dedup import DedupConfig
from curate.downloader import DownloadConfig
from curate.imagecheck import ImageCheckConfig
from curate.reader import ReaderConfig
from curate.split import SplitConfig


@dataclass
class ScoreConfig:
    """The optional stylistic-classifier stage."""

    classifier: str | None = None  # checkpoint path of the stylistic classifier; None skips scoring
    actors: int = 1  # scorer actors (each loads the model once)
    num_gpus: float = 0.0  # GPUs per scorer actor (0 runs on CPU)
    num_cpus: float = 1.0  # CPUs per scorer actor
    batch_size: int = 32  # images per scorer call
    device: str | None = None  # torch device for the scorer; None picks cuda when num_gpus > 0, else cpu
    options: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the scorer class


@dataclass
class ShardConfig:
    """Output shard sizing: a shard closes at whichever target it reaches first."""

    target_bytes: int = 1_000_000_000  # approximate tar size in bytes
    target_samples: int = 5000  # samples per tar
    num_cpus: float = 1.0  # CPUs reserved per shard-writing task (reading staged bytes, hashing, writing)

    def __post_init__(self) -> None:
        if self.target_bytes < 1 or self.target_samples < 1 or self.num_cpus <= 0:
            raise ValueError(f"target_bytes and target_samples must be >= 1 and num_cpus > 0, got "
                             f"target_bytes={self.target_bytes}, target_samples={self.target_samples}, "
                             f"num_cpus={self.num_cpus}")


@dataclass
class RayConfig:
    """How the stages are placed on Ray."""

    unit_rows: int = 128  # URL rows per download+check call (one staged bytes file and one rows file each)
    stage_num_cpus: float = 1.0  # CPUs reserved per download+check call (downloads overlap the decoding)
    dedup_buckets: int = 64  # most hash buckets of the dedup shuffle (one per 250k rows: parallel tasks per step)

    def __post_init__(self) -> None:
        if self.unit_rows < 1 or self.stage_num_cpus <= 0 or self.dedup_buckets < 1:
            raise ValueError(f"unit_rows and dedup_buckets must be >= 1 and stage_num_cpus > 0, "
                             f"got unit_rows={self.unit_rows}, dedup_buckets={self.dedup_buckets}, "
                             f"stage_num_cpus={self.stage_num_cpus}")


@dataclass
class BuildConfig:
    """Everything ``pipelines/build_bbst.py`` needs: inputs, stage options, output and run behaviour."""

    urls: str | None = None  # URL list (Parquet, CSV/TSV, JSONL; local or fsspec URL); None runs the built-in demo
    # (with reader.format=images, which --images sets: a folder tree or glob of image files, local or fsspec)
    out: str = "./bbst-out"  # output directory (local or fsspec URL such as s3://bucket/prefix)
    min_side: int | None = None  # shortcut for check.min_side (the short-side floor, 1024 by default)
    allow_private_network: bool | None = None  # shortcut for download.allow_private_network
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options for urls and out (endpoint, ...)
    keep_staging: bool = False  # keep DIR/_staging (downloaded bytes, per-partition rows) after success
    progress_interval_s: float = 10.0  # seconds between progress lines (negative: never)
    report: bool = True  # write DIR/report.html
    report_thumbnails: int = 8  # thumbnails per subset in the report
    demo_images: int = 40  # generated images in the built-in demo corpus (when urls is None)
    demo_classifier: bool = True  # the demo bootstraps a DEMO classifier from its known labels and scores with it
    reader: ReaderConfig = field(default_factory=ReaderConfig)  # URL-list reading and partitioning
    download: DownloadConfig = field(default_factory=DownloadConfig)  # HTTP download policy
    check: ImageCheckConfig = field(default_factory=ImageCheckConfig)  # header checks, filters, validation
    dedup: DedupConfig = field(default_factory=DedupConfig)  # exact and near-duplicate removal
    score: ScoreConfig = field(default_factory=ScoreConfig)  # optional stylistic classifier
    split: SplitConfig = field(default_factory=SplitConfig)  # style/content subset rules
    shards: ShardConfig = field(default_factory=ShardConfig)  # output shard sizing
    ray: RayConfig = field(default_factory=RayConfig)  # Ray placement of the stages

    def __post_init__(self) -> None:
        check_range(self, "demo_images", low=1)
        # the shortcuts exist so the common knobs are one flag away; they write through to the stage configs
        if self.min_side is not None:
            self.check = dataclasses.replace(self.check, min_side=self.min_side)
        if self.allow_private_network is not None:
            self.download = dataclasses.replace(self.download, allow_private_network=self.allow_private_network)
        self._widen_input_roots()

    def _widen_input_roots(self) -> None:
        """Let the download stage read what the user named: the ``--images`` folder joins ``input_roots``, and
        remote roots use the run's ``storage_options`` unless ``download.storage_options`` has their protocol."""
        import os

        from curate.inputs import image_root, url_kind

        roots = list(self.download.input_roots)
        if self.reader.format == "images" and self.urls:
            root = image_root(self.urls)
            root = os.path.abspath(root) if url_kind(root) == "relative" else root
            if root not in roots:
                roots.append(root)
        options = dict(self.download.storage_options)
        for root in roots:
            protocol = root.split("://", 1)[0].lower() if url_kind(root) == "fsspec" else None
            if protocol and protocol not in options and self.storage_options:
                options[protocol] = dict(self.storage_options)
        if roots != self.download.input_roots or options != self.download.storage_options:
            self.download = dataclasses.replace(self.download, input_roots=roots, storage_options=options)


def iter_field_paths(cls: type, prefix: str = "") -> list[str]:
    """Dotted names of every leaf option of config class ``cls`` (used to check the example YAML is complete)."""
    import typing

    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out.extend(iter_field_paths(tp, f"{prefix}{f.name}."))
        else:
            out.append(prefix + f.name)
    return out


def example_yaml(cls: type = BuildConfig, indent: int = 0) -> str:
    """The default config of ``cls`` as commented YAML: every option, its default and its one-line comment."""
    import typing

    import yaml

    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    default = cls()
    pad = " " * indent
    lines = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        comment = comments.get(f.name, "")
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            lines.append(f"{pad}{f.name}:  # {comment}")
            lines.append(example_yaml(tp, indent + 2))
            continue
        value = getattr(default, f.name)
        text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
        if text.endswith("\n..."):
            text = text[:-4].strip()
        text = text.removesuffix("...").strip()
        lines.append(f"{pad}{f.name}: {text}  # {comment}")
    return "\n".join(lines)


if __name__ == "__main__":
    print("# Every option of pipelines/build_bbst.py with its default. Generated by `python -m curate.build_config`.")
    print("# Copy this file, change what you need; unknown keys are errors. Flags and --set override it.")
    print(example_yaml())
