"""Tests for train/reproduce.py and `bbst reproduce`: experiments as data, the end-to-end chain, the Gram check."""

from __future__ import annotations

import csv
import math

import pytest

from pipelines.reproduce import main
from train.reproduce import (
    EXPERIMENTS_DIR,
    Experiment,
    ModelRun,
    gram_backbone,
    gram_change,
    list_experiments,
    load_experiment,
    same_backbone,
    training_config,
)


def test_two_families_train_evaluate_and_their_gram_distance_drops(tmp_path):
    out = tmp_path / "out"
    result = main(["--tiny", "--only", "NeAT", "--only", "AdaIN", "--steps", "12", "--out", str(out)])
    with open(out / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], int(r["step"])) for r in rows] == [("NeAT", 0), ("NeAT", 12), ("AdaIN", 0), ("AdaIN", 12)]
    assert {"model", "step", "gram", "lpips", "sifid", "chamfer", "ssim", "backbone"} <= set(rows[0])
    gram = {(r["model"], int(r["step"])): float(r["gram"]) for r in rows}
    for model in ("NeAT", "AdaIN"):
        assert math.isfinite(gram[(model, 0)]) and gram[(model, 12)] < gram[(model, 0)], gram
    assert result["not_improved"] == []
    assert rows[0]["backbone"] == "training's"  # NeAT tiny's loss VGG is the seeded metric VGG
    md = (out / "comparison.md").read_text()
    assert "| NeAT | 12 |" in md and "| AdaIN | 0 |" in md and "Gram ↓" in md and "RANDOM" in md
    page = (out / "grid.html").read_text()
    assert "Comparison: tiny" in page and "<img" in page and "NeAT @ 12" in page
    # every kept checkpoint is a trainer checkpoint a user can resume or stylise with
    assert sorted(p.name for p in (out / "runs" / "NeAT" / "checkpoints").iterdir()) == [
        "ckpt-00000000.pt", "ckpt-00000012.pt"]
    # a rerun into the same folder evaluates the trained checkpoints again, without training, to the same numbers
    stamp = (out / "runs" / "NeAT" / "checkpoints" / "ckpt-00000012.pt").stat().st_mtime_ns
    again = main(["--tiny", "--only", "NeAT", "--only", "AdaIN", "--steps", "12", "--out", str(out)])
    assert (out / "runs" / "NeAT" / "checkpoints" / "ckpt-00000012.pt").stat().st_mtime_ns == stamp
    assert [r["gram"] for r in again["rows"]] == pytest.approx([r["gram"] for r in result["rows"]])


def test_gram_change_flags_a_model_that_did_not_improve_and_keeps_its_rows():
    rows = [{"model": "a", "step": 0, "gram": 5.0}, {"model": "a", "step": 10, "gram": 2.0},
            {"model": "b", "step": 0, "gram": 1.0}, {"model": "b", "step": 5, "gram": 0.5},
            {"model": "b", "step": 10, "gram": 1.5}, {"model": "c", "step": 0, "gram": 1.0}]
    change = gram_change(rows)
    assert change["a"]["dropped"] and change["a"]["last"] == 2.0
    assert not change["b"]["dropped"] and change["b"]["last_step"] == 10  # judged at the last step, not the best
    assert not change["c"]["dropped"] and change["c"]["last_step"] == 0  # never trained: nothing to judge


def test_the_metric_gram_backbone_is_the_tiny_models_loss_network():
    import torch

    from train.models import create_model

    vgg = gram_backbone(0)
    torch.manual_seed(0)  # what the trainer does before building the model (seed 0)
    assert same_backbone(create_model("neat_tiny"), vgg)
    torch.manual_seed(1)
    assert not same_backbone(create_model("neat_tiny"), vgg)


@pytest.mark.parametrize("name", list_experiments())
def test_every_packaged_experiment_builds_each_models_training_config(name, tmp_path):
    from train.models import list_models

    exp = load_experiment(name)
    assert exp.models and exp.name == name
    for run in exp.models:
        if run.reuse:
            continue
        cfg = training_config(exp, run, tmp_path, "data-root", tmp_path)
        assert cfg.model.name in list_models()
        assert cfg.schedule.max_steps == (run.steps or exp.steps) and cfg.checkpoint.at_start and cfg.checkpoint.keep == 0


def test_the_tiny_experiment_covers_every_registered_family():
    from train.models import list_models

    exp = load_experiment("tiny")
    names = {training_config(exp, run, EXPERIMENTS_DIR, "d", EXPERIMENTS_DIR).model.name for run in exp.models}
    tiny = {m for m in list_models() if m.endswith("_tiny")}
    assert tiny <= names, f"tiny families missing from train/experiments/tiny.yaml: {sorted(tiny - names)}"


def test_an_experiment_must_name_its_models_once_and_reuse_only_earlier_ones():
    from core.config import ConfigError

    with pytest.raises(ConfigError, match="repeat"):
        Experiment(models=[ModelRun("a", model="neat_tiny"), ModelRun("a", model="rast_tiny")])
    with pytest.raises(ConfigError, match="reuse"):
        Experiment(models=[ModelRun("b", reuse="a"), ModelRun("a", model="neat_tiny")])


@pytest.mark.parametrize("argv, message", [
    (["--experiment", "nope"], "--experiment nope: not found (no such file, and no packaged experiment"),
    (["--tiny", "--only", "Nope"], "--only 'Nope'"),
    (["--experiment", "neat_table1"], "give --data DIR"),
    ([], "name an experiment"),
])
def test_bad_input_is_one_line_and_exit_code_2(argv, message, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bbst reproduce: error: ") and message in err
