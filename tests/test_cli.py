"""The ``bbst`` command dispatches to each entry script's ``main``."""

import pytest

from pipelines import cli


def test_every_command_imports_and_has_main():
    import importlib

    for module, _ in cli.COMMANDS.values():
        assert callable(importlib.import_module(module).main)


def test_usage_and_unknown(capsys):
    assert cli.main([]) == 0
    assert "train-classifier" in capsys.readouterr().out
    assert cli.main(["nope"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_forwards_help():
    with pytest.raises(SystemExit) as exc:
        cli.main(["stylize", "--help"])
    assert exc.value.code == 0
