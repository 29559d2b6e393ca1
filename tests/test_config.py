"""Strict dataclass configs: YAML values, overrides, unknown keys and wrong types."""

from dataclasses import dataclass, field

import pytest

from curate.config import ConfigError, load_config, parse_overrides


@dataclass
class Inner:
    timeout: float = 10.0  # seconds
    retries: int = 2  # attempts after the first
    hosts: list[str] = field(default_factory=list)  # allowed hosts


@dataclass
class Outer:
    name: str = "x"  # run name
    out: str | None = None  # output dir
    inner: Inner = field(default_factory=Inner)  # nested section


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: a\ninner:\n  timeout: 3\n  hosts: [h1]\n")
    cfg = load_config(Outer, p, overrides={"out": "/tmp/o"}, sets=["inner.retries=5", "inner.timeout=1.5"])
    assert cfg.name == "a" and cfg.out == "/tmp/o"
    assert cfg.inner == Inner(timeout=1.5, retries=5, hosts=["h1"])
    assert isinstance(load_config(Outer, p).inner.timeout, float)


def test_unknown_key_names_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("inner:\n  timeuot: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*timeuot"):
        load_config(Outer, p)


def test_wrong_type_and_bad_yaml(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("inner:\n  retries: many\n")
    with pytest.raises(ConfigError, match="retries.*integer"):
        load_config(Outer, p)
    p.write_text("inner: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "missing.yaml")


def test_parse_overrides():
    assert parse_overrides(["a.b=1", "a.c=[1, 2]", "d=hello"]) == {"a": {"b": 1, "c": [1, 2]}, "d": "hello"}
    with pytest.raises(ConfigError):
        parse_overrides(["novalue"])
