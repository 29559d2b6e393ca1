"""pipelines/compare.py: every model on the same protocol pairs -> one table (MetaStyle adaptation column,
deception rate), one grid (PNG + HTML), through train/evaluation.py."""

from __future__ import annotations

import csv

import pytest
import torch
from PIL import Image

from core.synthetic import artwork_like, photo_like
from pipelines.compare import main
from train.checkpoint import save_model_checkpoint
from train.evaluation import write_tiny_protocol
from train.inference import ADAPTATION_HEADER
from train.models import create_model
from train.models.metastyle import MetaStyle

MODELS = (("NeAT", "neat_tiny"), ("NeAT balanced", "neat_balanced_tiny"), ("RAST", "rast_tiny"),
          ("Variational", "variational_tiny"), ("MetaStyle", "metastyle_tiny"))


@pytest.fixture
def setup(tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ckpts = {}
    for label, name in MODELS:
        ckpts[label] = tmp_path / f"{name}.pt"
        save_model_checkpoint(create_model(name), str(ckpts[label]), name)
    (tmp_path / "c").mkdir()
    (tmp_path / "s").mkdir()
    photo_like(40, 32, seed=1).save(tmp_path / "c" / "c1.png")
    photo_like(32, 40, seed=2).save(tmp_path / "c" / "c2.png")
    artwork_like(32, 32, seed=3).save(tmp_path / "s" / "s1.png")
    (tmp_path / "s" / "s2.jpg").write_bytes(b"broken")
    (tmp_path / "train").mkdir()  # MetaStyle's adaptation content: flat-colour "training" images
    for i, grey in enumerate((64, 192)):
        Image.new("RGB", (40, 36), (grey, grey, grey)).save(tmp_path / "train" / f"t{i}.png")
    return tmp_path, ckpts


def _args(tmp_path, ckpts, *extra):
    args = ["--content", str(tmp_path / "c"), "--style", str(tmp_path / "s"), "--out", str(tmp_path / "cmp"),
            "--random-metrics", "--sizes", "max:48", "--timing-sizes", "32x32", "48x32", "--timing-repeats", "1",
            "--timing-warmup", "0", "--adapt-steps", "3", "--adapt-crop", "24", "--adapt-batch", "2",
            "--grid-cell", "32", "--device", "cpu", "--set", "timing_warmup=0", "--adapt-content",
            str(tmp_path / "train")]
    for label, path in ckpts.items():
        args += ["--model", f"{label}={path}"]
    return args + list(extra)


def test_one_table_one_grid(setup, monkeypatch):
    tmp_path, ckpts = setup
    adaptations, seen = [], []
    adapt = MetaStyle.adapt

    def counting(self, style, content_batches, *a, **kw):
        adaptations.append(tuple(style.shape))

        def watched(step):
            seen.append(content_batches(step))
            return seen[-1]

        return adapt(self, style, watched, *a, **kw)

    monkeypatch.setattr(MetaStyle, "adapt", counting)
    result = main(_args(tmp_path, ckpts))
    out = tmp_path / "cmp"
    assert len(adaptations) == 1  # once for the one readable style, reused for both contents and for timing
    # every adaptation crop is one of the flat "training" images, never a protocol (test) content image
    assert len(seen) == 3
    for batch in seen:
        for crop in batch:
            assert float(crop.std()) < 1e-3 and min(abs(float(crop.mean()) - g / 255) for g in (64, 192)) < 2e-2
    table = {e["model"]: e for e in result["table"]}
    assert set(table) == set(ckpts)
    for e in table.values():
        assert e["pairs"] == 2  # the broken style's pairs are error rows, not scored
        assert all(e[k] == e[k] for k in ("lpips", "sifid", "chamfer", "ssim", "gram"))  # not NaN
    timing = {e["model"]: e for e in result["timing"]}
    assert set(timing) == set(ckpts)
    for name, e in timing.items():
        assert e["32x32"] > 0 and e["48x32"] > 0
        assert (e[ADAPTATION_HEADER] is not None) == (name == "MetaStyle")
    with open(out / "per_pair.csv") as f:
        rows = list(csv.DictReader(f))
    assert sum(r["status"] == "error" for r in rows) == 2 * len(ckpts)
    assert all("s2.jpg" in r["error"] for r in rows if r["status"] == "error")

    # one table: quality, speed and the adaptation column side by side, one row per model
    md = (out / "comparison.md").read_text()
    assert "RANDOM" in md and "Seconds per image" in md
    header = next(line for line in md.splitlines() if line.startswith("| Model"))
    for col in ("LPIPS", "SIFID", "Chamfer", "SSIM", "Gram", "32x32 (s/image)", "48x32 (s/image)", "adaptation"):
        assert col in header, col
    with open(out / "comparison.csv") as f:
        comparison = list(csv.reader(f))
    assert [r[0] for r in comparison[1:]] == [label for label, _ in MODELS]
    adapt_col = comparison[0].index(ADAPTATION_HEADER)
    assert [r[adapt_col] != "—" for r in comparison[1:]] == [label == "MetaStyle" for label, _ in MODELS]

    # one grid: 2 readable pairs x (content, style, 5 models) cells of 32 px, 4 px padding; the HTML holds the tables
    with Image.open(out / "grid.png") as img:
        assert img.size[0] == (2 + len(ckpts)) * 36 + 4
        assert 0 < img.size[1] - (2 * 36 + 4) <= 36  # the two rows under a strip of column labels
    page = (out / "grid.html").read_text()
    assert page.count("<img ") == 2 * (2 + len(ckpts)) and "MetaStyle" in page and "SIFID" in page
    for src in page.split('src="')[1:]:
        assert (out / src.split('"')[0]).is_file()


def test_protocol_pairs_and_deception_column(setup, tmp_path):
    _, ckpts = setup
    proto = write_tiny_protocol(tmp_path / "proto")
    model = _colour_model(tmp_path)
    (tmp_path / "artists.csv").write_text("style,artist\ns0.png,a\ns1.png,b\n")
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    args = ["--protocol", str(proto), "--model", f"Variational={ckpts['Variational']}", "--model",
            f"MetaStyle={ckpts['MetaStyle']}", "--random-metrics", "--no-timing", "--adapt-steps", "2",
            "--adapt-crop", "16", "--adapt-batch", "1", "--out", str(tmp_path / "cmp2"), "--device", "cpu",
            "--artist-model", str(model), "--artists", str(tmp_path / "artists.csv"), "--artist-names",
            str(tmp_path / "names.txt"), "--artist-input-size", "8", "--deception-mode", "classify",
            "--adapt-content", str(tmp_path / "train")]
    result = main(args)
    main_rows = [e for e in result["table"] if e["size"] == "max:64"]
    assert [e["model"] for e in main_rows] == ["Variational", "MetaStyle"]
    for e in main_rows:
        assert e["pairs"] == 4 and 0.0 <= e["deceived"] <= 1.0  # the protocol's 2 x 2 pairs
    with open(tmp_path / "cmp2" / "per_pair.csv") as f:
        assert all(r["deceived"] in ("0.0", "1.0") for r in csv.DictReader(f))
    md = (tmp_path / "cmp2" / "comparison.md").read_text()
    assert "deception" in md and "(48x48)" in md  # the protocol's second size is its own row
    timing = {e["model"]: e for e in result["timing"]}
    assert set(timing) == {"MetaStyle"} and timing["MetaStyle"][ADAPTATION_HEADER] > 0  # costs without timing


def _without_adapt_content(argv):
    i = argv.index("--adapt-content")
    return argv[:i] + argv[i + 2:]


def _colour_model(tmp_path):
    class Colour(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3))

    model = tmp_path / "artist.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.export.save(torch.export.export(Colour(), (torch.rand(2, 3, 8, 8),), dynamic_shapes=({0: batch},)),
                      str(model))
    return model


