"""The ``bbst`` command and the shared CLI plumbing: one-line errors, help, examples, flags from config dataclasses."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
from ray_local import ray_local  # noqa: F401 - session fixture

from core.cli import ConfigFlags, error_boundary, load_args, make_parser
from core.config import ConfigError
from pipelines import cli

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "torchvision", "timm", "open_clip", "fastapi", "uvicorn", "pyarrow", "matplotlib")


def _bbst(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``bbst ARGS`` as a new process, running this checkout's code."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("BBST_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], check=False, capture_output=True,
                          text=True, env=full_env, cwd=ROOT, timeout=timeout)


def _assert_one_line_error(stderr: str, command: str, *parts: str) -> None:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(f"bbst {command}: error: ")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    for part in parts:
        assert part in stderr, (part, stderr)


def test_every_command_imports_and_has_main():
    for module, _ in cli.COMMANDS.values():
        assert callable(importlib.import_module(module).main)


def test_usage_version_and_unknown(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "train-classifier" in out and "--version" in out
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("bbst ")
    assert cli.main(["nope"]) == 2
    assert "bbst: error: unknown command 'nope'" in capsys.readouterr().err
    assert cli.main(["stylise"]) == 2
    assert "bbst: error: unknown command 'stylise'\n  hint: did you mean bbst stylize?" in capsys.readouterr().err
    proc = _bbst("--version")
    assert proc.returncode == 0 and proc.stdout.strip().startswith("bbst ") and not proc.stderr


def test_forwards_help():
    with pytest.raises(SystemExit) as exc:
        cli.main(["stylize", "--help"])
    assert exc.value.code == 0


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_help_prints_before_heavy_imports(command):
    """``bbst COMMAND --help`` imports neither torch nor Ray (that is what made it take seconds)."""
    code = ("import sys, time, io, contextlib\n"
            "t = time.perf_counter()\n"
            "from pipelines import cli\n"
            "buf = io.StringIO()\n"
            "try:\n"
            "    with contextlib.redirect_stdout(buf):\n"
            f"        cli.main([{command!r}, '--help'])\n"
            "except SystemExit as e:\n"
            "    assert e.code == 0, e.code\n"
            "import json\n"
            f"print(json.dumps({{'seconds': time.perf_counter() - t, 'help': buf.getvalue(), "
            f"'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["help"].startswith(f"usage: bbst {command}") and "examples:" in res["help"]
    assert [m for m in res["heavy"] if m in ("torch", "ray", "torchvision", "timm", "open_clip")] == [], res
    print(f"bbst {command} --help: {res['seconds']:.2f}s, heavy modules loaded: {res['heavy']}")


def _parsers() -> dict[str, argparse.ArgumentParser]:
    out = {}
    for name, (module, _) in cli.COMMANDS.items():
        mod = importlib.import_module(module)
        out[name] = mod.build_parser()
    return out


def _with_subcommands(name: str, parser: argparse.ArgumentParser):
    """The parser and, for commands with subcommands (``bbst metastyle adapt``), each subcommand's parser."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _with_subcommands(f"{name} {sub_name}", sub)


def test_every_option_has_help_with_its_default():
    for command, top in _parsers().items():
        for name, parser in _with_subcommands(command, top):
            for action in parser._actions:
                if isinstance(action, argparse._HelpAction):
                    continue
                flag = "/".join(action.option_strings) or action.dest
                assert action.help, f"bbst {name} {flag}: no help text"
                assert "(default: " in action.help or "(required)" in action.help, f"bbst {name} {flag}: {action.help}"


def test_every_example_parses():
    """Each epilog example is a valid command line for its parser (the examples themselves were run by hand)."""
    for name, parser in _parsers().items():
        mod = importlib.import_module(cli.COMMANDS[name][0])
        assert mod.EXAMPLES, name
        assert all(line in parser.epilog for example in mod.EXAMPLES for line in example)
        for command, _ in mod.EXAMPLES:
            argv = shlex.split(command)
            assert argv[:2] == ["bbst", name], command
            parser.parse_args(argv[2:])


# ----------------------------------------------------------------------------------------- ConfigFlags
@dataclass
class _Inner:
    min_side: int = 1024  # short side floor in pixels
    mode: Literal["fast", "exact"] = "fast"  # how to compare

    def __post_init__(self):
        if self.min_side < 1:
            raise ValueError(f"min_side must be >= 1, got {self.min_side}")


@dataclass
class _Cfg:
    urls: str | None = None  # URL list
    rate: float = 0.5  # share of 100% that is sampled
    report: bool = True  # write the report
    hosts: list[str] = field(default_factory=list)  # allowed hosts
    inner: _Inner = field(default_factory=_Inner)  # a section


