"""The balanced-loss paper's studies: Study III over random pairs, Studies I/II/IV/V from people's ratings."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from core.errors import BadInputError
from core.synthetic import artwork_like, photo_like
from pipelines.balanced_loss_analysis import main
from train.style_loss_analysis import read_labels, studies, supremum_study


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
    assert len(rows) == 12 and (out / "correlation.png").stat().st_size > 1000
    # the summary's statistics are those of the written pairs
    x = np.array([float(r["relu2_2_supremum"]) for r in rows])
    y = np.array([float(r["relu2_2_classic"]) for r in rows])
    stats = json.loads((out / "correlation.json").read_text())["layers"]["relu2_2"]
    assert stats["pearson"] == pytest.approx(float(np.corrcoef(x, y)[0, 1]))
    assert stats["slope"] == pytest.approx(float(np.polyfit(x, y, 1)[0]))


def test_supremum_study_recovers_a_known_line():
    x = np.linspace(1, 10, 20)
    stats = supremum_study({"l": {"supremum": list(x), "classic": list(0.3 * x + 0.1)}})["l"]
    assert stats["pearson"] == pytest.approx(1.0) and stats["slope"] == pytest.approx(0.3)
    assert stats["intercept"] == pytest.approx(0.1)


def _rows(layers, values):
    """Scored rows from (rater, rating, classic, balanced) with the same value at every layer."""
    rows = []
    for rater, rating, c, b in values:
        h = {"under": 1.0, "over": 1.0, "good": -1.0, "ok": 0.0}[rating]
        row = {"rater": rater, "rating": rating, "h": h}
        for n in (*layers, "aggregate"):
            row[f"classic/{n}"], row[f"balanced/{n}"] = c, b
        rows.append(row)
    return rows


def test_studies_report_the_papers_orderings_and_per_rater_correlations():
    layers = ("a", "b")
    # Study I/IV as the paper found them: classic under < over, balanced over < under; good ones in between
    rows = _rows(layers, [("r1", "under", 1.0, 0.9), ("r1", "over", 100.0, 0.1), ("r1", "good", 10.0, 0.5),
                          ("r2", "under", 2.0, 0.8), ("r2", "over", 50.0, 0.2), ("r2", "good", 5.0, 0.4)])
    out = studies(rows, layers)
    assert out["paper_ordering"] == {"classic_under_below_over": True, "balanced_over_below_under": True}
    assert out["distributions"]["classic/aggregate"]["over"]["median"] == pytest.approx(75.0)
    assert set(out["distributions_per_rater"]) == {"r1", "r2"}
    # the correlation with h of one rater, by hand: h = (1, 1, -1), balanced = (0.9, 0.1, 0.5)
    expected = np.corrcoef([1, 1, -1], [0.9, 0.1, 0.5])[0, 1]
    assert out["correlation"]["r1"]["balanced/a"] == pytest.approx(expected)
    avg = (out["correlation"]["r1"]["classic/aggregate"] + out["correlation"]["r2"]["classic/aggregate"]) / 2
    assert out["correlation"]["average"]["classic/aggregate"] == pytest.approx(avg)
    # the opposite data: the orderings are reported as not holding
    flipped = _rows(layers, [("r1", "under", 100.0, 0.1), ("r1", "over", 1.0, 0.9)])
    assert studies(flipped, layers)["paper_ordering"] == {"classic_under_below_over": False,
                                                           "balanced_over_below_under": False}


def test_studies_from_a_labels_file_and_no_labels_no_study(tmp_path, folders, capsys, monkeypatch):
    content, style = folders
    labels = tmp_path / "ratings.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "style", "rating", "rater"])
        for i in range(3):
            w.writerow([str(content / f"c{i}.png"), str(style / f"s{i}.png"), "under", "ann"])
            w.writerow([f"style/s{(i + 1) % 3}.png", f"style/s{i}.png", "over", "bob"])
            w.writerow([f"content/c{i}.png", f"style/s{i}.png", "good", "bob"])
        w.writerow(["content/missing.png", "style/s0.png", "good", "ann"])
    out = tmp_path / "studies"
    summary = main(["studies", "--labels", str(labels), "--size", "32", "--random-vgg", "--out", str(out)])
    assert summary["samples"] == 9 and summary["skipped"] == 1 and summary["raters"] == ["ann", "bob"]
    with open(out / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    # the aggregate is the sum over the four layers (Eq. 5)
    for r in rows:
        for kind in ("classic", "balanced"):
            layers = sum(float(r[f"{kind}/{n}"]) for n in ("relu1_2", "relu2_2", "relu3_3", "relu4_3"))
            assert float(r[f"{kind}/aggregate"]) == pytest.approx(layers, rel=1e-6)
    with open(out / "correlation.csv") as f:
        assert [r["rater"] for r in csv.DictReader(f)] == ["ann", "bob", "average", "all"]
    assert (out / "distributions.png").is_file() and (out / "studies.json").is_file()

    monkeypatch.delenv("BBST_DEBUG", raising=False)
    assert main(["studies", "--random-vgg", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bbst balanced-loss-analysis: error: studies: cannot run without --labels")
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exc:  # no synthetic stand-ins for the ratings
        main(["distributions", "--content", str(content), "--style", str(style), "--out", str(out)])
    assert exc.value.code == 2
    capsys.readouterr()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-cache"))
    monkeypatch.delenv("BBST_VGG16_WEIGHTS", raising=False)
    assert main(["correlation", "--images", str(style), "--out", str(out)]) == 2  # no VGG-16 weights here
    err = capsys.readouterr().err
    assert "bbst balanced-loss-analysis: error: " in err and "Traceback" not in err, err


def test_read_labels_names_the_file_and_line_of_a_bad_rating(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("image,style,rating,rater\na.png,s.png,good,x\nb.png,s.png,great,x\n")
    with pytest.raises(BadInputError, match=r"r.csv:3: rating 'great'"):
        read_labels(path)
    path.write_text("image,rating\na.png,good\n")
    with pytest.raises(BadInputError, match="missing column"):
        read_labels(path)
    path.write_text("image,style,rating,rater\nsub/a.png,/abs/s.png,OVER,x\n")
    (r,) = read_labels(path)
    assert r.image == tmp_path / "sub" / "a.png" and str(r.style) == "/abs/s.png" and r.rating == "over"


def test_layer_losses_match_the_loss_module():
    from train import losses as L
    from train.models.vgg import VGG16Encoder
    from train.style_loss_analysis import sample_losses

    torch.manual_seed(0)
    vgg = VGG16Encoder(None, width=1 / 16)
    p, s = torch.rand(1, 3, 32, 40), torch.rand(1, 3, 36, 28)
    layers = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
    row = sample_losses(vgg, p, s, layers)
    fp, fs = vgg(p, layers), vgg(s, layers)
    assert row["classic/aggregate"] == pytest.approx(float(L.gram_style(fp, fs)), rel=1e-5)
    assert row["balanced/aggregate"] == pytest.approx(float(L.balanced_gram_style(fp, fs)), rel=1e-5)
