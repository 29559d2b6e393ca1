"""Typed configuration: dataclasses filled from YAML files and ``--set key=value`` overrides, strictly.

Every entry point (curation, classifier training, labeling, the trainer) describes its options as nested
dataclasses with a default and a one-line comment per field. This module turns a YAML mapping into those
dataclasses, rejects unknown keys and wrongly typed values with a message naming the file and the key, and
applies command-line overrides on top.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from core.errors import BbstError

T = TypeVar("T")


class ConfigError(BbstError, ValueError):
    """A configuration file or override that does not match the dataclass schema.

    ``key`` is the dotted option the error is about (when known): :func:`load_config` uses it to name what the
    user wrote for that option (``--min-side -5``, ``--set check.min_side=big``, the config file).
    """

    def __init__(self, message: str, hint: str | None = None, key: str | None = None):
        super().__init__(message, hint)
        self.key = key


class ConfigFileNotFound(ConfigError, FileNotFoundError):
    """A ``--config`` / ``--protocol`` / ``--template`` value that is neither a file nor a packaged file's name."""


def check_range(cfg: Any, name: str, low: float | None = None, high: float | None = None) -> None:
    """``__post_init__`` check: raise ``ValueError`` naming field ``name`` and its value when out of [low, high]."""
    value = getattr(cfg, name)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"<= {high}" if low is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bounds}, got {value!r}")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (a small, strict subset of typing) and coerce ints to floats."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        kt, vt = (typing.get_args(tp) + (Any, Any))[:2]
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for section {tp.__name__}, got {value!r}")
        return _from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def check_fields(cls: type, data: dict, where: str) -> dict:
    """``data`` checked against the fields of dataclass ``cls`` without building it: unknown keys and wrongly typed
    values raise :class:`ConfigError` naming ``where.key``; returns the values coerced to the field types.

    For a section that overrides only some fields of a dataclass whose other defaults come from elsewhere (the
    trainer's ``model.kwargs`` over a registered model's own defaults).
    """
    import difflib

    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), list(fields), n=1)
        names = ", ".join(_join(where, str(u)) for u in unknown)
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} {names}; "
                          f"{where or 'the top level'} has: {', '.join(sorted(fields))}",
                          hint=f"did you mean {_join(where, close[0])}?" if close else None,
                          key=_join(where, str(unknown[0])))
    kwargs = {}
    for name, value in data.items():
        try:
            kwargs[name] = _coerce(value, hints[name], _join(where, name))
        except ConfigError as exc:
            if exc.key is None:
                exc.key = _join(where, name)
            raise
    return kwargs


def _from_dict(cls: type[T], data: dict, where: str) -> T:
    import re

    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = check_fields(cls, data, where)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        # a __post_init__ check: blame the first option its message names, else the section
        named = [n for n in fields if re.search(rf"\b{re.escape(n)}\b", str(exc))]
        key = _join(where, named[0]) if named else where
        raise ConfigError(f"{where or cls.__name__}: {exc}", key=key) from exc


