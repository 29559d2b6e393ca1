"""pipelines/rast_ablation.py: every ablation config is a valid training config; a smoke run trains rows and
writes the table with restoration quality."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.config import load_config
from train.config import TrainConfig
from train.models.rast import RASTConfig

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "train/configs/rast_ablation").glob("*.yaml"))


def test_one_config_per_row_of_the_seed_table_each_removing_its_losses():
    assert {p.stem for p in CONFIGS} == {"full", "no_content", "no_style", "no_restoration", "no_adversarial",
                                         "no_idempotency", "no_lpips"}
    full = load_config(TrainConfig, REPO / "train/configs/rast_ablation/full.yaml")
    weights = RASTConfig(**full.model.kwargs).loss_weights()
    removed = {"no_content": ["content", "content_transitive"],
               "no_style": ["style", "style_transitive", "style_diff"],
               "no_restoration": ["content_restoration", "style_restoration"], "no_adversarial": ["adv"],
               "no_idempotency": ["idempotency"], "no_lpips": ["lpips"]}
    for path in CONFIGS:
        cfg = load_config(TrainConfig, path)
        assert cfg.model.name == "rast"
        w = RASTConfig(**cfg.model.kwargs).loss_weights()
        changed = {k for k in w if w[k] != weights[k]}
        assert changed == {k for k in removed.get(path.stem, []) if weights[k]}, path.stem
        assert all(w[k] == 0 for k in removed.get(path.stem, []))


def test_ablation_script_trains_rows_and_writes_the_table(tmp_path):
    from pipelines.rast_ablation import main
    from train.demo_shards import write_demo_shards
    from train.evaluation import write_tiny_protocol

    torch.set_num_threads(1)
    root = write_demo_shards(tmp_path / "shards", {"content": [4], "style": [4]}, size=(48, 48))
    proto = write_tiny_protocol(tmp_path / "proto")
    configs = [str(REPO / "train/configs/rast_ablation/full.yaml"),
               str(REPO / "train/configs/rast_ablation/no_adversarial.yaml")]
    res = main(["--configs", *configs, "--data", str(root), "--protocol", str(proto), "--steps", "2",
                "--out", str(tmp_path / "abl"), "--random-metrics", "--no-timing", "--device", "cpu",
                "--set", "model.name=rast_tiny", "--set", "model.kwargs.lpips_backbone=null",
                "--set", "data.crop_size=32", "--set", "data.short_side_min=32", "--set", "data.short_side_max=48",
                "--set", "loader.num_workers=0", "--set", "threads=1"])
    assert [r[0] for r in res["ablation"]] == ["full", "no_adversarial"]
    md = (tmp_path / "abl" / "ablation.md").read_text()
    assert "Restoration SSIM" in md and "no_adversarial" in md
    ssim_col = [float(r[-2]) for r in res["ablation"]]
    assert all(-1 <= v <= 1 for v in ssim_col)
    assert (tmp_path / "abl" / "runs" / "full" / "checkpoints").is_dir()
    assert (tmp_path / "abl" / "eval" / "grid.html").is_file()
    with pytest.raises(SystemExit):
        main(["--data", str(root)])  # --protocol is required
