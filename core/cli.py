"""Command-line plumbing shared by every entry script: flags from config dataclasses, help, and the error boundary.

* :class:`ConfigFlags` turns fields of a typed config dataclass (``core/config.py``) into argparse flags whose
  type, choices, help text and shown default come from the field itself (its annotation, default and one-line
  comment), so a flag and its config key can never drift apart.
* :func:`make_parser` builds a ``bbst <command>`` parser with examples in its epilog and the common ``--debug`` and
  ``--log-level``; :func:`setup_logging` is the one logging set-up.
* :func:`error_boundary` wraps a script's ``main``: a :class:`~core.errors.BbstError` becomes one line,
  ``bbst <command>: error: <message>`` (plus ``hint: ...``), and exit code 2; ``--debug`` (or ``BBST_DEBUG=1``)
  re-raises it with its traceback. Anything else is a bug and keeps its traceback.

This module imports only the standard library and ``core.config``: ``--help`` must print before torch or Ray
is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re
import sys
import threading
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from core.config import ConfigError, field_comments, load_config
from core.errors import BbstError

DEBUG_ENV = "BBST_DEBUG"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Background threads whose name starts with this only warm up imports; an error exit waits for them, because an
# interpreter torn down while a thread is half-way through `import torch` prints torch's finalizer tracebacks.
PREWARM_THREAD_PREFIX = "bbst-prewarm"
PREWARM_JOIN_S = 60.0


def version() -> str:
    """The installed bbst version (package metadata), without importing anything heavy."""
    from importlib import metadata

    try:
        return metadata.version("bbst")
    except metadata.PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown (not installed)"


# --------------------------------------------------------------------------------------------------- parsers
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's example lines as written; wider option column than argparse's default."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        kwargs.setdefault("max_help_position", 36)
        super().__init__(prog, **kwargs)


def examples_epilog(examples: Iterable[tuple[str, str]]) -> str:
    """Epilog text from ``(command line, what it does)`` pairs."""
    lines = ["examples:"]
    for command, what in examples:
        lines.append(f"  # {what}")
        lines.append(f"  {command}")
    return "\n".join(lines)


def config_keys(cls: type, where: str = "") -> list[str]:
    """Every dotted option key of config dataclass ``cls``, sections expanded (``check.min_side``, ...)."""
    hints = typing.get_type_hints(cls)
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{where}.{f.name}" if where else f.name
        inner = _unwrap_optional(hints[f.name])
        keys.extend(config_keys(inner, key) if dataclasses.is_dataclass(inner) else [key])
    return keys


class ArgumentParser(argparse.ArgumentParser):
    """argparse, plus a hint for an unknown flag: the nearest flag, or the ``--set KEY=VALUE`` that sets it."""

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            message = f"unrecognized arguments: {' '.join(extras)}"
            hint = self.unknown_flag_hint(extras)
            self.print_usage(sys.stderr)
            self.exit(2, f"{self.prog}: error: {message}\n" + (f"  hint: {hint}\n" if hint else ""))
        return namespace

    def unknown_flag_hint(self, extras: list[str]) -> str | None:
        """``did you mean --alpha?`` or ``set it with --set check.min_side=VALUE`` for the first unknown flag."""
        import difflib

        unknown = next((e for e in extras if e.startswith("--") and len(e) > 2), None)
        if unknown is None:
            return None
        name, _, value = unknown[2:].partition("=")
        if not value:
            after = extras[extras.index(unknown) + 1:]
            value = after[0] if after and not after[0].startswith("-") else "VALUE"
        flags = sorted(o for o in self._option_string_actions if o.startswith("--"))
        close = difflib.get_close_matches("--" + name, flags, n=1, cutoff=0.75)
        if close:
            return f"did you mean {close[0]}?"
        config_flags = self._defaults.get("config_flags")
        if isinstance(config_flags, ConfigFlags) and "--set" in self._option_string_actions:
            keys = config_keys(config_flags.cls)
            wanted = name.replace("-", "_")
            exact = [k for k in keys if k == wanted or k.rsplit(".", 1)[-1] == wanted]
            near = exact or difflib.get_close_matches(wanted, keys + [k.rsplit(".", 1)[-1] for k in keys], n=1,
                                                      cutoff=0.75)
            if near:
                key = next((k for k in keys if k == near[0] or k.rsplit(".", 1)[-1] == near[0]), near[0])
                return f"there is no flag for it; set it with --set {key}={value}"
        close = difflib.get_close_matches("--" + name, flags, n=1, cutoff=0.6)
        return f"did you mean {close[0]}?" if close else None


def make_parser(command: str, description: str, examples: Iterable[tuple[str, str]] = ()) -> argparse.ArgumentParser:
    """Parser for ``bbst <command>`` with the examples as epilog and the common ``--debug`` flag."""
    examples = list(examples)
    p = ArgumentParser(prog=f"bbst {command}", description=description, formatter_class=HelpFormatter,
                       epilog=examples_epilog(examples) if examples else None)
    p.add_argument("--debug", action="store_true",
                   help=f"show the full traceback of an error instead of one line (default: off; also {DEBUG_ENV}=1)")
    p.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, type=str.upper,
                   help="logging level, any case (default: INFO)")
    return p


def setup_logging(level: str = "INFO", handlers: list | None = None, progress: bool = False) -> None:
    """The one logging set-up of every command: ``time LEVEL logger: message`` lines at ``level`` (``--log-level``);
    with ``progress``, INFO lines as they are (a progress line reads ``step N/M | ...``) and ``LEVEL logger:``
    before the others."""
    import logging

    class ProgressFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            if record.levelno == logging.INFO:
                return record.getMessage()
            return f"{record.levelname} {record.name}: {record.getMessage()}"

    if progress:
        handler = logging.StreamHandler()
        handler.setFormatter(ProgressFormatter())
        handlers = [handler]
    logging.basicConfig(level=str(level).upper(), format=LOG_FORMAT, handlers=handlers)


def add_config_file_flags(parser: argparse.ArgumentParser, what: str, set_example: str) -> None:
    """The ``--config FILE`` and repeatable ``--set KEY=VALUE`` flags every config-driven script has."""
    parser.add_argument("--config", metavar="FILE",
                        help=f"YAML file with {what} options, local or fsspec URL (default: none, built-in defaults)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override any config option by its dotted key, e.g. --set {set_example}; repeatable; "
                             "applied after --config and the named flags (default: none)")


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _shown_default(value: Any) -> str:
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) if value else "none"
    return str(value)


@dataclasses.dataclass
class _Flag:
    key: str  # dotted config key, e.g. "check.min_side"
    flag: str  # option string, e.g. "--min-side"
    dest: str  # argparse destination


class ConfigFlags:
    """Argparse flags for chosen fields of config dataclass ``cls``; values given on the command line only.

    Every flag defaults to ``None`` in argparse (the config file and the dataclass default stay in charge), while
    its help shows the dataclass default. :meth:`overrides` gives the nested mapping of the flags that were given,
    :meth:`origins` what the user typed for each key, so :func:`load_args` can blame ``--min-side -5`` for a bad
    value instead of the config file.
    """

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.flags: list[_Flag] = []
        self._docs: dict[type, tuple[dict[str, Any], dict[str, str]]] = {}  # class -> (type hints, comments)

    def _doc(self, cls: type) -> tuple[dict[str, Any], dict[str, str]]:
        if cls not in self._docs:  # reading a class's source for its comments is slow enough to do once
            self._docs[cls] = (typing.get_type_hints(cls), field_comments(cls))
        return self._docs[cls]

    def _field(self, key: str) -> tuple[dataclasses.Field, Any, str, Any]:
        """The field at dotted ``key``: (field, annotation, comment, default value)."""
        cls, parts = self.cls, key.split(".")
        for i, part in enumerate(parts):
            fields = {f.name: f for f in dataclasses.fields(cls)}
            if part not in fields:
                raise KeyError(f"{self.cls.__name__} has no option {key!r}")
            hints, comments = self._doc(cls)
            if i < len(parts) - 1:
                cls = hints[part]
                continue
            f = fields[part]
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
            return f, hints[part], comments.get(part, ""), default
        raise KeyError(key)  # pragma: no cover - loop always returns

    def add(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup, key: str, flag: str | None = None, *,
            help: str | None = None, default: Any = dataclasses.MISSING, required: bool = False,
            **kwargs: Any) -> None:
        """Add the flag for dotted ``key`` (default name ``--last-part``).

        ``help``/``default`` replace the derived text and shown default; ``required`` says so in the help (the value
        may still come from ``--config``, so the script checks it after loading); other keyword arguments go to
        ``add_argument`` (``metavar``, ``action``...).
        """
        _, tp, comment, field_default = self._field(key)
        flag = flag or "--" + key.rsplit(".", 1)[-1].replace("_", "-")
        dest = key.replace(".", "__")
        text = help or comment
        if not text:
            raise ValueError(f"{self.cls.__name__}.{key} has no one-line comment to serve as its --help text")
        shown = _shown_default(field_default if default is dataclasses.MISSING else default)
        text = (f"{text} (required)" if required else f"{text} (default: {shown})").replace("%", "%%")
        inner = _unwrap_optional(tp)
        origin = typing.get_origin(inner)
        if "action" not in kwargs:
            if inner is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif origin is typing.Literal:
                kwargs["choices"] = list(typing.get_args(inner))
            elif origin in (list, tuple):
                item = (typing.get_args(inner) or (str,))[0]
                kwargs.setdefault("nargs", "+")
                kwargs["type"] = item if item in (int, float, str) else str
            elif inner in (int, float, str):
                kwargs["type"] = inner
                if inner is not str:
                    kwargs.setdefault("metavar", "N" if inner is int else "X")
            else:
                raise TypeError(f"{self.cls.__name__}.{key}: no flag for type {inner}; set it with --set")
        elif kwargs["action"] == "append":
            item = (typing.get_args(inner) or (str,))[0]
            kwargs.setdefault("type", item if item in (int, float, str) else str)
        parser.add_argument(flag, dest=dest, default=None, help=text, **kwargs)
        self.flags.append(_Flag(key, flag, dest))

    def add_all(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                keys: Iterable[str] | None = None) -> None:
        """Flags for ``keys`` (default: every top-level option that is not a section)."""
        if keys is None:
            hints = typing.get_type_hints(self.cls)
            keys = [f.name for f in dataclasses.fields(self.cls) if not dataclasses.is_dataclass(hints[f.name])]
        for key in keys:
            self.add(parser, key)

    def add_rest(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        """Flags for every top-level option (not a section) that has none yet: a new field gets its flag too."""
        done = {f.key for f in self.flags}
        hints = typing.get_type_hints(self.cls)
        for f in dataclasses.fields(self.cls):
            if f.name not in done and not dataclasses.is_dataclass(hints[f.name]):
                self.add(parser, f.name)

    def given(self, args: argparse.Namespace) -> list[tuple[_Flag, Any]]:
        return [(f, getattr(args, f.dest)) for f in self.flags if getattr(args, f.dest, None) is not None]

    def overrides(self, args: argparse.Namespace) -> dict:
        """Nested mapping of the flags the user gave (others are left to the config file and the defaults)."""
        out: dict = {}
        for f, value in self.given(args):
            node = out
            parts = f.key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = list(value) if isinstance(value, tuple) else value
        return out

    def origins(self, args: argparse.Namespace) -> dict[str, str]:
        """``{dotted key: what the user typed}``, e.g. ``{"min_side": "--min-side -5"}``."""
        out = {}
        for f, value in self.given(args):
            if isinstance(value, bool):
                out[f.key] = f.flag if value else "--no-" + f.flag[2:]
            elif isinstance(value, (list, tuple)):
                out[f.key] = f"{f.flag} {' '.join(map(str, value))}"
            else:
                out[f.key] = f"{f.flag} {value}"
        return out


def load_args(cls: type, args: argparse.Namespace, flags: ConfigFlags | None = None,
              extra: dict | None = None, extra_origins: dict[str, str] | None = None):
    """Config ``cls`` from defaults <- ``args.config`` <- named flags (and ``extra``) <- ``args.sets``."""
    from core.config import merge

    overrides = flags.overrides(args) if flags else {}
    if extra:
        overrides = merge(overrides, extra)
    origins = {**(flags.origins(args) if flags else {}), **(extra_origins or {})}
    return load_config(cls, getattr(args, "config", None), overrides=overrides, sets=getattr(args, "sets", None),
                       origins=origins)


def config_parser(command: str, description: str, examples: Iterable[tuple[str, str]], cls: type, set_example: str,
                  flags: dict[str, dict] | None = None, rest: bool = True) -> ArgumentParser:
    """``bbst <command>``'s parser for config dataclass ``cls``: ``--config``/``--set``, a flag for each dotted key
    of ``flags`` (its value: keyword arguments of :meth:`ConfigFlags.add`), then with ``rest`` one for every other
    top-level option. :func:`parse_config` reads it."""
    p = make_parser(command, description, examples)
    add_config_file_flags(p, cls.__name__, set_example)
    config_flags = ConfigFlags(cls)
    for key, options in (flags or {}).items():
        config_flags.add(p, key, **options)
    if rest:
        config_flags.add_rest(p)
    p.set_defaults(config_flags=config_flags)
    return p


def subcommand_parsers(command: str, description: str, examples: Iterable[tuple[str, str]], commands: dict[str, str],
                       cls: type | dict[str, type] | None = None,
                       set_example: str = "") -> tuple[ArgumentParser, dict[str, Any]]:
    """``bbst <command> COMMAND`` parser and its subparsers, one per ``{name: help}`` of ``commands``: each gets the
    examples whose third word is its name and ``--debug``; with config dataclass ``cls`` (one for all, or one per
    subcommand name) also ``--config``/``--set`` and an empty :class:`ConfigFlags` (``sub.get_default(
    "config_flags")``) for :func:`parse_config`."""
    examples = list(examples)
    p = make_parser(command, description, examples)
    names = list(commands)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help=f"{', '.join(names[:-1])} or {names[-1]} (required)")
    subs = {}
    for name, help_ in commands.items():
        own = [e for e in examples if e[0].split()[2] == name]
        s = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter,
                           epilog=examples_epilog(own) if own else None)
        s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error instead of one line (default: off)")
        own_cls = cls.get(name) if isinstance(cls, dict) else cls
        if own_cls is not None:
            add_config_file_flags(s, own_cls.__name__, set_example)
            s.set_defaults(config_flags=ConfigFlags(own_cls))
        subs[name] = s
    return p, subs


def parse_config(parser: argparse.ArgumentParser, cls: type | None,
                 argv: list[str] | None) -> tuple[Any, argparse.Namespace]:
    """``(config, args)`` of ``argv``: defaults <- ``--config`` <- named flags <- ``--set``; logging set up at
    ``--log-level``. ``cls`` None: the config class of the (sub)parser that parsed the flags."""
    args = parser.parse_args(argv)
    cfg = load_args(cls or args.config_flags.cls, args, args.config_flags)
    setup_logging(args.log_level)
    return cfg, args


# --------------------------------------------------------------------------------------------------- errors
def debug_requested(argv: Iterable[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


# torch's DataLoader re-raises a worker's exception as the same type with the worker's whole traceback as message
_WORKER_ERROR = re.compile(r"\ACaught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


def user_message(exc: BaseException) -> str:
    """The message of a user error; for one raised in a DataLoader worker, the worker's own message without the
    ~25 lines of worker traceback torch wraps it in (``--debug`` still shows everything)."""
    text = str(exc)
    m = _WORKER_ERROR.match(text)
    if m:
        # the traceback ends with "package.module.Name: message" (the message may span lines)
        last = list(re.finditer(rf"^(?:[\w.]+\.)?{re.escape(m.group(1))}: ", text, re.MULTILINE))
        if last:
            return text[last[-1].end():].rstrip()
    return text


def format_error(command: str, exc: BaseException) -> str:
    """``bbst <command>: error: <message>`` plus ``  hint: <hint>`` on a second line when there is one."""
    text = f"bbst {command}: error: {user_message(exc)}"
    hint = getattr(exc, "hint", None)
    if hint:
        text += f"\n  hint: {hint}"
    return text


def head_start(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """Run ``fn(*args)`` in a background thread while the caller waits on something else (a cluster starting);
    returns a function that waits for it and returns its result or raises its error. The error boundary waits
    for such a thread before a command exits."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"{PREWARM_THREAD_PREFIX}-{getattr(fn, '__name__', 'work')}",
                              daemon=True)
    thread.start()

    def result() -> Any:
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["result"]

    return result


