"""train/inference.py: image I/O (files and fsspec URLs), aspect-keeping resizes, and the Stylizer's controls for
any registered model (also through pipelines/stylize.py)."""

from __future__ import annotations

import fsspec
import pytest
import torch
from PIL import Image

from core.synthetic import artwork_like, photo_like
from train.inference import ControlError, Stylizer, load_image, resize_cover_crop, resize_fit_pad
from train.models import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ckpt(path, name):
    torch.manual_seed(0)
    model = create_model(name)
    torch.save({"model_name": name, "model_config": model.model_config(), "model": model.state_dict(), "step": 0},
               path)
    return str(path)


def test_load_image_from_a_file_and_an_fsspec_url(tmp_path):
    photo_like(40, 24, seed=1).save(tmp_path / "c.png")
    local = load_image(tmp_path / "c.png")
    with fsspec.open("memory://bbst-test/c.png", "wb") as f:
        f.write((tmp_path / "c.png").read_bytes())
    assert torch.equal(load_image("memory://bbst-test/c.png"), local) and local.shape == (1, 3, 24, 40)
    (tmp_path / "bad.png").write_bytes(b"no")
    with pytest.raises(ValueError, match="bad.png: cannot decode"):
        load_image(tmp_path / "bad.png")


def test_cover_crop_and_fit_pad_keep_the_aspect():
    img = torch.rand(1, 3, 30, 60)
    assert resize_cover_crop(img, 20, 20).shape[-2:] == (20, 20)
    assert torch.equal(resize_cover_crop(img, 30, 30), img[..., 15:45])  # no scaling needed: a pure centre crop
    padded = resize_fit_pad(img, 60, 60)
    assert padded.shape[-2:] == (60, 60) and torch.equal(padded[..., 15:45, :], img)


def test_stylizer_passes_only_the_controls_a_model_has(tmp_path):
    rast = _ckpt(tmp_path / "rast.pt", "rast_tiny")
    neat = _ckpt(tmp_path / "neat.pt", "neat_tiny")
    c, s = torch.rand(1, 3, 30, 44), torch.rand(1, 3, 32, 32)
    assert Stylizer(rast, "cpu", steps=2)(c, s).shape == c.shape
    assert Stylizer(neat, "cpu", blur=0.0, prior_weight=0.0)(c, s).shape == c.shape
    with pytest.raises(ControlError, match="no control blur .*supports: alpha, steps"):
        Stylizer(rast, "cpu", blur=0.0)
    with pytest.raises(ControlError, match="no control steps"):
        Stylizer(neat, "cpu", steps=2)
    # an in-memory model works the same way
    assert Stylizer(create_model("rast_tiny"), "cpu", alpha=0.5)(c, s).shape == c.shape


def test_stylize_script_runs_rast_checkpoints(tmp_path):
    from pipelines.stylize import main

    rast = _ckpt(tmp_path / "rast.pt", "rast_tiny")
    photo_like(50, 34, seed=1).save(tmp_path / "c.jpg")
    artwork_like(40, 60, seed=2).save(tmp_path / "s.png")
    rows = main(["--checkpoint", rast, "--content", str(tmp_path / "c.jpg"), "--style", str(tmp_path / "s.png"),
                 "--out", str(tmp_path / "o.png"), "--steps", "2", "--device", "cpu"])
    assert rows[0]["status"] == "ok"
    with Image.open(tmp_path / "o.png") as img:
        assert img.size == (50, 34)
