"""Seed 000's RAST tables (train/rast_ablation.py, pipelines/rast_ablation.py): each row's config differs from the
full objective in exactly the losses it names, the model then trains exactly the other terms, the restoration
metric follows the multi-restoration path, and a smoke run writes the table."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from core.config import load_config, to_dict
from train.config import TrainConfig
from train.models import create_model
from train.models.rast import BACKBONE_TERMS, LOSS_GROUPS, SEED_OBJECTIVE, RASTConfig
from train.rast_ablation import CONFIG_DIR, TABLES, restoration_quality, table_configs

# Table 1 / Table 2 row -> the seed's loss it removes
REMOVES = {"no_content": "content", "no_style": "style", "no_restoration": "restoration",
           "no_adversarial": "adversarial", "no_idempotency": "idempotency", "no_lpips": "lpips",
           "no_lowres_restoration": "lowres_restoration"}
TINY = ["model.name=rast_tiny", "model.kwargs.lpips_backbone=null"]


@pytest.fixture(autouse=True, scope="module")
def one_random_lpips():
    """Build the frozen random-init LPIPS network once for the module (torchvision's AlexNet init takes seconds)."""
    from train import metrics

    real, built = metrics.LPIPSMetric, {}

    def shared(*args, **kwargs):
        key = repr((args, sorted(kwargs.items())))
        if key not in built:
            built[key] = real(*args, **kwargs)
        return built[key]

    metrics.LPIPSMetric = shared
    yield
    metrics.LPIPSMetric = real


def _weights(stem: str, sets=()) -> dict[str, float]:
    cfg = load_config(TrainConfig, CONFIG_DIR / f"{stem}.yaml", sets=list(sets))
    return create_model(cfg.model.name, **cfg.model.kwargs).loss_weights() if sets else \
        RASTConfig(**cfg.model.kwargs).loss_weights()


@functools.cache
def _active(stem: str) -> frozenset[str]:
    """The terms a tiny model built from the row's config computes and logs in one generator step."""
    torch.manual_seed(0)
    cfg = load_config(TrainConfig, CONFIG_DIR / f"{stem}.yaml", sets=TINY)
    model = create_model(cfg.model.name, **cfg.model.kwargs)
    batch = {"content": torch.rand(2, 3, 32, 32), "style": torch.rand(2, 3, 32, 32)}
    return frozenset(model.generator_step(batch)[1])


def test_full_is_the_seed_objective_with_every_term_active():
    full = _weights("full")
    assert full == RASTConfig(**SEED_OBJECTIVE).loss_weights() == create_model("rast_enhanced", vgg_weights=None,
                                                                             lpips_backbone=None).loss_weights()
    every = {t for terms in LOSS_GROUPS.values() for t in terms} | set(BACKBONE_TERMS)
    assert set(full) == every and all(full[t] > 0 for t in every)
    assert _active("full") == every


@pytest.mark.parametrize("row", sorted(REMOVES))
def test_each_row_removes_exactly_the_loss_it_names(row):
    """The config's weights differ from full's in exactly the named group (all 0 there); the trained model then
    computes every term of full except those."""
    full, ablated = _weights("full"), _weights(row)
    named = set(LOSS_GROUPS[REMOVES[row]])
    assert {k for k in full if full[k] != ablated[k]} == named
    assert all(ablated[k] == 0 for k in named)
    assert _active(row) == _active("full") - named
    # and nothing else in the training run differs but the run folder
    cfg_full = to_dict(load_config(TrainConfig, CONFIG_DIR / "full.yaml"))
    cfg_row = to_dict(load_config(TrainConfig, CONFIG_DIR / f"{row}.yaml"))
    assert {**cfg_row, "model": cfg_full["model"], "logging": cfg_full["logging"]} == cfg_full


def test_table3_is_the_baseline_and_the_baseline_plus_lpips_without_idempotency():
    full, baseline, plus = _weights("full"), _weights("baseline"), _weights("baseline_lpips")
    enhancements = {"idempotency", "lowres_restoration", "lpips"}
    assert {k for k in full if full[k] != baseline[k]} == enhancements and not any(baseline[k] for k in enhancements)
    assert {k for k in baseline if baseline[k] != plus[k]} == {"lpips"} and plus["idempotency"] == 0
    simplified = load_config(TrainConfig, CONFIG_DIR / "simplified.yaml").model.kwargs
    assert simplified == {**load_config(TrainConfig, CONFIG_DIR / "full.yaml").model.kwargs, "simplified": True}


def test_every_table_names_existing_configs_and_every_config_is_in_a_table():
    used = {p for t in TABLES for p in table_configs(t)}
    assert all(p.is_file() for p in used)
    assert used == set(CONFIG_DIR.glob("*.yaml"))


def test_restoration_metric_scales_the_stylisation_then_restores_against_the_scaled_content():
    """A stub RAST whose stylise and restore do not commute with scaling: the metric must follow L_mr's order."""

    class Stub(torch.nn.Module):
        def stylize(self, c, s):
            return (c ** 2 + 0.5 * s.mean()).clamp(0, 1)

        def restore_content(self, x, c):
            return (x.sqrt() * 0.5 + 0.5 * c).clamp(0, 1)

    g = torch.Generator().manual_seed(0)
    c, s = torch.rand(1, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g)

    def down(x, r):
        return F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)

    got = restoration_quality(Stub(), c, s, (64, 32, 16))
    for r in (32, 16):
        c_r = down(c, r)
        expected = (Stub().restore_content(down(Stub().stylize(c, s), r), c_r) - c_r).pow(2).mean()
        assert got[r][1] == pytest.approx(float(10 * torch.log10(1 / expected)), rel=1e-5)
        other = (Stub().restore_content(Stub().stylize(c_r, down(s, r)), c_r) - c_r).pow(2).mean()
        assert abs(float(expected) - float(other)) > 1e-4  # the other order would give another number
    exact = (Stub().restore_content(Stub().stylize(c, s), c) - c).pow(2).mean()
    assert got[64][1] == pytest.approx(float(10 * torch.log10(1 / exact)), rel=1e-5)


def test_ablation_script_trains_rows_and_writes_the_table(tmp_path):
    from pipelines.rast_ablation import main
    from train.demo_shards import write_demo_shards
    from train.evaluation import write_tiny_protocol

    torch.set_num_threads(1)
    root = write_demo_shards(tmp_path / "shards", {"content": [4], "style": [4]}, size=(48, 48))
    proto = write_tiny_protocol(tmp_path / "proto")
    res = main(["--table", "2", "--data", str(root), "--protocol", str(proto), "--steps", "2",
                "--out", str(tmp_path / "abl"), "--random-metrics", "--no-timing", "--device", "cpu",
                *[x for s in TINY for x in ("--set", s)], "--set", "model.kwargs.lowres_sizes=[32,16]",
                "--set", "data.crop_size=32", "--set", "data.short_side_min=32", "--set", "data.short_side_max=48",
                "--set", "loader.num_workers=0", "--set", "threads=1"])
    assert [r[0] for r in res["ablation"]] == ["full", "no_lowres_restoration"]
    md = (tmp_path / "abl" / "ablation.md").read_text()
    assert "Table 2" in md and all(f"Restoration SSIM {r}" in md for r in (256, 128, 64))
    assert (tmp_path / "abl" / "runs" / "full" / "checkpoints").is_dir()
    assert (tmp_path / "abl" / "eval" / "grid.html").is_file()
    with pytest.raises(SystemExit):
        main(["--data", str(root)])  # --protocol is required