def prewarm(modules: Iterable[str]) -> Callable[[], Any]:
    """Import ``modules`` with a :func:`head_start`; only a head start: the first failing import stops it, and the
    real import reports the problem."""
    import importlib

    def imports() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001
                return

    return head_start(imports)


def _wait_for_prewarm_threads() -> None:
    for t in threading.enumerate():
        if t is not threading.current_thread() and t.name.startswith(PREWARM_THREAD_PREFIX):
            t.join(PREWARM_JOIN_S)


def error_boundary(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a script's ``main(argv=None)``: user errors become one line on stderr and the return value 2.

    With ``--debug`` in argv (or ``BBST_DEBUG=1``) the error is re-raised with its traceback. ``KeyboardInterrupt``
    prints ``interrupted`` and returns 130 (the shell's code for SIGINT).
    """

    def wrap(main: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(main)
        def guarded(argv: list[str] | None = None, *args: Any, **kwargs: Any) -> Any:
            argv_list = list(sys.argv[1:] if argv is None else argv)
            try:
                return main(argv_list, *args, **kwargs)
            except BbstError as exc:
                _wait_for_prewarm_threads()
                if debug_requested(argv_list):
                    raise
                print(format_error(command, exc), file=sys.stderr, flush=True)
                return exc.exit_code
            except KeyboardInterrupt:
                _wait_for_prewarm_threads()
                if debug_requested(argv_list):
                    raise
                print(f"bbst {command}: interrupted", file=sys.stderr, flush=True)
                return 130

        return guarded

    return wrap


def command_usage(commands: dict[str, tuple[str, str]]) -> str:
    """The ``bbst`` usage text: every command of ``{name: (module, help)}`` and the global options."""
    lines = ["usage: bbst [--version] [--debug] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<18} {help_}" for name, (_, help_) in commands.items()]
    lines += ["", "options:",
              "  --version          print the bbst version and exit",
              f"  --debug            show full tracebacks of errors in any command (same as {DEBUG_ENV}=1)",
              "", "`bbst COMMAND --help` shows the options of one command, with examples.",
              "Errors in your input print one line `bbst COMMAND: error: ...` and exit with code 2."]
    return "\n".join(lines)


def dispatch(commands: dict[str, tuple[str, str]], argv: list[str]) -> Any:
    """Run ``bbst COMMAND ARGS...``: import the module ``commands[COMMAND][0]`` names and call its ``main(ARGS)``.

    A leading ``--debug`` is handed on through ``$BBST_DEBUG``; no command, ``-h`` and ``--help`` print the usage,
    ``--version`` the version; an unknown command prints the nearest one and returns 2.
    """
    import importlib

    argv = list(argv)
    if argv and argv[0] == "--debug":  # global form of each command's --debug, handed on through the environment
        previous = os.environ.get(DEBUG_ENV)
        os.environ[DEBUG_ENV] = "1"
        try:
            return dispatch(commands, argv[1:])
        finally:
            if previous is None:
                del os.environ[DEBUG_ENV]
            else:
                os.environ[DEBUG_ENV] = previous
    if not argv or argv[0] in ("-h", "--help"):
        print(command_usage(commands))
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"bbst {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        import difflib

        close = difflib.get_close_matches(name, list(commands), n=1)
        hint = f"\n  hint: did you mean bbst {close[0]}?" if close else ""
        print(f"bbst: error: unknown command {name!r}{hint}\n\n{command_usage(commands)}", file=sys.stderr)
        return 2
    try:
        return importlib.import_module(commands[name][0]).main(rest)
    except BbstError as exc:  # scripts catch their own; this covers errors raised outside a script's main
        if debug_requested(rest):
            raise
        print(format_error(name, exc), file=sys.stderr, flush=True)
        return exc.exit_code


_EXIT_HOOKS: list[Callable[[], None]] = []


def on_exit(hook: Callable[[], None]) -> None:
    """Have :func:`run_exit_hooks` call ``hook`` (once, however often it is registered): what a command started
    that should stop before the process exits (a local Ray), whichever way the command was run."""
    if hook not in _EXIT_HOOKS:
        _EXIT_HOOKS.append(hook)


def run_exit_hooks() -> None:
    while _EXIT_HOOKS:
        _EXIT_HOOKS.pop()()


def exit_with(result: Any) -> None:
    """``sys.exit`` for a ``main`` that returns a summary (success, 0) or an exit code, after the exit hooks."""
    sys.stdout.flush()
    run_exit_hooks()
    sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)


__all__ = ["ArgumentParser", "ConfigError", "ConfigFlags", "HelpFormatter", "add_config_file_flags", "command_usage",
           "config_keys", "config_parser", "debug_requested", "dispatch", "error_boundary", "examples_epilog",
           "exit_with", "format_error", "head_start", "load_args", "make_parser", "on_exit", "parse_config", "prewarm",
           "run_exit_hooks", "setup_logging",
           "subcommand_parsers", "version"]
