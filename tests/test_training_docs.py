"""docs/training.md's CPU smoke commands, run as written on the curation demo's output."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from ray_local import ray_local  # noqa: F401 - session fixture

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "training.md"


def smoke_commands() -> list[list[str]]:
    """The ``train_model.py`` lines of the first bash block of docs/training.md (the smoke run)."""
    block = re.search(r"```bash\n(.*?)```", DOC.read_text(), re.DOTALL).group(1)
    commands = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words[:2] == ["python", "pipelines/train_model.py"]:
            commands.append(words[2:])
    return commands


def test_the_smoke_block_is_what_this_test_runs():
    commands = smoke_commands()
    assert len(commands) == 2 and commands[0][:2] == ["--config", "train/configs/neat_tiny.yaml"]
    assert commands[1][:2] == ["--resume", "runs/neat_tiny"]
    assert "python pipelines/build_bbst.py" in DOC.read_text().split("```bash", 2)[1]


@pytest.mark.slow
@pytest.mark.ray
def test_smoke_commands_run_as_written_on_the_demo_output(tmp_path, monkeypatch, ray_local):  # noqa: F811
    from pipelines import build_bbst
    from pipelines.train_model import main

    # the demo's layout (one shard per subset) at a test-sized scale; the commands run from a folder holding it
    build_bbst.main(["--out", str(tmp_path / "bbst-demo"), "--demo-images", "16", "--min-side", "96",
                     "--set", "progress_interval_s=0"])
    shards = sorted(p.name for p in (tmp_path / "bbst-demo" / "shards").glob("*.tar"))
    assert shards == ["content-000000.tar", "style-000000.tar"]
    for name in ("train", "pipelines"):
        (tmp_path / name).symlink_to(REPO / name)
    monkeypatch.chdir(tmp_path)
    first, second = smoke_commands()
    main(first)
    run = tmp_path / "runs" / "neat_tiny"
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "ckpt-00000004.pt").is_file()
    main(second)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 6]
    assert (run / "checkpoints" / "ckpt-00000006.pt").is_file()