def test_nearest_deception_over_a_user_reference_set(setup, tmp_path):
    """Section 5.3: the nearest reference painting (L2 in the model's features) must be by the style's artist."""
    _, ckpts = setup
    proto = write_tiny_protocol(tmp_path / "proto")
    refs = tmp_path / "refs"
    for artist, colours in (("reds", [(200, 20, 20), (230, 40, 30)]), ("blues", [(20, 20, 200), (30, 40, 220)]),
                            ("few", [(20, 200, 20)])):
        (refs / artist).mkdir(parents=True)
        for i, c in enumerate(colours):
            Image.new("RGB", (16, 16), c).save(refs / artist / f"{artist}{i}.png")
    (tmp_path / "artists.csv").write_text("style,artist\ns0.png,reds\ns1.png,blues\n")
    base = ["--protocol", str(proto), "--model", f"Variational={ckpts['Variational']}", "--random-metrics",
            "--no-timing", "--device", "cpu", "--artist-model", str(_colour_model(tmp_path)), "--artist-input-size",
            "8", "--artists", str(tmp_path / "artists.csv"), "--out", str(tmp_path / "cmp3")]
    result = main(base + ["--deception-references", str(refs), "--deception-min-paintings", "2"])
    (row,) = [e for e in result["table"] if e["size"] == "max:64"]
    # the stylised images' mean colours decide: recompute the expected hits from the per-pair files
    with open(tmp_path / "cmp3" / "per_pair.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["size"] == "max:64"]
    assert row["deceived"] == pytest.approx(sum(float(r["deceived"]) for r in rows) / len(rows))
    # no reference set: nearest mode says so instead of falling back to the protocol's styles
    assert main(base) == 2
    # the 30-painting rule of the paper leaves no artist in this small set
    assert main(base + ["--deception-references", str(refs)]) == 2


def test_user_errors_are_one_line(setup, capsys, monkeypatch):
    tmp_path, ckpts = setup
    monkeypatch.delenv("BBST_DEBUG", raising=False)
    one = {"Variational": ckpts["Variational"]}
    cases = [
        (_args(tmp_path, one, "--artist-model", str(tmp_path / "none.pt2"), "--deception-mode", "classify"),
         "--artist-model needs --artists"),
        (_args(tmp_path, one, "--artist-model", str(tmp_path / "none.pt2")), "needs --deception-references"),
        (_without_adapt_content(_args(tmp_path, {"MetaStyle": ckpts["MetaStyle"]})), "give --adapt-content DIR"),
        (_args(tmp_path, {"MetaStyle": ckpts["MetaStyle"]}, "--adapt-content", str(tmp_path / "c")),
         "c1.png is one of the evaluation's test images"),
        (_args(tmp_path, one, "--artist-model", str(tmp_path / "none.pt2"), "--artists", str(tmp_path / "x.csv"),
               "--deception-mode", "classify"), "--artists"),
        (["--model", f"x={ckpts['NeAT']}", "--out", str(tmp_path / "o"), "--random-metrics"],
         "give --protocol FILE, --pairs CSV, or both --content and --style"),
        (["--content", str(tmp_path / "c"), "--style", str(tmp_path / "s"), "--out", str(tmp_path / "o")],
         "nothing to compare"),
        (_args(tmp_path, one, "--deception-mode", "nope"), None),
    ]
    for argv, message in cases:
        if message is None:
            with pytest.raises(SystemExit):  # argparse: invalid choice
                main(argv)
            continue
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("bbst compare: error: ") and message in err and "Traceback" not in err, err
