"""pipelines/stylize.py: checkpoint -> image files at their own (non-square) size, folders, bad inputs as rows."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from core.synthetic import artwork_like, photo_like
from pipelines.stylize import main
from train.checkpoint import load_checkpoint
from train.models import create_model, load_model_from_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("neat_tiny")
    torch.nn.init.normal_(model.decoder.net[-1].weight, std=0.05)  # a non-trivial "trained" decoder
    path = tmp_path / "ckpt.pt"
    torch.save({"model_name": "neat_tiny", "model_config": model.model_config(), "model": model.state_dict(),
                "step": 1}, path)
    return path


def test_checkpoint_rebuilds_the_same_model(checkpoint):
    ref = load_checkpoint(str(checkpoint))
    model = load_model_from_checkpoint(str(checkpoint), attention_mode="full")
    assert model.cfg.attention_mode == "full"
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref["model"][k])


def test_single_pair_non_square(tmp_path, checkpoint):
    photo_like(120, 72, seed=1).save(tmp_path / "c.jpg")
    artwork_like(64, 80, seed=2).save(tmp_path / "s.png")
    out = tmp_path / "out" / "c_styled.png"
    rows = main(["--checkpoint", str(checkpoint), "--content", str(tmp_path / "c.jpg"), "--style",
                 str(tmp_path / "s.png"), "--out", str(out), "--alpha", "1.25", "--blur", "0.5", "--device", "cpu"])
    assert rows[0]["status"] == "ok"
    with Image.open(out) as img:
        assert img.size == (120, 72)
    # alpha changes the picture
    out0 = tmp_path / "a0.png"
    main(["--checkpoint", str(checkpoint), "--content", str(tmp_path / "c.jpg"), "--style", str(tmp_path / "s.png"),
          "--out", str(out0), "--alpha", "0", "--set", "max_side=100"])
    with Image.open(out0) as img0, Image.open(out) as img1:
        assert img0.size == (100, 60)  # max_side caps the long side, aspect kept
        assert not np.array_equal(np.asarray(img0.resize(img1.size)), np.asarray(img1))


def _folders(tmp_path, styles: int):
    """A content folder with one photo and one broken file, and a style folder with ``styles`` artworks."""
    cdir, sdir = tmp_path / "content", tmp_path / "style"
    cdir.mkdir()
    sdir.mkdir()
    photo_like(40, 56, seed=3).save(cdir / "a.jpg")
    (cdir / "broken.jpg").write_bytes(b"not a jpeg")
    artwork_like(48, 48, seed=4).save(sdir / "x.png")
    if styles > 1:
        artwork_like(32, 64, seed=5).save(sdir / "y.jpg")
    return cdir, sdir


def test_folders_record_bad_images_as_rows(tmp_path, checkpoint):
    cdir, sdir = _folders(tmp_path, styles=2)
    rows = main(["--checkpoint", str(checkpoint), "--content", str(cdir), "--style", str(sdir), "--out",
                 str(tmp_path / "out")])
    assert len(rows) == 4
    ok = [r for r in rows if r["status"] == "ok"]
    bad = [r for r in rows if r["status"] == "error"]
    assert len(ok) == 2 and len(bad) == 2 and all("broken.jpg" in r["error"] for r in bad)
    assert (tmp_path / "out" / "a_stylized_y.png").exists()
    with open(tmp_path / "out" / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 4


def test_folder_mode_reports_failures_and_fails_when_every_pair_fails(tmp_path, checkpoint, capsys):
    cdir, sdir = _folders(tmp_path, styles=1)
    rows = main(["--checkpoint", str(checkpoint), "--content", str(cdir), "--style", str(sdir), "--out",
                 str(tmp_path / "some")])
    assert [r["status"] for r in rows] == ["ok", "error"]
    err = capsys.readouterr().err
    assert f"bbst stylize: 1 of 2 pairs stylised into {tmp_path / 'some'}; 1 failed" in err, err
    # the fixture's checkpoint (random tiny VGG, step 1) is named as one that cannot stylise, after the outputs
    assert err.rstrip().splitlines()[-1].startswith(f"bbst stylize: note: {checkpoint} cannot stylise: its VGG "
                                                    "network is random-init (vgg_weights=None, vgg_width=0.0625)")
    assert "1 training steps are too few" in err
    (cdir / "a.jpg").unlink()
    assert main(["--checkpoint", str(checkpoint), "--content", str(cdir), "--style", str(sdir), "--out",
                 str(tmp_path / "none")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-2] == "bbst stylize: error: every one of the 1 content x style pairs failed; nothing was stylised"
    assert lines[-1] == f"  hint: {tmp_path / 'none' / 'results.csv'} lists each pair's error"
    with open(tmp_path / "none" / "results.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["error"]


def test_a_classifier_and_a_style_checkpoint_are_named_when_swapped(tmp_path, checkpoint, capsys):
    from classifier.checkpoint import CheckpointFormatError, read_checkpoint_config

    clf = tmp_path / "clf"
    clf.mkdir()
    (clf / "config.json").write_text(json.dumps({"format": "bbst-classifier", "format_version": 1}))
    (clf / "model.safetensors").write_bytes(b"")
    photo_like(32, 32).save(tmp_path / "c.png")
    pair = ["--content", str(tmp_path / "c.png"), "--style", str(tmp_path / "c.png"), "--out", str(tmp_path / "o.png")]
    assert main(["--checkpoint", str(clf), *pair]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bbst stylize: error: {clf}: a stylistic classifier checkpoint, not a style-transfer "
                          "checkpoint\n  hint: pass it to --classifier"), err
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt-00000010.pt").write_bytes(checkpoint.read_bytes())
    assert main(["--checkpoint", str(run), *pair]) == 2
    assert f"{run}: a training run folder, not a checkpoint file\n  hint: its newest is {run}/ckpt-00000010.pt" \
        in capsys.readouterr().err
    with pytest.raises(CheckpointFormatError, match="a PyTorch checkpoint file .a style-transfer checkpoint") as exc:
        read_checkpoint_config(checkpoint)
    assert "bbst stylize --checkpoint" in exc.value.hint


def test_clear_errors(tmp_path, checkpoint, capsys):
    def one_line_error(argv: list[str], match: str) -> None:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("bbst stylize: error: ") and match in err and "Traceback" not in err, err

    one_line_error(["--checkpoint", str(checkpoint), "--content", str(tmp_path / "missing.jpg"), "--style",
                    str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "o.png")], "missing.jpg")
    (tmp_path / "bad.png").write_bytes(b"xx")
    photo_like(32, 32).save(tmp_path / "c.png")
    one_line_error(["--checkpoint", str(checkpoint), "--content", str(tmp_path / "c.png"), "--style",
                    str(tmp_path / "bad.png"), "--out", str(tmp_path / "o.png")], "bad.png: cannot decode")
    one_line_error(["--checkpoint", str(tmp_path / "nope.pt"), "--content", str(tmp_path / "c.png"), "--style",
                    str(tmp_path / "c.png"), "--out", str(tmp_path / "o.png")], "nope.pt: checkpoint not found")
    one_line_error(["--content", str(tmp_path / "c.png")], "--checkpoint is required")
    # --debug keeps the exception and its traceback
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        main(["--checkpoint", str(tmp_path / "nope.pt"), "--content", str(tmp_path / "c.png"), "--style",
              str(tmp_path / "c.png"), "--out", str(tmp_path / "o.png"), "--debug"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_stylize_matches_cpu(checkpoint):
    # on GPU the bilateral filter is the torch loop, on CPU OpenCV: the two paths must agree
    cpu = load_model_from_checkpoint(str(checkpoint))
    gpu = load_model_from_checkpoint(str(checkpoint), attention_mode="sdpa").cuda()
    c, s = torch.rand(1, 3, 72, 120), torch.rand(1, 3, 64, 64)
    ref = cpu.stylize(c, s, alpha=1.2)
    out = gpu.stylize(c.cuda(), s.cuda(), alpha=1.2).cpu()
    assert torch.allclose(out, ref, atol=2e-3)


def test_cannot_stylise_names_a_random_loss_network_and_too_few_steps():
    from train.stylising import MIN_STYLISING_STEPS, cannot_stylise

    real = {"vgg_weights": "auto", "vgg_width": 1.0, "loss_vgg_weights": "auto", "loss_vgg_width": 1.0}
    assert cannot_stylise(real, MIN_STYLISING_STEPS) is None and cannot_stylise({}, None) is None
    assert cannot_stylise({**real, "loss_vgg_weights": None}, 5000).startswith(
        "its VGG network is random-init (loss_vgg_weights=None)")
    assert cannot_stylise(real, 2) == f"2 training steps are too few (a visible style takes at least {MIN_STYLISING_STEPS})"
