"""pipelines/vst_styles.py: prior samples and two-style interpolation grids from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipelines.vst_styles import main
from train.checkpoint import save_model_checkpoint
from train.models import create_model


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "vst.pt"
    save_model_checkpoint(create_model("variational_tiny"), str(ckpt), "variational_tiny")
    paths = []
    for name, size in (("c1.png", (40, 30)), ("c2.png", (24, 36)), ("s1.png", (32, 32)), ("s2.png", (20, 28))):
        arr = (torch.rand(size[1], size[0], 3) * 255).byte().numpy()
        Image.fromarray(arr).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    return str(ckpt), paths


def test_sample_grid(tmp_path, files):
    ckpt, (c1, c2, _, _) = files
    out = str(tmp_path / "samples.png")
    result = main(["sample", "--checkpoint", ckpt, "--content", c1, c2, "--num", "3", "--cell", "32",
                   "--out", out])
    assert result == {"rows": 2, "columns": 4, "out": out}
    with Image.open(out) as img:  # 2 rows x (content + 3 samples) cells of 32 px, 4 px padding
        assert img.size == (4 * 36 + 4, 2 * 36 + 4)
    meta = json.loads(Path(out + ".json").read_text())
    assert len(meta["codes"]) == 3 and len(meta["codes"][0]) == 8
    # the same seed draws the same styles
    main(["sample", "--checkpoint", ckpt, "--content", c1, "--num", "3", "--out", str(tmp_path / "again.png")])
    assert json.loads((tmp_path / "again.png.json").read_text())["codes"] == meta["codes"]


def _one_line(capsys, part: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith("bbst vst-styles: error: ") and part in err and "Traceback" not in err, err


def test_interpolation_grid_ends_are_the_two_styles(tmp_path, files, capsys):
    ckpt, (c1, _, s1, s2) = files
    out = str(tmp_path / "interp.png")
    result = main(["interpolate", "--checkpoint", ckpt, "--content", c1, "--style", s1, s2, "--steps", "4",
                   "--out", out])
    assert result["columns"] == 6  # style A, 4 points, style B
    meta = json.loads(Path(out + ".json").read_text())
    codes = torch.tensor(meta["codes"])
    assert torch.allclose(codes[1] - codes[0], codes[3] - codes[2], atol=1e-5)  # evenly spaced on a line
    # t = 0 and t = 1 are the two styles' mean codes, as the model encodes those images
    from train.inference import load_image
    from train.models import load_model_from_checkpoint

    model = load_model_from_checkpoint(ckpt)
    with torch.no_grad():
        mean_a, mean_b = (model.encode_style_image(load_image(p))[0][0] for p in (s1, s2))
    torch.testing.assert_close(codes[0], mean_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(codes[-1], mean_b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mean_a, mean_b)
    assert main(["interpolate", "--checkpoint", ckpt, "--content", c1, "--style", s1, s2, "--steps", "1",
                 "--out", out]) == 2
    _one_line(capsys, "--steps 1: must be >= 2")


def test_refuses_another_model(tmp_path, files, capsys):
    _, (c1, *_) = files
    other = tmp_path / "meta.pt"
    save_model_checkpoint(create_model("metastyle_tiny"), str(other), "metastyle_tiny")
    assert main(["sample", "--checkpoint", str(other), "--content", c1, "--out", str(tmp_path / "x.png")]) == 2
    _one_line(capsys, "not a variational model")
    assert main(["sample", "--checkpoint", files[0], "--content", str(tmp_path / "nope.jpg"),
                 "--out", str(tmp_path / "x.png")]) == 2
    _one_line(capsys, "nope.jpg: no such image")
