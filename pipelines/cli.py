"""The ``bbst`` command: one subcommand per entry script, each forwarding its arguments to that script's ``main``."""

from __future__ import annotations

import importlib
import os
import sys

if __package__ in (None, ""):  # `python pipelines/cli.py`: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.cli import DEBUG_ENV, exit_with, format_error, version
from core.errors import BbstError

COMMANDS = {
    "build": ("pipelines.build_bbst", "curate: URL lists -> filtered, deduplicated, scored WebDataset shards"),
    "train-classifier": ("pipelines.train_classifier", "train and evaluate the stylistic classifier from labels"),
    "label": ("pipelines.label", "run a human-in-the-loop labeling session (web app)"),
    "train": ("pipelines.train_model", "train NeAT (or another registered model) on curated shards"),
    "stylize": ("pipelines.stylize", "stylize images with a trained checkpoint"),
    "evaluate": ("pipelines.evaluate", "style-transfer metrics over content-style pairs"),
    "make-protocol": ("pipelines.make_protocol", "build an evaluation protocol (content x style pairs) from images"),
    "rast-ablation": ("pipelines.rast_ablation", "train each RAST ablation row briefly and write the ablation table"),
    "vst-styles": ("pipelines.vst_styles", "variational model: sample styles from the prior, interpolate"),
    "metastyle": ("pipelines.metastyle", "MetaStyle: adapt to a style, stylise, interpolate adapted models"),
    "compare": ("pipelines.compare", "every model on the same pairs: one table and one image grid"),
    "convert-checkpoint": ("pipelines.convert_checkpoint",
                           "rewrite an older bbst checkpoint you trust as one that loads without pickle"),
    "weights": ("pipelines.weights", "pretrained backbones: which are here, where bbst looks, how to fetch each"),
    "balanced-loss-analysis": ("pipelines.balanced_loss_analysis",
                               "classic vs balanced Gram style loss: Study III, and Studies I-V from ratings"),
    "reproduce": ("pipelines.reproduce", "one named experiment end to end: train each model, evaluate, compare"),
}


def _usage() -> str:
    lines = ["usage: bbst [--version] [--debug] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<18} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "options:",
              "  --version          print the bbst version and exit",
              f"  --debug            show full tracebacks of errors in any command (same as {DEBUG_ENV}=1)",
              "", "`bbst COMMAND --help` shows the options of one command, with examples.",
              "Errors in your input print one line `bbst COMMAND: error: ...` and exit with code 2."]
    return "\n".join(lines)


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--debug":  # global form of each command's --debug, handed on through the environment
        previous = os.environ.get(DEBUG_ENV)
        os.environ[DEBUG_ENV] = "1"
        try:
            return main(argv[1:])
        finally:
            if previous is None:
                del os.environ[DEBUG_ENV]
            else:
                os.environ[DEBUG_ENV] = previous
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"bbst {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f"\n  hint: did you mean bbst {close[0]}?" if close else ""
        print(f"bbst: error: unknown command {name!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return module.main(rest)
    except BbstError as exc:  # scripts catch their own; this covers errors raised outside a script's main
        if os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in rest:
            raise
        print(format_error(name, exc), file=sys.stderr, flush=True)
        return exc.exit_code


def run() -> None:
    """Console-script entry: scripts' ``main`` may return a summary (success) or an exit code."""
    exit_with(main())


if __name__ == "__main__":
    run()
