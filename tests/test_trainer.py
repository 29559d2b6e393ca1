"""Tests for the trainer: the loss falls on a fixed batch, and checkpoint + SIGKILL + resume continues exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from core.config import load_config
from pipelines.train_model import main
from train.checkpoint import latest_checkpoint, load_checkpoint
from train.config import TrainConfig
from train.demo_shards import write_demo_shards
from train.trainer import ResumeError, train

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory):
    return str(write_demo_shards(tmp_path_factory.mktemp("train_shards"), {"content": [6, 6, 6, 6],
                                                                            "style": [5, 5, 5]}, size=(96, 96)))


def _config(tmp_path: Path, shard_root: str, name: str, **sections) -> Path:
    cfg = {
        "data": {"root": shard_root, "crop_size": 64, "short_side_min": 64, "short_side_max": 96},
        "loader": {"batch_size": 2, "num_workers": 2, "open_shards": 2, "shuffle_buffer": 4, "seed": 1},
        "model": {"name": "neat_tiny", "kwargs": {}},
        "schedule": {"max_steps": 6},
        "logging": {"dir": str(tmp_path / name), "log_every": 1, "image_every": 3},
        "checkpoint": {"every": 3, "keep": 0},
        "threads": 1,
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _metrics(run_dir: Path) -> dict[int, dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {rec["step"]: rec for rec in map(json.loads, lines)}


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tmp_path, shard_root):
    torch.set_num_threads(1)
    no_gan = {"w_adv": 0.0, "w_patch_simple": 0.0, "w_patch_complex": 0.0}
    path = _config(tmp_path, shard_root, "overfit", model={"name": "neat_tiny", "kwargs": no_gan},
                   optim={"lr": 2e-3, "grad_accum": 2}, schedule={"max_steps": 10, "overfit_batches": True},
                   loader={"num_workers": 0}, checkpoint={"every": 100})
    result = train(load_config(TrainConfig, path))
    assert result["step"] == 10
    records = [rec for _, rec in sorted(_metrics(tmp_path / "overfit").items())]
    assert len(records[0]["content_keys"][0]) == 4  # two accumulated micro-batches of 2 per step
    losses = [rec["loss_g"] for rec in records]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    # TensorBoard got scalars for every loss term and the image grid
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "overfit"), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss_g", "train/loss_d", "g/style", "g/content"} <= set(tags["scalars"])
    assert any(t.startswith("images/content_style_prior_output") for t in tags["images"])
    ck = load_checkpoint(result["checkpoint"])
    assert ck["model_name"] == "neat_tiny" and ck["step"] == 10 and ck["config"]["schedule"]["max_steps"] == 10
    assert ck["model_config"]["w_adv"] == 0.0  # self-describing: the model can be rebuilt from the file alone
    from train.models import load_model_from_checkpoint

    rebuilt = load_model_from_checkpoint(result["checkpoint"])
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), ck["model"].values()))


def test_checkpoint_sigkill_resume_matches_an_uninterrupted_run(tmp_path, shard_root):
    torch.set_num_threads(1)
    # uninterrupted reference, in-process
    ref_cfg = _config(tmp_path, shard_root, "ref")
    train(load_config(TrainConfig, ref_cfg))
    ref = _metrics(tmp_path / "ref")
    assert sorted(ref) == [1, 2, 3, 4, 5, 6]

    # the same run in a subprocess that is SIGKILLed once its step-3 checkpoint exists
    cfg = _config(tmp_path, shard_root, "killed", schedule={"max_steps": 1000})
    ckpt = tmp_path / "killed" / "checkpoints" / "ckpt-00000003.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "pipelines" / "train_model.py"), "--config", str(cfg),
                             "--log-level", "WARNING"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ckpt.exists():
        if proc.poll() is not None:
            pytest.fail(f"training subprocess exited early: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint within 120 s")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # resume from the step-3 checkpoint (a later one may have landed before the kill) and finish at step 6
    main(["--config", str(cfg), "--resume", str(ckpt), "--set", "schedule.max_steps=6", "--log-level", "WARNING"])
    resumed = _metrics(tmp_path / "killed")
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]  # lines the killed run wrote after step 3 were dropped
    for step in (4, 5, 6):
        assert resumed[step]["content_keys"] == ref[step]["content_keys"]  # same next samples
        assert resumed[step]["style_keys"] == ref[step]["style_keys"]
        losses = [k for k, v in ref[step].items() if isinstance(v, float) and k != "sec_per_step"]
        assert {"loss_g", "loss_d"} <= set(losses)
        for key in losses:  # same next losses, every term
            assert resumed[step][key] == pytest.approx(ref[step][key], rel=1e-5, abs=1e-6), (step, key)
    assert latest_checkpoint(str(tmp_path / "killed" / "checkpoints")).endswith("ckpt-00000006.pt")


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, shard_root, capsys):
    cfg = _config(tmp_path, shard_root, "empty")
    with pytest.raises(ResumeError, match="no checkpoint in"):
        main(["--config", str(cfg), "--resume", "--debug"])
    assert main(["--config", str(cfg), "--resume"]) == 2  # without --debug: one line, exit code 2
    err = capsys.readouterr().err
    assert err.startswith("bbst train: error: ") and "no checkpoint in" in err and "Traceback" not in err


def test_unknown_config_key_is_an_error(tmp_path, shard_root):
    from core.config import ConfigError

    cfg = _config(tmp_path, shard_root, "bad")
    with pytest.raises(ConfigError, match="unknown key"):
        main(["--config", str(cfg), "--set", "optim.learning_rate=1", "--debug"])


def test_run_folder_console_and_resume_run_without_other_flags(tmp_path, shard_root, caplog):
    torch.set_num_threads(1)
    cfg = _config(tmp_path, shard_root, "run", schedule={"max_steps": 4}, checkpoint={"every": 2, "keep": 0},
                  loader={"num_workers": 0}, logging={"dir": str(tmp_path / "run"), "log_every": 1,
                                                      "image_every": 0})
    with caplog.at_level("INFO", logger="bbst.train"):
        main(["--config", str(cfg)])
    run = tmp_path / "run"
    lines = [r.getMessage() for r in caplog.records if r.name == "bbst.train"]
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in steps] == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]
    assert all(" | loss_g " in line and "s/step" in line and "samples/s" in line and " | ETA " in line
               for line in steps)
    assert any(f"checkpoints in {run / 'checkpoints'}" in line and "run folder" in line for line in lines)
    assert any(line.startswith("finished at step 4/4") and "ckpt-00000004.pt" in line for line in lines)
    ref = _metrics(run)
    assert {"g/style", "data/damaged_samples", "lr", "sec_per_step"} <= set(ref[4])  # every term in the file
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["root"] == shard_root

    # a run killed after its step-2 checkpoint: `--resume RUN` alone continues it, from the saved config
    (run / "checkpoints" / "ckpt-00000004.pt").unlink()
    os.remove(cfg)  # the original config file is gone: the run folder is enough
    main(["--resume", str(run), "--log-level", "WARNING"])
    again = _metrics(run)
    for step in (3, 4):
        assert again[step]["content_keys"] == ref[step]["content_keys"]
        assert again[step]["loss_g"] == pytest.approx(ref[step]["loss_g"], rel=1e-5)


def test_changed_settings_are_refused_in_one_line_without_a_traceback(tmp_path, shard_root):
    cfg = _config(tmp_path, shard_root, "fixed", schedule={"max_steps": 1}, loader={"num_workers": 0})
    main(["--config", str(cfg), "--log-level", "WARNING"])
    run = tmp_path / "fixed"
    with pytest.raises(ResumeError) as info:
        main(["--resume", str(run), "--set", "loader.seed=9", "--set", "data.crop_size=32", "--set",
              "data.short_side_min=64", "--set", "schedule.max_steps=2", "--debug"])
    message = str(info.value)
    assert "\n" not in message and "loader.seed (run: 1, now: 9)" in message and "data.crop_size" in message
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "train_model.py"), "--resume", str(run),
                           "--set", "loader.seed=9", "--set", "schedule.max_steps=2"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("bbst train: error: ") and "Traceback" not in proc.stderr
    assert "loader.seed (run: 1, now: 9)" in proc.stderr.splitlines()[0]


def test_a_damaged_shard_read_in_a_loader_worker_is_one_line(tmp_path, shard_root, capsys):
    """The worker's error reaches the command line as its own message, not wrapped in the worker's traceback."""
    import shutil

    from pipelines import cli

    root = tmp_path / "damaged"
    shutil.copytree(shard_root, root)
    tar = root / "shards" / "content-000000.tar"
    tar.write_bytes(tar.read_bytes()[:tar.stat().st_size // 3])  # cut short: fewer samples than the manifest says
    path = _config(tmp_path, str(root), "damaged", loader={"num_workers": 2})
    assert cli.main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"bbst train: error: {tar}: "), err
    assert "Traceback" not in err and "DataLoader worker" not in err and "File " not in err, err
