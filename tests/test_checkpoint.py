"""train/checkpoint.py: checkpoints are data. Nothing a checkpoint holds runs when it is loaded, through any command."""

from __future__ import annotations

import ast
import os
import pickle
import random
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import BadInputError
from core.synthetic import artwork_like, photo_like
from pipelines import cli
from train.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    save_model_checkpoint,
)
from train.demo_shards import write_demo_shards
from train.models import create_model

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _calls(tree: ast.AST, module: str, name: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name:
            base = node.func.value
            if isinstance(base, ast.Name) and base.id == module:
                yield node


def test_no_loader_in_the_source_tree_runs_pickle():
    """Every torch.load says weights_only=True; no pickle.load(s), numpy allow_pickle=True or yaml.load/unsafe_load."""
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        if any(part.startswith(".") or part in ("build", "node_modules") for part in path.relative_to(ROOT).parts):
            continue
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(ROOT)
        for call in _calls(tree, "torch", "load"):
            kw = {k.arg: k.value for k in call.keywords}
            if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                offenders.append(f"{where}:{call.lineno}: torch.load without weights_only=True")
        for name in ("load", "loads", "Unpickler"):
            offenders += [f"{where}:{c.lineno}: pickle.{name}" for c in _calls(tree, "pickle", name)]
        for name in ("load", "unsafe_load", "full_load", "load_all", "unsafe_load_all"):
            offenders += [f"{where}:{c.lineno}: yaml.{name}" for c in _calls(tree, "yaml", name)]
        for call in _calls(tree, "np", "load"):
            for k in call.keywords:
                if k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False):
                    offenders.append(f"{where}:{call.lineno}: np.load with allow_pickle")
    assert not offenders, "\n".join(offenders)


