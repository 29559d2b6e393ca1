"""pipelines/compare_models.py: every model on the same pairs -> one table (MetaStyle adaptation column), one grid."""

from __future__ import annotations

import csv

import pytest
import torch
from PIL import Image

from curate.errors import BbstError
from curate.synthetic import artwork_like, photo_like
from pipelines.compare_models import main
from pipelines.metastyle import save_model
from train.models import create_model


@pytest.fixture
def setup(tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ckpts = {}
    for label, name in (("NeAT", "neat_tiny"), ("NeAT balanced", "neat_balanced_tiny"),
                        ("Variational", "variational_tiny"), ("MetaStyle", "metastyle_tiny")):
        ckpts[label] = tmp_path / f"{name}.pt"
        save_model(create_model(name), ckpts[label], name)
    (tmp_path / "c").mkdir()
    (tmp_path / "s").mkdir()
    photo_like(40, 32, seed=1).save(tmp_path / "c" / "c1.png")
    photo_like(32, 40, seed=2).save(tmp_path / "c" / "c2.png")
    artwork_like(32, 32, seed=3).save(tmp_path / "s" / "s1.png")
    (tmp_path / "s" / "s2.jpg").write_bytes(b"broken")
    return tmp_path, ckpts


def _args(tmp_path, ckpts, *extra):
    args = ["--content", str(tmp_path / "c"), "--style", str(tmp_path / "s"), "--out", str(tmp_path / "cmp"),
            "--random-metrics", "--timing-sizes", "32x32", "48x32", "--timing-repeats", "1", "--adapt-steps", "3",
            "--adapt-crop", "24", "--adapt-batch", "2", "--style-size", "32", "--cell", "32", "--device", "cpu"]
    for label, path in ckpts.items():
        args += ["--model", f"{label}={path}"]
    return args + list(extra)


def test_one_table_one_grid(setup):
    tmp_path, ckpts = setup
    result = main(_args(tmp_path, ckpts))
    out = tmp_path / "cmp"
    table = {e["model"]: e for e in result["table"]}
    assert set(table) == set(ckpts)
    for name, e in table.items():
        assert e["pairs"] == 2  # the broken style's pairs are error rows, not scored
        assert e["32x32"] > 0 and e["48x32"] > 0
        assert (e["adapt_s"] is not None) == (name == "MetaStyle")
        assert e["adapted_styles"] == (1 if name == "MetaStyle" else 0)  # once per style, reused for both contents
    with open(out / "per_pair.csv") as f:
        rows = list(csv.DictReader(f))
    assert sum(r["status"] == "error" for r in rows) == 2 * len(ckpts)
    md = (out / "comparison.md").read_text()
    assert "adaptation (s/style)" in md and "RANDOM" in md and md.count("\n| ") >= len(ckpts)
    with Image.open(out / "grid.png") as img:  # 2 pair rows x (content, style, 4 models) cells of 32 px
        assert img.size == (6 * 36 + 4, 2 * 36 + 4)
    page = (out / "grid.html").read_text()
    assert page.count("<img ") == 2 * 6 and "MetaStyle" in page
    for src in page.split("src='")[1:]:
        assert (out / src.split("'")[0]).is_file()


def test_deception_column_and_errors(setup):
    tmp_path, ckpts = setup

    class Colour(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3))

    model = tmp_path / "artist.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.export.save(torch.export.export(Colour(), (torch.rand(2, 3, 8, 8),), dynamic_shapes=({0: batch},)),
                      str(model))
    (tmp_path / "artists.csv").write_text("style,artist\ns1.png,a\ns2.jpg,b\n")
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    one = {"Variational": ckpts["Variational"]}
    result = main(_args(tmp_path, one, "--artist-model", str(model), "--artists", str(tmp_path / "artists.csv"),
                        "--artist-names", str(tmp_path / "names.txt"), "--artist-input-size", "8"))
    entry = result["table"][0]
    assert entry["n"] == 2 and 0.0 <= entry["deception_rate"] <= 1.0
    assert "deception" in (tmp_path / "cmp" / "comparison.md").read_text()
    with pytest.raises(BbstError, match="--artists"):
        main(_args(tmp_path, one, "--artist-model", str(model)))
    with pytest.raises(BbstError, match="pairs"):
        main(["--model", f"x={ckpts['NeAT']}", "--out", str(tmp_path / "o"), "--random-metrics"])
