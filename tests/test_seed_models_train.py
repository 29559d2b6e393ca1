"""Every seed model trains under the one trainer entry point with only a config change, and resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from pipelines.train_model import main
from train.checkpoint import load_checkpoint
from train.demo_shards import write_demo_shards
from train.models import load_model_from_checkpoint

# (model name, model section of the config): the only thing that differs between the runs
MODELS = {
    "variational": {"name": "variational_tiny"},
    "metastyle": {"name": "metastyle_tiny", "kwargs": {"inner_steps": 1}},
    "metastyle_2nd": {"name": "metastyle_tiny", "kwargs": {"second_order": True}},
    "neat_balanced_switch": {"name": "neat_tiny", "style_loss": "balanced_gram",
                             "kwargs": {"w_adv": 0.0, "w_patch_simple": 0.0, "w_patch_complex": 0.0}},
    # the balanced-loss paper's four baselines, each with one of the two style losses
    "adain_balanced": {"name": "adain_tiny", "style_loss": "balanced_gram"},
    "sanet_classic": {"name": "sanet_tiny", "style_loss": "gram"},
    "linear_transfer_balanced": {"name": "linear_transfer_tiny", "style_loss": "balanced_gram"},
    "magenta_classic": {"name": "magenta_tiny", "style_loss": "gram"},
}


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory):
    return str(write_demo_shards(tmp_path_factory.mktemp("seed_shards"), {"content": [6, 6], "style": [5, 5]},
                                 size=(48, 48)))


def _config(tmp_path: Path, shard_root: str, name: str, model: dict, max_steps: int) -> Path:
    cfg = {
        "data": {"root": shard_root, "crop_size": 32, "short_side_min": 32, "short_side_max": 48, "style2": False},
        "loader": {"batch_size": 2, "num_workers": 0, "open_shards": 2, "shuffle_buffer": 4, "seed": 3},
        "model": model,
        "optim": {"lr": 1e-3},
        "schedule": {"max_steps": max_steps},
        "logging": {"dir": str(tmp_path / name), "log_every": 1, "image_every": 2},
        "checkpoint": {"every": 2, "keep": 0},
        "threads": 1,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _metrics(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.parametrize("label", sorted(MODELS))
def test_trains_and_resumes_exactly(tmp_path, shard_root, label):
    torch.set_num_threads(1)
    model = MODELS[label]
    main(["--config", str(_config(tmp_path, shard_root, "ref", model, 4)), "--log-level", "WARNING"])
    ref = _metrics(tmp_path / "ref")
    # a run stopped at step 2, then resumed from its checkpoint to step 4
    cfg = _config(tmp_path, shard_root, "split", model, 2)
    main(["--config", str(cfg), "--log-level", "WARNING"])
    result = main(["--config", str(cfg), "--resume", "--set", "schedule.max_steps=4", "--log-level", "WARNING"])
    assert result["step"] == 4
    resumed = _metrics(tmp_path / "split")
    for step in (3, 4):
        assert resumed[step]["content_keys"] == ref[step]["content_keys"]
        for key, value in ref[step].items():
            if isinstance(value, float) and key != "sec_per_step":
                assert resumed[step][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (step, key)
    ck = load_checkpoint(result["checkpoint"])
    assert ck["model_name"] == model["name"]
    if "style_loss" in model:  # the trainer-level switch reached the model and its checkpoint
        assert ck["model_config"]["style_loss"] == model["style_loss"]
    rebuilt = load_model_from_checkpoint(result["checkpoint"])
    out = rebuilt.stylize(torch.rand(1, 3, 40, 40), torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 3, 40, 40)


@pytest.mark.parametrize("name", ["variational.yaml", "metastyle.yaml", "neat_balanced_vgg16.yaml"])
def test_shipped_configs_load_and_build(name):
    from core.config import load_config
    from train.config import TrainConfig
    from train.models import create_model

    cfg = load_config(TrainConfig, str(Path(__file__).resolve().parent.parent / "train" / "configs" / name))
    kwargs = dict(cfg.model.kwargs)
    if cfg.model.style_loss:
        kwargs["style_loss"] = cfg.model.style_loss
    # random tiny encoders: the configs' own sizes are checked, the weight files are not needed
    weights = {"vgg_weights": None, "loss_vgg_weights": None, "vgg_width": 1 / 16} if "neat" in name else \
        {"loss_vgg_weights": None, "vgg_width": 1 / 16}
    model = create_model(cfg.model.name, **kwargs, **weights)
    expected = {"variational.yaml": "gram", "metastyle.yaml": "gram_frobenius",
                "neat_balanced_vgg16.yaml": "balanced_gram"}
    assert model.model_config()["style_loss"] == expected[name]
    if name == "neat_balanced_vgg16.yaml":
        assert model.loss_vgg is not None and model.cfg.content_layer == "relu3_3"
        assert model.cfg.style_layers == ("relu1_2", "relu2_2", "relu3_3", "relu4_3")


def test_every_shipped_training_config_loads_and_no_prior_differs_in_one_key():
    from core.config import load_config, to_dict
    from train.config import TrainConfig

    repo = Path(__file__).resolve().parent.parent
    configs = sorted((repo / "train" / "configs").rglob("*.yaml"))
    assert len(configs) > 10
    loaded = {str(p.relative_to(repo / "train" / "configs")): to_dict(load_config(TrainConfig, p)) for p in configs}
    for pair in (("neat_1024.yaml", "neat_no_prior_1024.yaml"), ("neat_tiny.yaml", "neat_no_prior_tiny.yaml")):
        full, ablated = (loaded[name] for name in pair)
        assert ablated["model"]["kwargs"] == {**full["model"]["kwargs"], "prior_deltas": False}
        assert {**ablated, "model": full["model"], "logging": full["logging"]} == full
