"""pipelines/metastyle.py: adapt (saved, timed, loss falls), feed-forward stylise, interpolate and save mixtures."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from pipelines.metastyle import main
from train.checkpoint import load_checkpoint, save_model_checkpoint
from train.models import create_model, load_model_from_checkpoint


@pytest.fixture
def setup(tmp_path):
    torch.manual_seed(0)
    meta = tmp_path / "meta.pt"
    save_model_checkpoint(create_model("metastyle_tiny"), str(meta), "metastyle_tiny")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy()).save(photos / f"p{i}.png")
    (photos / "broken.jpg").write_bytes(b"not an image")
    styles = []
    for i, fn in enumerate((lambda t: t ** 4, lambda t: 1 - t ** 4)):
        path = tmp_path / f"style{i}.png"
        Image.fromarray((fn(torch.rand(32, 32, 3)) * 255).byte().numpy()).save(path)
        styles.append(str(path))
    return meta, photos, styles


def _one_line(capsys, part: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith("bbst metastyle: error: ") and part in err and "Traceback" not in err, err


def test_adapt_stylize_interpolate(tmp_path, setup, capsys):
    meta, photos, (s0, s1) = setup
    adapted = []
    for i, style in enumerate((s0, s1)):
        out = tmp_path / f"adapted{i}.pt"
        rec = main(["adapt", "--checkpoint", str(meta), "--style", style, "--content", str(photos), "--steps", "12",
                    "--crop", "32", "--batch", "2", "--out", str(out)])
        assert rec["steps"] == 12 and rec["seconds"] > 0 and rec["final_loss"] < rec["first_loss"]
        ck = load_checkpoint(str(out))
        assert ck["adaptation"]["steps"] == 12 and ck["model_config"]["adapted_style"] == f"style{i}"
        adapted.append(str(out))
    photo = str(photos / "p0.png")
    res = main(["stylize", "--checkpoint", adapted[0], "--content", photo, "--out", str(tmp_path / "o.png")])
    with Image.open(res["written"][0]) as img:
        assert img.size == (48, 40)
    res = main(["interpolate", "--checkpoint", *adapted, "--content", photo, "--steps", "3",
                "--out", str(tmp_path / "interp.png"), "--save", str(tmp_path / "mix.pt"),
                "--save-weights", "0.25", "0.75"])
    assert res["weights"] == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]] and (tmp_path / "interp.png").is_file()
    # three models: the grid walks a -> b -> a2, every checkpoint takes part
    res3 = main(["interpolate", "--checkpoint", *adapted, adapted[0], "--content", photo, "--steps", "3",
                 "--out", str(tmp_path / "interp3.png")])
    assert res3["weights"] == [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]]
    with Image.open(tmp_path / "interp3.png") as img:
        assert img.size[0] > Image.open(tmp_path / "interp.png").size[0]
    mix = load_model_from_checkpoint(res["saved"])
    a, b = (load_model_from_checkpoint(p) for p in adapted)
    for pm, pa, pb in zip(mix.transformer.parameters(), a.transformer.parameters(), b.transformer.parameters()):
        assert torch.allclose(pm, 0.25 * pa + 0.75 * pb, atol=1e-6)
    assert main(["interpolate", "--checkpoint", *adapted, "--content", photo, "--out", str(tmp_path / "i2.png"),
                 "--save", str(tmp_path / "bad.pt"), "--save-weights", "0.9", "0.9"]) == 2
    _one_line(capsys, "--save-weights [0.9, 0.9]")


def test_adapt_refuses_non_metastyle_and_empty_content(tmp_path, setup, capsys):
    meta, photos, (s0, _) = setup
    vst = tmp_path / "vst.pt"
    save_model_checkpoint(create_model("variational_tiny"), str(vst), "variational_tiny")
    assert main(["adapt", "--checkpoint", str(vst), "--style", s0, "--content", str(photos), "--out", "x.pt"]) == 2
    _one_line(capsys, "not a MetaStyle model")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "bad.png").write_bytes(b"junk")
    assert main(["adapt", "--checkpoint", str(meta), "--style", s0, "--content", str(empty), "--out", "x.pt"]) == 2
    _one_line(capsys, "no readable content image")
    assert main(["adapt", "--checkpoint", str(tmp_path / "missing.pt"), "--style", s0, "--content", str(photos),
                 "--out", "x.pt"]) == 2
    _one_line(capsys, "missing.pt")
