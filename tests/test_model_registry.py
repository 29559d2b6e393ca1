"""The style-transfer registry's contract, checked on every registered ``*_tiny`` model: one naming scheme, a
config that rebuilds the model, a generator step whose loss a few optimiser steps lower on a fixed batch, and
inference at any size."""

from __future__ import annotations

import importlib

import pytest
import torch

from train.models import _MODEL_MODULES, create_model, list_models

TINY = [name for name in list_models() if name.endswith("_tiny")]
# every tiny model with its own style loss, and again with the balanced loss where the model has the switch
CASES = [(n, None) for n in TINY] + [(n, "balanced_gram") for n in TINY
                                     if "style_loss" in create_model(n).model_config()
                                     and create_model(n).model_config()["style_loss"] != "balanced_gram"]


def test_one_naming_scheme_and_a_tiny_variant_per_family():
    assert not [n for n in list_models() if n.startswith("test_")]
    families = {create_model(n).__class__.__module__ for n in TINY}
    assert families == {importlib.import_module(m).__name__ for m in _MODEL_MODULES}
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope")


@pytest.mark.parametrize(("name", "style_loss"), CASES, ids=[f"{n}-{s or 'own'}" for n, s in CASES])
def test_tiny_model_keeps_the_registry_contract(name, style_loss):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model(name, **({"style_loss": style_loss} if style_loss else {}))
    # model_config() rebuilds the same model
    rebuilt = create_model(name, **model.model_config())
    assert rebuilt.model_config() == model.model_config()
    rebuilt.load_state_dict(model.state_dict())
    # a few generator updates (Adam, discriminators held fixed) lower the loss on one fixed batch
    g = torch.Generator().manual_seed(0)
    batch = {key: torch.rand(4, 3, 32, 32, generator=g) for key in ("content", "style", "style2")}
    opt = torch.optim.Adam(model.generator_parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss, logs, images = model.generator_step(batch)
        assert torch.isfinite(loss) and all(torch.isfinite(torch.tensor(v)) for v in logs.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-3:]) < 0.9 * sum(losses[:3]), losses
    assert images["output"].shape[-2:] == (32, 32)
    if list(model.discriminator_parameters()):
        d_loss, _ = model.discriminator_step(batch)
        assert torch.isfinite(d_loss)
    # inference at a size no training crop had, output in [0, 1] at the content's size
    out = model.eval().stylize(torch.rand(1, 3, 37, 53), torch.rand(1, 3, 40, 32))
    assert out.shape == (1, 3, 37, 53) and 0 <= float(out.min()) and float(out.max()) <= 1


def test_every_model_has_a_typed_config_and_the_trainer_config_checks_its_kwargs(tmp_path):
    import dataclasses

    from core.config import ConfigError, load_config
    from train.config import TrainConfig
    from train.models import model_config_class

    for name in list_models():
        assert dataclasses.is_dataclass(model_config_class(name)), name
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  name: rast_tiny\n  kwargs:\n    w_lpips: 1\n    lowres_sizes: [32, 16]\n")
    cfg = load_config(TrainConfig, path)
    assert cfg.model.kwargs == {"w_lpips": 1.0, "lowres_sizes": (32, 16)}  # coerced to RASTConfig's field types
    path.write_text("model:\n  name: rast_tiny\n  kwargs:\n    w_lpipz: 1\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: unknown key model\.kwargs\.w_lpipz") as err:
        load_config(TrainConfig, path)
    assert err.value.hint == "did you mean model.kwargs.w_lpips?"
    with pytest.raises(ConfigError, match=r"--set model\.kwargs\.w_adv=strong: model\.kwargs\.w_adv: expected a number"):
        load_config(TrainConfig, None, sets=["model.name=rast_tiny", "model.kwargs.w_adv=strong"])
    with pytest.raises(ConfigError, match=r"model\.name: unknown model 'nope'"):
        load_config(TrainConfig, None, sets=["model.name=nope", "model.kwargs.w_adv=1"])