def from_dict(cls: type[T], data: dict | None, source: str = "<config>") -> T:
    """Build dataclass ``cls`` from a (nested) mapping; ``source`` names the file in error messages."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return _from_dict(cls, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}", hint=exc.hint, key=exc.key) from None


def yaml_error_line(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: what is wrong and where (PyYAML's own text spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    tag = re.search(r"tag:yaml\.org,2002:(python/\S*?)'", problem)
    if isinstance(exc, yaml.constructor.ConstructorError) and tag:
        return (f"refused: tag !!{tag.group(1)}{where} asks to build a Python object; bbst reads YAML with the "
                "safe loader (plain values only)")
    return f"not valid YAML: {problem}{where}"


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping from a local path or any fsspec URL."""
    import fsspec

    try:
        with fsspec.open(str(path), "r") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {yaml_error_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


# ------------------------------------------------------------------------------------------- packaged files
# Folders of YAML files that ship inside the installed package, by kind: (package, folder inside it). The packages
# are located without importing them (find_spec), so core stays below the packages whose data it finds.
PACKAGED = {
    "config": (("train", "configs"), ("pipelines", "configs")),
    "protocol": (("train", "protocols"),),
    "experiment": (("train", "experiments"),),
}
YAML_SUFFIXES = (".yaml", ".yml")


def packaged_dirs(kind: str) -> list[Path]:
    """The installed folders holding packaged files of ``kind`` (``config`` or ``protocol``)."""
    import importlib.util

    out = []
    for package, folder in PACKAGED[kind]:
        spec = importlib.util.find_spec(package)
        for root in (spec.submodule_search_locations or []) if spec else []:
            if (Path(root) / folder).is_dir():
                out.append(Path(root) / folder)
    return out


def packaged_names(kind: str) -> list[str]:
    """Every name :func:`resolve_file` accepts for ``kind``: ``neat_tiny``, ``rast_ablation/full``, ..."""
    names = set()
    for folder in packaged_dirs(kind):
        for f in folder.rglob("*"):
            if f.suffix in YAML_SUFFIXES and not f.name.endswith(".example" + f.suffix):
                names.add(f.relative_to(folder).with_suffix("").as_posix())
    return sorted(names)


def resolve_file(value: str | Path, kind: str = "config", flag: str = "--config") -> str:
    """The file a ``--config`` / ``--protocol`` / ``--template`` value names: a path (local or fsspec URL) when it
    exists, else the packaged file of that name (``neat_tiny``, ``neat_tiny.yaml``, ``rast_ablation/full``, or a
    path as written inside a checkout, ``train/configs/neat_tiny.yaml``), so documented commands work from any
    folder. Neither: one line naming the value and the packaged names.
    """
    text = str(value)
    if "://" in text or Path(text).expanduser().exists():
        return str(Path(text).expanduser()) if "://" not in text else text
    if not Path(text).is_absolute():
        name = text if text.endswith(YAML_SUFFIXES) else text + ".yaml"
        candidates = [name]
        for package, folder in PACKAGED[kind]:
            prefix = f"{package}/{folder}/"
            if name.startswith(prefix):
                candidates.append(name[len(prefix):])
        for folder in packaged_dirs(kind):
            for candidate in candidates:
                if (folder / candidate).is_file():
                    return str(folder / candidate)
    import difflib

    names = packaged_names(kind)
    close = difflib.get_close_matches(Path(text).with_suffix("").as_posix() if text.endswith(YAML_SUFFIXES)
                                      else text, names, n=1)
    groups = list(dict.fromkeys(n.split("/", 1)[0] + "/*" if "/" in n else n for n in names))
    hint = (f"did you mean {close[0]}? " if close else "") + (f"packaged {kind}s: {', '.join(groups)}" if names
                                                              else "")
    raise ConfigFileNotFound(f"{flag} {text}: not found (no such file, and no packaged {kind} of that name)",
                             hint=hint or None)


BASE_KEY = "base"  # top-level YAML key naming the config file this one starts from


def _base_path(path: str, base: Any) -> str:
    """``base`` relative to the folder of ``path`` (local or fsspec), unless it is absolute or a URL."""
    import posixpath

    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: {BASE_KEY}: expected the path of a config file, got {base!r}", key=BASE_KEY)
    if "://" in base or Path(base).is_absolute():
        return base
    if "://" in str(path):
        return posixpath.join(posixpath.dirname(str(path)), base)
    return str(Path(path).parent / base)


def read_config_file(path: str | Path, _chain: tuple[str, ...] = ()) -> tuple[dict, list[tuple[str, str]]]:
    """A config file's mapping with its ``base:`` chain resolved, and (dotted key, file) for every value given.

    ``base: FILE`` (relative to the file that names it) loads FILE first and deep-merges this file over it, so a
    variant states only what differs from its base: sections merge key by key, a value (lists included) replaces
    the base's. Bases may have bases; a cycle is an error naming the chain.
    """
    path = str(path)
    if path in _chain:
        raise ConfigError(f"{path}: {BASE_KEY}: cycle {' -> '.join(_chain + (path,))}", key=BASE_KEY)
    data = read_yaml(path)
    if BASE_KEY not in data:
        return data, [(k, path) for k in _leaf_keys(data)]
    own = {k: v for k, v in data.items() if k != BASE_KEY}
    base_path = _base_path(path, data[BASE_KEY])
    try:
        base, given = read_config_file(base_path, _chain + (path,))
    except ConfigError as exc:
        if str(exc) == f"{base_path}: config file not found":
            raise ConfigError(f"{path}: {BASE_KEY}: {exc}", key=BASE_KEY) from None
        raise
    return merge(base, own), given + [(k, path) for k in _leaf_keys(own)]


def given_keys(config: str | None, sets: list[str] | None) -> set[str]:
    """The top-level options a ``--config`` file (a name or a path) and ``--set`` pairs give a value, whatever it is."""
    keys = set(read_yaml(resolve_file(config))) if config else set()
    return keys | set(parse_overrides(sets))


def parse_overrides(pairs: list[str] | None) -> dict:
    """Turn ``["download.timeout=5", "subsets.style.min_score=0.9"]`` into a nested dict (values parsed as YAML)."""
    out: dict = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {pair!r}: {part} is both a value and a section")
        node[parts[-1]] = value
    return out


def merge(base: dict, override: dict) -> dict:
    """Deep-merge ``override`` into a copy of ``base``."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(cfg: Any) -> dict:
    """Plain, YAML/JSON-serialisable dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def _leaf_keys(data: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in data.items():
        key = _join(prefix, str(k))
        out.extend(_leaf_keys(v, key) if isinstance(v, dict) and v else [key])
    return out


def _flag_for(key: str) -> str:
    return "--" + key.rsplit(".", 1)[-1].replace("_", "-")


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict | None = None,
                sets: list[str] | None = None, origins: dict[str, str] | None = None) -> T:
    """Config from defaults <- YAML file (and its ``base:`` chain) <- ``overrides`` (dict, e.g. from named CLI flags) <- ``--set`` pairs.

    An error names where the offending value came from: the ``--set`` pair, the flag (``origins`` maps a dotted key
    of ``overrides`` to what the user typed, e.g. ``{"check.min_side": "--min-side -5"}``; otherwise the flag is
    guessed from the key's last part), or the config file.
    """
    path = resolve_file(path) if path else path  # a path, or the name of a packaged config (neat_tiny)
    data, given = read_config_file(path) if path else ({}, [])  # given: (dotted key, origin), in order
    if overrides:
        data = merge(data, overrides)
        given += [(k, (origins or {}).get(k) or _flag_for(k)) for k in _leaf_keys(overrides)]
    for pair in sets or []:
        one = parse_overrides([pair])
        data = merge(data, one)
        given += [(k, f"--set {pair}") for k in _leaf_keys(one)]
    try:
        return _from_dict(cls, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{_blame(exc.key, given, path)}: {exc}", hint=exc.hint, key=exc.key) from None


def _blame(key: str | None, given: list[tuple[str, str]], path: str | Path | None) -> str:
    """Where the value behind a config error came from: the last source that set ``key`` or a key above or below."""
    if key is not None:
        for k, origin in reversed(given):
            if k == key or key.startswith(k + ".") or k.startswith(key + "."):
                return origin
    return str(path) if path else "<defaults>"


def _class_source(cls: type) -> list[str]:
    """Source lines of a top-level class, found by its ``class`` line (``inspect.getsource`` parses the whole
    module, which made every ``--help`` pay for parsing each config's module)."""
    import inspect
    import linecache
    import re

    try:
        path = inspect.getsourcefile(cls)
    except TypeError:
        path = None
    lines = linecache.getlines(path) if path else []
    start = next((i for i, ln in enumerate(lines) if re.match(rf"class {re.escape(cls.__name__)}\b", ln)), None)
    if start is None:
        return inspect.getsource(cls).splitlines()
    out = [lines[start].rstrip("\n")]
    for ln in lines[start + 1:]:
        if ln.strip() and not ln[0].isspace():
            break
        out.append(ln.rstrip("\n"))
    return out


def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from the ``name: type = default  # comment`` lines of a dataclass's source.

    The comments on config dataclasses are their documentation: the example YAML and the ``--help`` of the
    entry scripts are generated from them. A field declared in a base dataclass keeps its comment there; a subclass
    that declares it again (to change its default) may give a new one.
    """
    import re

    comments: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            comments.update(field_comments(base))
    names = {f.name for f in dataclasses.fields(cls)}
    current = None
    for line in _class_source(cls):
        m = re.match(r"^    (\w+): [^#]*?(?:#\s*(.*))?$", line)
        if m and m.group(1) in names:
            current = m.group(1)
            if m.group(2):
                comments[current] = m.group(2).strip()
        elif current and current not in comments and "#" in line:
            comments[current] = line.split("#", 1)[1].strip()  # comment on a continuation line
    return comments
