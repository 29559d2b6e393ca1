"""The balanced-loss paper's four AST baselines: shapes, the paper's VGG-16 objective, beta calibration, learning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from train import losses as L
from train.models import create_model

TINY = ["adain_tiny", "sanet_tiny", "linear_transfer_tiny", "magenta_tiny"]
CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs" / "balanced_loss"


@pytest.mark.parametrize("name", TINY + ["linear_transfer_tiny:relu3_1"])
def test_stylize_keeps_the_content_size_and_range(name):
    torch.manual_seed(0)
    name, _, layer = name.partition(":")
    model = create_model(name, **({"layer": layer} if layer else {})).eval()
    out = model.stylize(torch.rand(2, 3, 37, 53), torch.rand(1, 3, 40, 32))
    assert out.shape == (2, 3, 37, 53)
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    # the output depends on the style image
    other = model.stylize(torch.rand(2, 3, 37, 53).fill_(0.5), torch.rand(1, 3, 40, 32))
    assert not torch.allclose(model.stylize(torch.rand(2, 3, 37, 53).fill_(0.5), torch.zeros(1, 3, 40, 32)), other)


def test_the_objective_is_the_papers_vgg16_content_and_style_terms():
    torch.manual_seed(0)
    model = create_model("adain_tiny", style_loss="balanced_gram", w_style=7.0)
    assert model.cfg.style_layers == ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
    assert model.cfg.content_layer == "relu3_3" and model.loss_vgg.arch == "vgg16"
    c, s = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    loss, logs, _ = model.generator_step({"content": c, "style": s})
    out = model.transfer(c, s)
    f = model.loss_vgg
    content = torch.mean((f(out, ("relu3_3",))["relu3_3"] - f(c, ("relu3_3",))["relu3_3"]) ** 2)
    style = L.balanced_gram_style(f(out, model.cfg.style_layers), f(s, model.cfg.style_layers))
    assert float(loss) == pytest.approx(float(content + 7.0 * style), rel=1e-5)
    assert logs["beta"] == 7.0


def test_beta_is_measured_once_so_the_terms_match_then_kept_in_the_checkpoint():
    torch.manual_seed(0)
    model = create_model("sanet_tiny")
    batch = {"content": torch.rand(2, 3, 32, 32), "style": torch.rand(2, 3, 32, 32)}
    loss, logs, _ = model.generator_step(batch)
    assert logs["beta"] * logs["style"] == pytest.approx(logs["content"], rel=1e-4)
    assert float(loss) == pytest.approx(2 * logs["content"], rel=1e-4)
    beta = logs["beta"]
    _, logs2, _ = model.generator_step({"content": torch.rand(2, 3, 32, 32), "style": torch.rand(2, 3, 32, 32)})
    assert logs2["beta"] == beta  # fixed after the first batch
    rebuilt = create_model("sanet_tiny", **model.model_config())
    rebuilt.load_state_dict(model.state_dict())
    assert float(rebuilt.beta) == beta


def test_magenta_norm_params_come_from_the_style_and_alpha_zero_is_the_contents_own_embedding():
    torch.manual_seed(0)
    model = create_model("magenta_tiny").eval()
    with torch.no_grad():  # give the untrained predictor a visible effect
        model.predictor.to_params.weight.normal_(std=0.5)
    c = torch.rand(1, 3, 32, 32)
    assert model.transformer.conditional and model.transformer.num_norm_params() == model.predictor.offset.numel()
    a, b = model.stylize(c, torch.rand(1, 3, 32, 32)), model.stylize(c, torch.rand(1, 3, 32, 32))
    assert not torch.allclose(a, b)
    assert torch.allclose(model.stylize(c, torch.rand(1, 3, 32, 32), alpha=0.0), model.stylize(c, c), atol=1e-6)


def test_linear_transfer_matrix_is_the_product_of_the_style_and_content_matrices():
    torch.manual_seed(0)
    model = create_model("linear_transfer_tiny")
    lt = model.linear
    fc, fs = torch.rand(1, lt.compress.in_channels, 4, 4), torch.rand(1, lt.compress.in_channels, 5, 5)
    fcc, fsc = fc - fc.mean((2, 3), keepdim=True), fs - fs.mean((2, 3), keepdim=True)
    t = lt.style_net(fsc) @ lt.content_net(fcc)
    expected = lt.unzip((t @ lt.compress(fcc).flatten(2)).view(1, -1, 4, 4)) + fs.mean((2, 3), keepdim=True)
    assert torch.allclose(lt(fc, fs), expected, atol=1e-6)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_each_config_names_a_registered_baseline_with_its_loss(path):
    from core.config import load_config
    from train.config import TrainConfig

    cfg = load_config(TrainConfig, str(path))
    raw = yaml.safe_load(path.read_text())
    assert raw["model"]["style_loss"] == ("balanced_gram" if path.stem.endswith("balanced") else "gram")
    tiny = create_model(cfg.model.name + "_tiny", style_loss=cfg.model.style_loss, **cfg.model.kwargs)
    assert tiny.cfg.style_loss == cfg.model.style_loss and tiny.cfg.content_layer == "relu3_3"
