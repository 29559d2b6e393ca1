"""Every command in README.md and docs/ with the installed package, from a folder outside the checkout.

Commands that run on a laptop CPU in seconds run as written, in order, in one folder that holds the demo output
the first of them builds (`bbst build`, built once for the whole module, at test scale: ``AT_TEST_SCALE``). The rest (GPUs, a cluster, real weights,
the user's own files, long runs) are listed in ``PARSED_ONLY`` with the reason: their flags are parsed by the
command's own parser and every packaged config or protocol they name resolves. A new command in the docs that is
in neither list fails :func:`test_every_doc_command_is_run_or_parsed`.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md"] + sorted(p for p in (REPO / "docs").glob("*.md") if p.name != "benchmarks.md")
TRAINING = REPO / "docs" / "training.md"
PACKAGED_FLAGS = {"--config": "config", "--protocol": "protocol", "--template": "protocol"}


def doc_commands() -> list[tuple[str, str]]:
    """``(doc name, command line)`` for every ``bbst`` / ``torchrun`` line of the docs' shell blocks.

    Continuation lines are joined, comments dropped, leading ``VAR=value`` assignments kept in the line.
    """
    out = []
    for doc in DOCS:
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", doc.read_text(), re.DOTALL):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                while words and re.match(r"^[A-Z_]+=", words[0]):
                    words = words[1:]
                if words and words[0] in ("bbst", "torchrun"):
                    out.append((doc.name, shlex.join(words)))
    return out


def _argv(command: str) -> tuple[str, list[str]]:
    """``(bbst subcommand, its argv)`` of a doc command (torchrun lines: the module after ``-m``)."""
    from pipelines.cli import COMMANDS

    words = shlex.split(command)
    if words[0] == "torchrun":
        module = words[words.index("-m") + 1]
        name = next(n for n, (m, _) in COMMANDS.items() if m == module)
        return name, words[words.index("-m") + 2:]
    return (words[1], words[2:]) if len(words) > 1 else ("", [])


# Run as written, in this order, in one folder outside the checkout (cwd); `ckpt.pt`, `photo.jpg` and `art.jpg`
# stand for the user's files: the test puts a checkpoint of the smoke run and two generated images there.
RUN = [
    "bbst build",
    "bbst train --config neat_tiny --set schedule.max_steps=4",
    "bbst train --resume runs/neat_tiny --set schedule.max_steps=6",
    "bbst --version",
    "bbst weights",
    "bbst build --help",
    "bbst make-protocol --tiny eval-tiny/",
    "bbst evaluate --protocol eval-tiny/protocol.yaml --model tiny=ckpt.pt --random-metrics --out eval-tiny/out",
    ("bbst compare --protocol eval-tiny/protocol.yaml --model tiny=ckpt.pt --random-metrics --timing-sizes 64x64 "
     "--out comparison-tiny/"),
    "bbst stylize --checkpoint ckpt.pt --content photo.jpg --style art.jpg --out out.png --alpha 1.2 --blur 0",
    "bbst stylize --checkpoint ckpt.pt --content photo.jpg --style art.jpg --out out.png",
    "bbst stylize --checkpoint ckpt.pt --content photos/ --style styles/ --out outs/ --alpha 1.25 --blur 0",
    # docs/first-image.md: the recipe without weights (a VGG-19 of the real size, random): both commands say why
    # its output cannot look stylised
    ("bbst train --config first_image_cpu --set model.kwargs.vgg_weights=null "
     "--set model.kwargs.loss_vgg_weights=null --set schedule.max_steps=2"),
    ("bbst stylize --checkpoint runs/first_image/checkpoints/ckpt-00000002.pt --content photo.jpg --style art.jpg "
     "--out check.png"),
]
# the demo build runs with these flags added: 12 images of at least 96 px instead of 40 of 1024 px keep the module
# at about a minute on a busy 2-core machine (tests/test_build_bbst.py covers the demo's statuses)
AT_TEST_SCALE = ["--demo-images", "12", "--min-side", "96"]
# run as written, and expected to fail with exit code 2 (the docs show the error)
RUN_FAILING = ["bbst build --min-side -5"]

# (pattern matched against the start of the command, why it is parsed only)
PARSED_ONLY = [
    (r"bbst build --urls (urls\.parquet|s3://)", "the user's URL list"),
    (r"bbst build --images", "the user's image folder"),
    (r"bbst build --config my\.yaml", "the user's config file"),
    (r"bbst build --classifier labels\.exports", "a classifier exported by a labeling session"),
    (r"bbst train-classifier", "labels and real backbone weights (--weights cache)"),
    (r"bbst label", "a web server that runs until stopped (tests/test_label_app.py drives it)"),
    (r"bbst train --config (neat_1024|rast_256)", "a GPU training run"),
    (r"bbst train --config (neat_tiny|rast_tiny) --set (data\.root|model\.style_loss)",
     "a 200-step CPU run of the config the smoke commands above run for 4 steps"),
    (r"bbst train --config (balanced_loss/|variational|metastyle)", "a curated run at RUN_DIR"),
    (r"bbst train --config cfg\.yaml", "the user's config"),
    (r"bbst train --resume runs/(neat_1024|neat/)", "a GPU run's folder"),
    (r"bbst train --config neat_paper|bbst make-protocol --template", "the user's photo and art folders"),
    (r"bbst stylize --checkpoint runs/", "a trained RAST checkpoint"),
    (r"bbst evaluate --protocol eval/", "the user's protocol and trained checkpoints"),
    (r"bbst compare --protocol eval/", "the user's protocol and trained checkpoints"),
    (r"bbst rast-ablation", "seven training runs (tests/test_rast_ablation.py runs the script on two rows)"),
    (r"bbst balanced-loss-analysis", "the user's style and photo folders"),
    (r"bbst vst-styles", "a trained variational checkpoint"),
    (r"bbst metastyle", "a trained MetaStyle checkpoint"),
    (r"torchrun", "several GPUs"),
    (r"bbst train --config first_image_cpu$", "a real VGG-19 (not on the test machine) and 20-30 minutes"),
    (r"bbst stylize --checkpoint runs/first_image/checkpoints/ckpt-00000600", "the recipe's trained checkpoint"),
    (r"bbst reproduce --tiny", "every family trained for minutes (tests/test_reproduce.py runs two families)"),
    (r"bbst convert-checkpoint", "a checkpoint written by an older bbst (tests/test_checkpoint.py converts one)"),
]


def _parsed_only_reason(command: str) -> str | None:
    return next((why for pattern, why in PARSED_ONLY if re.match(pattern, command)), None)


def test_every_doc_command_is_run_or_parsed():
    commands = doc_commands()
    assert len(commands) > 40
    unclassified = [(doc, c) for doc, c in commands if c not in RUN + RUN_FAILING and not _parsed_only_reason(c)]
    assert not unclassified, "add these doc commands to RUN or PARSED_ONLY: " + repr(unclassified)
    documented = {c for _, c in commands}
    assert not [c for c in RUN + RUN_FAILING if c not in documented], "RUN lists a command the docs no longer show"


def test_parsed_only_commands_parse_and_name_packaged_files():
    from core.config import resolve_file

    for doc, command in doc_commands():
        if command in RUN + RUN_FAILING or "[" in command or "..." in command:
            continue  # run below, or a synopsis with placeholders
        name, argv = _argv(command)
        from pipelines.cli import COMMANDS

        parser = importlib.import_module(COMMANDS[name][0]).build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # pragma: no cover - the message is on stderr
            raise AssertionError(f"{doc}: {command}: does not parse") from exc
        for flag, kind in PACKAGED_FLAGS.items():
            value = getattr(args, flag[2:], None)
            if isinstance(value, str) and "/" not in value and not value.endswith((".yaml", ".yml")):
                resolve_file(value, kind, flag)  # a packaged name must exist


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder outside the checkout where `bbst build` (the built-in demo, at test scale) has run, in its own
    process with its own local Ray, as a user's shell runs it."""
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("docs")
    assert REPO not in root.parents
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "BBST_DEBUG")}
    env["PYTHONPATH"] = str(REPO)  # this checkout stands for the installed package
    argv = shlex.split(RUN[0])[1:] + AT_TEST_SCALE
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *argv], check=False, cwd=root, env=env, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((root / "bbst-demo" / "summary.json").read_text())["demo"] is True
    return root


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a few minutes on an idle 2-core machine; far more on a busy one
def test_run_commands_run_as_written_outside_the_checkout(workspace, monkeypatch, capsys):
    from core.synthetic import artwork_like, photo_like
    from pipelines import cli

    monkeypatch.chdir(workspace)
    monkeypatch.delenv("BBST_DEBUG", raising=False)
    photo_like(160, 120, seed=1).save("photo.jpg")
    artwork_like(96, 96, seed=2).save("art.jpg")
    for folder, make in (("photos", photo_like), ("styles", artwork_like)):
        Path(folder).mkdir()
        for i in range(2):
            make(80, 64, seed=10 + i).save(f"{folder}/{i}.jpg")
    for command in RUN[1:]:
        if "ckpt.pt" in command and not Path("ckpt.pt").exists():
            shutil.copy("runs/neat_tiny/checkpoints/ckpt-00000006.pt", "ckpt.pt")
        try:
            result = cli.main(shlex.split(command)[1:])
        except SystemExit as exc:  # --help
            result = exc.code
        assert result in (0, None) or not isinstance(result, int), (command, capsys.readouterr().err)
    run = workspace / "runs" / "neat_tiny"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 6] and (run / "checkpoints" / "ckpt-00000006.pt").is_file()
    assert (workspace / "eval-tiny" / "out" / "quality.md").is_file()
    assert (workspace / "comparison-tiny" / "grid.png").is_file() or (workspace / "comparison-tiny").is_dir()
    assert (workspace / "out.png").is_file() and len(list((workspace / "outs").glob("*.png"))) == 4
    err = capsys.readouterr().err
    assert "bbst stylize: note: runs/first_image/checkpoints/ckpt-00000002.pt cannot stylise: its VGG network is " \
           "random-init (vgg_weights=None, loss_vgg_weights=None)" in err, err
    for command in RUN_FAILING:
        assert cli.main(shlex.split(command)[1:]) == 2, command
        assert capsys.readouterr().err.startswith("bbst build: error: --min-side -5")


def test_the_training_smoke_block_is_run_above():
    block = re.search(r"```bash\n(.*?)```", TRAINING.read_text(), re.DOTALL).group(1)
    lines = [shlex.join(shlex.split(ln, comments=True)) for ln in block.splitlines() if shlex.split(ln, comments=True)]
    assert lines == RUN[:3]
