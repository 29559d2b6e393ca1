"""The ``bbst`` command: one subcommand per entry script, each forwarding its arguments to that script's ``main``."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "build": ("pipelines.build_bbst", "curate: URL lists -> filtered, deduplicated, scored WebDataset shards"),
    "train-classifier": ("pipelines.train_classifier", "train and evaluate the stylistic classifier from labels"),
    "label": ("pipelines.label", "run a human-in-the-loop labeling session (web app)"),
    "train": ("pipelines.train_neat", "train NeAT (or another registered model) on curated shards"),
    "stylize": ("pipelines.stylize", "stylize images with a trained checkpoint"),
    "evaluate": ("pipelines.evaluate_st", "style-transfer metrics over content-style pairs"),
    "vst-styles": ("pipelines.variational_styles", "variational model: sample styles from the prior, interpolate"),
    "metastyle": ("pipelines.metastyle", "MetaStyle: adapt to a style, stylise, interpolate adapted models"),
    "compare": ("pipelines.compare_models", "every model on the same pairs: one table and one image grid"),
    "balanced-loss-analysis": ("pipelines.balanced_loss_analysis",
                               "classic vs balanced Gram style loss: correlation and distributions, with plots"),
}


def _usage() -> str:
    lines = ["usage: bbst COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<18} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`bbst COMMAND --help` shows the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"bbst: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest)


def run() -> None:
    """Console-script entry: scripts' ``main`` may return a summary (success) or an exit code."""
    result = main()
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    run()
