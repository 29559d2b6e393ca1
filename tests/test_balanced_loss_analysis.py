"""pipelines/balanced_loss_analysis.py: classic-vs-supremum correlation and loss distributions, files and plots."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from core.synthetic import artwork_like, photo_like
from pipelines.balanced_loss_analysis import main
from train.style_loss_analysis import linear_fit, over_stylised, pearson, under_stylised


@pytest.fixture
def folders(tmp_path):
    content, style = tmp_path / "content", tmp_path / "style"
    content.mkdir()
    style.mkdir()
    for i in range(3):
        photo_like(48, 40, seed=i).save(content / f"c{i}.png")
        artwork_like(40, 48, seed=10 + i).save(style / f"s{i}.png")
    (style / "broken.png").write_bytes(b"junk")
    return content, style


def test_correlation_writes_table_summary_and_plot(tmp_path, folders):
    _, style = folders
    out = tmp_path / "corr"
    summary = main(["correlation", "--images", str(style), "--pairs", "12", "--size", "32", "--random-vgg",
                    "--out", str(out)])
    assert summary["pairs"] == 12 and set(summary["layers"]) == {"relu1_2", "relu2_2", "relu3_3", "relu4_3"}
    assert "meaningless" in summary["note"]
    with open(out / "pairs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    for r in rows:  # the supremum bounds the classic loss, pair by pair and layer by layer
        for n in summary["layers"]:
            assert float(r[f"{n}_classic"]) <= float(r[f"{n}_supremum"]) * (1 + 1e-6)
    for stats in summary["layers"].values():
        assert -1 <= stats["pearson"] <= 1
    assert (out / "correlation.png").stat().st_size > 1000
    assert json.loads((out / "correlation.json").read_text())["pairs"] == 12


def test_distributions_synthetic_and_labelled(tmp_path, folders, capsys, monkeypatch):
    content, style = folders
    out = tmp_path / "dist"
    summary = main(["distributions", "--content", str(content), "--style", str(style), "--size", "32",
                    "--random-vgg", "--out", str(out)])
    assert summary["samples"] == 2 * 9 and set(summary["balanced"]) == {"over", "under"}
    with open(out / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(0 <= float(r["balanced"]) <= 1 for r in rows)
    assert (out / "distributions.png").is_file()
    # labelled outputs with human scores: the Pearson correlation of each loss with the scores
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["style", "output", "label", "score"])
        for i in range(3):
            w.writerow([str(style / f"s{i}.png"), str(content / f"c{i}.png"), "under", 1])
            w.writerow([f"style/s{i}.png", f"style/s{(i + 1) % 3}.png", "good", -1])
    summary = main(["distributions", "--labels", str(labels), "--size", "32", "--random-vgg", "--out", str(out)])
    assert summary["samples"] == 6 and set(summary["pearson_with_score"]) == {"classic", "balanced"}
    monkeypatch.delenv("BBST_DEBUG", raising=False)
    assert main(["distributions", "--random-vgg", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bbst balanced-loss-analysis: error: distributions: give --labels") and "Traceback" not in err
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-cache"))
    monkeypatch.delenv("BBST_VGG16_WEIGHTS", raising=False)
    assert main(["correlation", "--images", str(folders[1]), "--out", str(out)]) == 2  # no VGG-16 weights here
    err = capsys.readouterr().err
    assert err.startswith("bbst balanced-loss-analysis: error: ") and "Traceback" not in err, err


def test_helpers():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert linear_fit([0, 1, 2], [1, 3, 5]) == pytest.approx((2.0, 1.0))
    c, s = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 24, 24) * 0.2
    u = under_stylised(c, s)
    assert u.shape == c.shape and abs(float(u.mean()) - float(s.mean())) < 0.05  # the style's colours
    o = over_stylised(c, s)
    s_resized = torch.nn.functional.interpolate(s, size=(16, 16), mode="bilinear", antialias=True)
    assert o.shape == c.shape and (o - s_resized).abs().mean() < 0.2 * (o - c).abs().mean()  # content barely left