class _WritesMarker:
    """Unpickling this calls os.system: the attack a shared checkpoint could carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "ran"
    bare = tmp_path / "evil.pkl"
    bare.write_bytes(pickle.dumps({"model_name": "neat_tiny", "model": _WritesMarker(marker)}))
    zipped = tmp_path / "evil.pt"
    torch.save({"model_name": "neat_tiny", "model_config": {}, "model": _WritesMarker(marker), "step": 1}, zipped)
    # the file really does run code when pickle loads it (in another process: this tree never calls pickle.load)
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))", str(bare)],
                   check=False, capture_output=True, timeout=60)
    assert marker.exists()
    marker.unlink()
    return marker, bare, zipped


@pytest.fixture
def images(tmp_path):
    photo_like(48, 40, seed=1).save(tmp_path / "c.jpg")
    artwork_like(40, 40, seed=2).save(tmp_path / "s.png")
    folder = tmp_path / "imgs"
    folder.mkdir()
    photo_like(40, 40, seed=3).save(folder / "a.jpg")
    artwork_like(40, 40, seed=4).save(folder / "b.png")
    write_demo_shards(tmp_path / "shards", {"content": [2], "style": [2]}, size=(64, 64))
    return tmp_path


def _commands(ckpt: str, d: Path) -> list[list[str]]:
    c, s, out = str(d / "c.jpg"), str(d / "s.png"), str(d / "out")
    return [
        ["stylize", "--checkpoint", ckpt, "--content", c, "--style", s, "--out", f"{out}/x.png"],
        ["evaluate", "--content", str(d / "imgs"), "--style", str(d / "imgs"), "--model", f"m={ckpt}",
         "--random-metrics", "--out", out],
        ["compare", "--content", str(d / "imgs"), "--style", str(d / "imgs"), "--model", f"m={ckpt}",
         "--random-metrics", "--out", out],
        ["metastyle", "adapt", "--checkpoint", ckpt, "--style", s, "--content", str(d / "imgs"), "--out",
         f"{out}/a.pt"],
        ["metastyle", "stylize", "--checkpoint", ckpt, "--content", c, "--out", f"{out}/m.png"],
        ["metastyle", "interpolate", "--checkpoint", ckpt, ckpt, "--content", c, "--out", f"{out}/i.png"],
        ["vst-styles", "sample", "--checkpoint", ckpt, "--content", c, "--out", f"{out}/v.png"],
        ["train", "--resume", ckpt],
        ["train", "--config", str(ROOT / "train/configs/neat_tiny.yaml"), "--set", f"data.root={d / 'shards'}",
         "--set", "loader.num_workers=0", "--set", f"logging.dir={d / 'run'}", "--resume", ckpt],
        ["convert-checkpoint", "--trust", ckpt, f"{out}/new.pt"],
        ["build", "--images", str(d / "imgs"), "--out", f"{out}/build", "--min-side", "8", "--classifier", ckpt],
        ["label", "--pool", str(d / "imgs"), "--db", f"{d}/labels.sqlite", "--classifier", ckpt],
        ["train-classifier", "--labels", f"{d}/labels.csv", "--images", str(d / "imgs"), "--weights", ckpt,
         "--out", f"{out}/clf"],
    ]


@pytest.mark.parametrize("kind", ["bare", "zipped"])
def test_crafted_pickle_runs_nothing_through_any_command(evil, images, kind, capsys):
    marker, bare, zipped = evil
    ckpt = str(bare if kind == "bare" else zipped)
    (images / "labels.csv").write_text("key,label\na,1\nb,0\n")
    for argv in _commands(ckpt, images):
        code = cli.main(argv)
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert not marker.exists(), argv
        assert code == 2, (argv, err)
        # one error line naming the file (the project's format may add one "  hint: ..." line under it)
        assert lines and lines[0].startswith(f"bbst {argv[0]}: error: ") and ckpt in lines[0], (argv, err)
        assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("  hint: ")), (argv, err)


def test_crafted_feature_cache_runs_nothing(tmp_path, evil, capsys):
    """A feature-cache shard is a .npy: one holding pickled objects is refused, not unpickled."""
    from classifier.features import FeatureCache

    marker = evil[0]
    root = tmp_path / "features"
    root.mkdir()
    np.save(root / "part-x.npy", np.zeros((1, 4), np.float32))
    with open(root / "part-x.sha.npy", "wb") as f:
        np.save(f, np.array([_WritesMarker(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(BadInputError, match="part-x.sha.npy"):
        FeatureCache(root)
    assert not marker.exists()


def test_rng_state_round_trips_without_pickle(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.random(), np.random.normal(), torch.rand(1)  # a cached gaussian is part of NumPy's state
    state = capture_rng_state()
    torch.save({"rng": state}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    got = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def _old_checkpoint(tmp_path) -> tuple[Path, dict]:
    """What an older bbst wrote: NumPy's RNG state as an ndarray, torch's version as a TorchVersion."""
    model = create_model("neat_tiny")
    np.random.seed(5)
    state = {"format": "bbst-train-checkpoint-v1", "model_name": "neat_tiny", "model_config": model.model_config(),
             "model": model.state_dict(), "step": 7, "config": {"seed": 1},
             "rng": [{"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}],
             "versions": {"torch": torch.__version__}, "loss": np.float64(0.5)}
    path = tmp_path / "old.pt"
    torch.save(state, path)
    return path, state


def test_older_checkpoint_is_refused_with_the_command_that_converts_it(tmp_path, capsys):
    old, state = _old_checkpoint(tmp_path)
    with pytest.raises(BadInputError, match="older bbst") as exc:
        load_checkpoint(str(old))
    assert f"bbst convert-checkpoint --trust {old} NEW.pt" in str(exc.value)
    new = tmp_path / "new.pt"
    assert cli.main(["convert-checkpoint", str(old), str(new)]) == 2  # no --trust, no pickle
    assert "--trust" in capsys.readouterr().err and not new.exists()
    # the command as docs/training.md shows it, on this file
    shown = next(ln for ln in (ROOT / "docs" / "training.md").read_text().splitlines()
                 if ln.startswith("bbst convert-checkpoint"))
    argv = shlex.split(shown)[1:]
    assert argv[:2] == ["convert-checkpoint", "--trust"] and len(argv) == 4
    assert cli.main([*argv[:2], str(old), str(new)])["converted"]
    ck = torch.load(new, weights_only=True)
    assert ck["step"] == 7 and ck["loss"] == 0.5 and type(ck["versions"]["torch"]) is str
    for k, v in state["model"].items():
        assert torch.equal(ck["model"][k], v)
    np.random.seed(0)
    restore_rng_state(ck["rng"][0])
    np.random.set_state(state["rng"][0]["numpy"])
    expected = np.random.rand(4)
    restore_rng_state(ck["rng"][0])
    assert np.array_equal(np.random.rand(4), expected)


def test_checkpoints_bbst_writes_load_without_pickle(tmp_path):
    model = create_model("neat_tiny")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = {"format": "bbst-train-checkpoint-v1", "model_name": "neat_tiny", "model_config": model.model_config(),
             "model": model.state_dict(), "opt_g": opt.state_dict(), "rng": [capture_rng_state()], "step": 3,
             "versions": {"torch": str(torch.__version__)}}
    path = save_checkpoint(state, str(tmp_path / "ck"), 3)
    assert load_checkpoint(path)["step"] == 3
    save_model_checkpoint(model, str(tmp_path / "m.pt"), "neat_tiny", extra={"adaptation": {"steps": 2}})
    assert torch.load(tmp_path / "m.pt", weights_only=True)["adaptation"] == {"steps": 2}


def test_not_a_checkpoint_is_one_line(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(BadInputError, match="not a bbst checkpoint"):
        load_checkpoint(str(text))
    Image.new("RGB", (4, 4)).save(tmp_path / "img.png")
    with pytest.raises(BadInputError, match="img.png"):
        load_checkpoint(str(tmp_path / "img.png"))
