"""RAST (train/models/rast.py): shapes and both directions, exact restoration by an identity transform, the
idempotency and low-resolution terms, LPIPS with a local backbone, the loss falling, and checkpoints rebuilding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from train.models import create_model, load_model_from_checkpoint

NO_GAN = {"w_adv": 0.0}
# every RAST term off: the seed's enhancement under test is then the only loss
ONLY_ENHANCEMENTS = {k: 0.0 for k in ("w_content_transitive", "w_style_transitive", "w_style_diff",
                                      "w_content_restoration", "w_style_restoration", "w_identity_pixel",
                                      "w_identity_feature", "w_adv")}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(b: int = 2, size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"content": torch.rand(b, 3, size, size, generator=g), "style": torch.rand(b, 3, size, size, generator=g)}


@pytest.mark.parametrize("kwargs", [{}, {"transform": "adain"}, {"simplified": True}])
def test_shapes_and_both_directions(kwargs):
    torch.manual_seed(0)
    model = create_model("rast_tiny", **kwargs).eval()
    c, s = torch.rand(1, 3, 37, 53), torch.rand(1, 3, 40, 48)
    out = model.stylize(c, s)
    assert out.shape == c.shape and 0 <= out.min() and out.max() <= 1
    assert model.restore_content(out, c).shape == c.shape  # structure of the stylisation, style of the content
    assert model.restore_style(s, out).shape == s.shape  # structure of the style image, style of the stylisation
    assert not torch.allclose(model.stylize(c, s, alpha=0.0), out)
    assert model.stylize(c, s, steps=2).shape == c.shape
    loss, logs, images = model.generator_step(_batch())
    assert torch.isfinite(loss)
    assert {"content_transitive", "style_transitive", "content_restoration", "style_restoration"} <= set(logs)
    assert {"output", "restored_content", "restored_style"} <= set(images)
    loss.backward()
    assert all(p.grad is not None for p in model.decoder.parameters())
    d_loss, d_logs = model.discriminator_step(_batch())
    assert set(d_logs) == {"adv_style", "adv_content"} and torch.isfinite(d_loss)


def test_every_reference_loss_is_computed_with_the_reference_weights():
    model = create_model("rast_tiny")
    _, logs, _ = model.generator_step(_batch())
    assert set(logs) == {"content_transitive", "style_transitive", "style_diff", "content_restoration",
                         "style_restoration", "identity_pixel", "identity_feature", "adv", "contrast_style",
                         "contrast_content"}
    w = model.loss_weights()
    assert (w["content_transitive"], w["style_transitive"], w["style_diff"], w["content_restoration"],
            w["style_restoration"], w["identity_pixel"], w["identity_feature"], w["contrast_style"],
            w["contrast_content"], w["adv"]) == (2, 2, 2, 1, 1, 50, 1, 1, 1, 5)
    both = create_model("rast_tiny", w_content=0.25, w_style=0.25, w_idempotency=1.0)
    assert {"content", "style", "idempotency"} <= set(both.generator_step(_batch())[1])


def _with_transform(model, fn):
    """Replace T(x, y) by fn(x_image, y_image) while keeping the loss code unchanged."""
    encode = model.encode
    model.encode = lambda img, layers=None: {**encode(img, layers), "image": img}
    model.transfer = lambda fx, fy: fn(fx["image"], fy["image"])
    return model


def test_identity_transform_restores_exactly():
    model = _with_transform(create_model("rast_tiny", **NO_GAN, w_idempotency=1.0), lambda x, y: x)
    _, logs, images = model.generator_step(_batch())
    for term in ("content_transitive", "style_transitive", "content_restoration", "style_restoration",
                 "identity_pixel", "identity_feature", "idempotency"):
        assert logs[term] == 0.0, term
    batch = _batch()
    assert torch.equal(images["restored_content"], batch["content"].clamp(0, 1))
    assert torch.equal(images["restored_style"], batch["style"])


def test_idempotency_loss_is_zero_for_an_idempotent_transform():
    model = create_model("rast_tiny")
    c, s = _batch()["content"], _batch()["style"]
    fs = model.encode(s)
    copy_style = _with_transform(create_model("rast_tiny"), lambda x, y: y)  # T(T(c, s), s) = s = T(c, s)
    fs_img = copy_style.encode(s)
    assert float(copy_style.idempotency_loss(s, fs_img)) == 0.0
    # a real (non-idempotent) network gives a positive value
    out = model.transfer(model.encode(c), fs)
    assert float(model.idempotency_loss(out, fs).detach()) > 0


def _down(x: torch.Tensor, r: int) -> torch.Tensor:
    return F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)


def test_multi_restoration_loss_stylises_then_scales_then_restores():
    """L_mr = sum_r mean((T(S_r(T(c, s)), S_r(c)) - S_r(c))^2) on a stub T that does not commute with scaling."""

    def stub(x, y):
        return x ** 2 + 0.5 * y

    model = _with_transform(create_model("rast_tiny", **NO_GAN, w_lowres=1.0, lowres_sizes=(32, 16)), stub)
    batch = _batch(b=1, size=32)
    c, s = batch["content"], batch["style"]
    expected = sum(((stub(_down(stub(c, s), r), _down(c, r)) - _down(c, r)) ** 2).mean() for r in (32, 16))
    scaled_first = sum(((stub(stub(_down(c, r), _down(s, r)), _down(c, r)) - _down(c, r)) ** 2).mean()
                       for r in (32, 16))
    assert abs(float(expected) - float(scaled_first)) > 1e-3  # the two orders are distinguishable here
    torch.testing.assert_close(model.lowres_restoration_loss(stub(c, s), c), expected)
    _, logs, _ = model.generator_step(batch)  # the training step feeds it out1 = T(c, s)
    assert logs["lowres_restoration"] == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="multiples of 16"):
        create_model("rast_tiny", lowres_sizes=(40,))


def test_multi_restoration_gradient_reaches_the_generator_through_the_stylisation():
    model = create_model("rast_tiny", **ONLY_ENHANCEMENTS, w_lowres=1.0, lowres_sizes=(32, 16))
    loss, logs, _ = model.generator_step(_batch(b=1, size=32))
    assert set(logs) == {"lowres_restoration"}
    loss.backward()
    assert model.decoder.net[0].weight.grad.abs().sum() > 0


def test_lpips_gradient_reaches_the_generator():
    torch.manual_seed(0)
    model = create_model("rast_tiny", **ONLY_ENHANCEMENTS, w_lpips=1.0)
    loss, logs, _ = model.generator_step(_batch(b=1, size=48))
    assert set(logs) == {"lpips"} and loss > 0
    loss.backward()
    assert model.decoder.net[0].weight.grad.abs().sum() > 0
    assert model.transform.sanet4.f.weight.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in model.lpips.parameters())


def test_lpips_loss_is_frozen_and_a_missing_backbone_is_a_clear_error(tmp_path, monkeypatch):
    model = create_model("rast_tiny", **NO_GAN, w_lpips=1.0)
    loss, logs, _ = model.generator_step(_batch(size=48))
    assert logs["lpips"] > 0
    loss.backward()
    assert all(not p.requires_grad for p in model.lpips.parameters())
    # missing weights: a clear error naming where it looked, never a download
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("BBST_LPIPS_BACKBONE", raising=False)
    with pytest.raises(FileNotFoundError, match="LPIPS alex backbone weights not found"):
        create_model("rast_tiny", w_lpips=1.0, lpips_backbone="auto")


def test_checkpoint_rebuilds_the_model_with_its_frozen_networks(tmp_path):
    model = create_model("rast_tiny", w_lpips=1.0, lpips_backbone=None)
    path = tmp_path / "ckpt.pt"
    torch.save({"model_name": "rast_tiny", "model_config": model.model_config(), "model": model.state_dict(),
                "step": 1}, path)
    rebuilt = load_model_from_checkpoint(str(path), attention_mode="full")
    assert rebuilt.cfg.attention_mode == "full"
    for k, v in rebuilt.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    c, s = torch.rand(1, 3, 32, 48), torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(rebuilt.stylize(c, s), model.eval().stylize(c, s))


def test_the_training_entry_point_trains_rast_with_logit_accumulation(tmp_path):
    """Same script as NeAT, only the config differs; contrastive terms over 2 micro-batches (4 pairs) per step."""
    import json

    import yaml

    from pipelines.train_model import main
    from train.demo_shards import write_demo_shards

    root = write_demo_shards(tmp_path / "shards", {"content": [4, 4], "style": [4, 4]}, size=(64, 64))
    cfg = yaml.safe_load((Path(__file__).resolve().parent.parent / "train/configs/rast_tiny.yaml").read_text())
    cfg["data"].update(root=str(root), crop_size=32, short_side_min=32, short_side_max=64)
    cfg["loader"].update(num_workers=0)
    cfg["model"]["kwargs"] = NO_GAN
    cfg["optim"].update(lr=2e-3, contrastive_batch=4)
    cfg["schedule"].update(max_steps=6, overfit_batches=True)
    cfg["logging"].update(dir=str(tmp_path / "run"), log_every=1, image_every=3)
    cfg["checkpoint"].update(every=6)
    cfg["threads"] = 1
    path = tmp_path / "rast.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = main(["--config", str(path)])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 6 and len(records[0]["content_keys"][0]) == 4  # 2 micro-batches of 2 pairs
    assert "g/contrast_style" in records[0] and "g/content_restoration" in records[0]
    restoration = [r["g/content_transitive"] + r["g/identity_pixel"] * 50 for r in records]
    assert restoration[-1] < restoration[0], restoration
    model = load_model_from_checkpoint(result["checkpoint"])
    assert type(model).__name__ == "RAST"
    with pytest.raises(ValueError, match="multiple of"):
        from core.config import load_config
        from train.config import TrainConfig
        from train.trainer import micro_batches_per_step

        bad = load_config(TrainConfig, str(path), sets=["optim.contrastive_batch=5"])
        micro_batches_per_step(bad, 1)


@pytest.mark.parametrize("name", ["balanced_gram", "gram"])
def test_style_loss_switch_uses_the_chosen_loss_in_every_style_term(name):
    """``style_loss`` (``model.style_loss`` of the trainer) replaces L_s in every style term, brought to the moment
    loss's scale by ``style_loss_scale``; an unknown name is refused when the config is built."""
    from train import losses as L
    from train.models.neat import STYLE_WEIGHTS

    torch.manual_seed(0)
    base = create_model("rast_tiny", **NO_GAN)
    torch.manual_seed(0)
    model = create_model("rast_tiny", style_loss=name, **NO_GAN)
    assert model.cfg.style_loss_scale == STYLE_WEIGHTS[name] / STYLE_WEIGHTS["mean_std"]
    batch = _batch()
    _, logs, _ = model.generator_step(batch)
    _, base_logs, _ = base.generator_step(batch)
    for k in ("content_transitive", "content_restoration", "identity_pixel"):  # content terms are unchanged
        assert logs[k] == pytest.approx(base_logs[k], rel=1e-5)
    for k in ("style_transitive", "style_restoration", "style_diff"):
        assert logs[k] != pytest.approx(base_logs[k], rel=1e-3)

    # the style_transitive term recomputed from its definition with the chosen loss
    fixed = create_model("rast_tiny", style_loss=name, style_loss_scale=1.0, **NO_GAN)
    fixed.load_state_dict(model.state_dict())
    captured = {}
    original = L.STYLE_LOSSES[name]

    def spy(a, b, layers=None):
        value = original(a, b, layers)
        captured.setdefault("values", []).append(float(value.detach()))
        return value

    L.STYLE_LOSSES[name] = spy
    try:
        _, fixed_logs, _ = fixed.generator_step(batch)
    finally:
        L.STYLE_LOSSES[name] = original
    assert captured["values"], "the chosen style loss was not called"
    if name == "balanced_gram":
        # the balanced loss lies in [0, 1] per layer, summed over the style layers
        assert all(0.0 <= v <= len(model.cfg.style_layers) for v in captured["values"])
    assert logs["style_transitive"] == pytest.approx(model.cfg.style_loss_scale * fixed_logs["style_transitive"],
                                                     rel=1e-4)
    with pytest.raises(ValueError, match="style_loss 'nope'"):
        create_model("rast_tiny", style_loss="nope")