def _flags_parser():
    p = make_parser("demo", "a demo")
    p.add_argument("--config")
    p.add_argument("--set", dest="sets", action="append", default=[])
    flags = ConfigFlags(_Cfg)
    flags.add_all(p)
    flags.add(p, "inner.min_side", "--min-side")
    flags.add(p, "inner.mode")
    return p, flags


def test_config_flags_types_help_and_overrides():
    p, flags = _flags_parser()
    helps = {a.option_strings[0]: a.help for a in p._actions if a.option_strings}
    assert helps["--rate"] == "share of 100%% that is sampled (default: 0.5)"  # % escaped for argparse
    assert helps["--report"].endswith("(default: on)") and helps["--hosts"].endswith("(default: none)")
    assert p.format_help()  # renders (the escaped % included)
    args = p.parse_args(["--min-side", "512", "--no-report", "--hosts", "a", "b", "--mode", "exact"])
    assert flags.overrides(args) == {"report": False, "hosts": ["a", "b"], "inner": {"min_side": 512,
                                                                                      "mode": "exact"}}
    assert flags.origins(args)["inner.min_side"] == "--min-side 512"
    cfg = load_args(_Cfg, args, flags)
    assert cfg.inner.min_side == 512 and cfg.report is False and cfg.rate == 0.5
    with pytest.raises(SystemExit):
        p.parse_args(["--mode", "slow"])  # Literal -> choices
    with pytest.raises(ValueError, match="no one-line comment"):
        @dataclass
        class _Bare:
            x: int = 1

        ConfigFlags(_Bare).add(argparse.ArgumentParser(), "x")


def test_config_errors_blame_the_flag_set_pair_or_file(tmp_path):
    p, flags = _flags_parser()
    with pytest.raises(ConfigError, match=r"^--min-side -5: inner: min_side must be >= 1, got -5$"):
        load_args(_Cfg, p.parse_args(["--min-side", "-5"]), flags)
    with pytest.raises(ConfigError, match=r"^--set inner.min_side=0: "):
        load_args(_Cfg, p.parse_args(["--min-side", "5", "--set", "inner.min_side=0"]), flags)
    with pytest.raises(ConfigError, match=r"^--set inner.min_sid=3: unknown key inner.min_sid") as exc:
        load_args(_Cfg, p.parse_args(["--set", "inner.min_sid=3"]), flags)
    assert exc.value.hint == "did you mean inner.min_side?"
    bad = tmp_path / "c.yaml"
    bad.write_text("inner:\n  min_side: 0\n")
    with pytest.raises(ConfigError, match=r"c.yaml: inner: min_side must be >= 1, got 0"):
        load_args(_Cfg, p.parse_args(["--config", str(bad)]), flags)
    with pytest.raises(ConfigError, match=r"^--set rate=lots: rate: expected a number, got 'lots'"):
        load_args(_Cfg, p.parse_args(["--set", "rate=lots"]), flags)


# ----------------------------------------------------------------------------------------- the boundary
def test_error_boundary_one_line_hint_debug_and_bugs(capsys, monkeypatch):
    monkeypatch.delenv("BBST_DEBUG", raising=False)

    @error_boundary("demo")
    def main(argv=None):
        if argv and argv[0] == "bug":
            raise KeyError("a bug keeps its traceback")
        raise ConfigError("--urls x.csv: no URL column 'url'", hint="--set reader.url_column=link")

    assert main(["x"]) == 2
    err = capsys.readouterr().err
    assert err == "bbst demo: error: --urls x.csv: no URL column 'url'\n  hint: --set reader.url_column=link\n"
    with pytest.raises(ConfigError):
        main(["x", "--debug"])
    monkeypatch.setenv("BBST_DEBUG", "1")
    with pytest.raises(ConfigError):
        main(["x"])
    with pytest.raises(KeyError):
        main(["bug"])


def test_global_debug_flag_shows_the_exception(monkeypatch):
    monkeypatch.delenv("BBST_DEBUG", raising=False)
    with pytest.raises(ConfigError, match="min_side must be >= 1"):
        cli.main(["--debug", "build", "--min-side", "-5"])
    assert "BBST_DEBUG" not in os.environ  # set for the command it ran only


CONFIG_ERRORS = [
    ("build", ["--min-side", "-5", "--urls", "x.csv"], ["--min-side -5", "min_side must be >= 1, got -5"]),
    ("build", ["--urls", "x.csv", "--set", "check.min_sid=3"],
     ["--set check.min_sid=3: unknown key check.min_sid", "hint: did you mean check.min_side?"]),
    ("train", ["--set", "optim.learning_rate=1"], ["--set optim.learning_rate=1: unknown key optim.learning_rate"]),
    ("train-classifier", ["--val-fraction", "2", "--set", "epochs=many"], ["--set epochs=many", "expected an integer"]),
    ("label", ["--pool", "x", "--port", "80", "--set", "sampling.nope=1"], ["--set sampling.nope=1"]),
    ("stylize", ["--content", "c.jpg"], ["--checkpoint is required"]),
    ("evaluate", ["--pairs", "missing-pairs.csv", "--model", "a=b.pt"], ["--pairs missing-pairs.csv: pairs CSV not found"]),
]


@pytest.mark.parametrize(("command", "argv", "parts"), CONFIG_ERRORS, ids=[c[0] for c in CONFIG_ERRORS])
def test_user_errors_are_one_line_in_process(command, argv, parts, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("BBST_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main([command, *argv]) == 2
    _assert_one_line_error(capsys.readouterr().err, command, *parts)


@pytest.mark.slow
@pytest.mark.parametrize(("command", "argv", "parts"), CONFIG_ERRORS[:1] + CONFIG_ERRORS[5:],
                         ids=[c[0] for c in CONFIG_ERRORS[:1] + CONFIG_ERRORS[5:]])
def test_user_errors_are_one_line_in_a_process(command, argv, parts, tmp_path):
    proc = _bbst(command, *argv)
    assert proc.returncode == 2, proc.stderr
    _assert_one_line_error(proc.stderr, command, *parts)
    debug = _bbst(command, *argv, "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr  # --debug: the traceback, for bug reports


def _no_url_column_csv(tmp_path: Path) -> Path:
    csv = tmp_path / "links.csv"
    csv.write_text("link,source\nhttp://127.0.0.1:9/a.jpg,x\n")
    return csv


@pytest.mark.ray
def test_csv_without_url_column_in_process(tmp_path, capsys, ray_local, monkeypatch):  # noqa: F811
    monkeypatch.delenv("BBST_DEBUG", raising=False)
    assert cli.main(["build", "--urls", str(_no_url_column_csv(tmp_path)), "--out", str(tmp_path / "out")]) == 2
    _assert_one_line_error(capsys.readouterr().err, "build", "links.csv: no URL column 'url'",
                           "hint: name the URL column: --set reader.url_column=link")


@pytest.mark.ray
@pytest.mark.slow
def test_csv_without_url_column_in_a_process_has_no_finalizer_noise(tmp_path):
    """The error comes after Ray started and while the build's background thread is importing torch: an exit at
    that moment used to print torch's finalizer tracebacks after the message. Its own new local Ray, as a user's."""
    proc = _bbst("build", "--urls", str(_no_url_column_csv(tmp_path)), "--out", str(tmp_path / "out"),
                 env={"RAY_ADDRESS": "local"}, timeout=300)
    assert proc.returncode == 2, proc.stderr
    _assert_one_line_error(proc.stderr, "build", "--set reader.url_column=link")


UNKNOWN_FLAGS = [
    ("stylize", ["--alpah", "0.5"], "hint: did you mean --alpha?"),
    ("build", ["--min-sdie", "512"], "hint: did you mean --min-side?"),
    ("build", ["--url-column", "link"], "hint: there is no flag for it; set it with --set reader.url_column=link"),
    ("build", ["--phash-distance=3"], "hint: there is no flag for it; set it with --set dedup.phash_distance=3"),
    ("evaluate", ["--no-such-thing-at-all"], None),
]


@pytest.mark.parametrize(("command", "argv", "hint"), UNKNOWN_FLAGS, ids=[" ".join(c[1]) for c in UNKNOWN_FLAGS])
def test_unknown_flag_suggests_the_nearest_flag_or_its_set_key(command, argv, hint, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a flag that parsed by mistake must not build the demo here
    with pytest.raises(SystemExit) as exc:
        cli.main([command, *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"bbst {command}: error: unrecognized arguments: {' '.join(argv)}" in err, err
    if hint is None:
        assert "hint:" not in err
    else:
        assert err.rstrip().splitlines()[-1] == "  " + hint, err


def test_exit_with_runs_each_exit_hook_once_then_exits(monkeypatch):
    from core import cli

    calls = []
    monkeypatch.setattr(cli, "_EXIT_HOOKS", [])
    hook = lambda: calls.append("stopped")
    cli.on_exit(hook)
    cli.on_exit(hook)
    with pytest.raises(SystemExit) as stop:
        cli.exit_with({"summary": 1})
    assert stop.value.code == 0 and calls == ["stopped"]
    with pytest.raises(SystemExit) as stop:
        cli.exit_with(2)
    assert stop.value.code == 2 and calls == ["stopped"]
