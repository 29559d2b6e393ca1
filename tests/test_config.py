"""Strict dataclass configs: YAML values, overrides, unknown keys and wrong types."""

from dataclasses import dataclass, field

import pytest

from core.config import ConfigError, given_keys, load_config, parse_overrides


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


def test_base_key_merges_the_variant_over_its_base(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text("name: root\ninner:\n  timeout: 3\n  retries: 4\n  hosts: [a, b]\n")
    (tmp_path / "sub" / "mid.yaml").write_text("base: ../root.yaml\ninner:\n  retries: 7\n")
    (tmp_path / "sub" / "leaf.yaml").write_text("base: mid.yaml\nname: leaf\ninner:\n  hosts: [c]\n")
    cfg = load_config(Outer, tmp_path / "sub" / "leaf.yaml", sets=["inner.timeout=1"])
    # sections merge key by key through the chain; a list replaces the base's; --set still wins
    assert cfg.name == "leaf" and cfg.inner == Inner(timeout=1.0, retries=7, hosts=["c"])


def test_base_key_errors_name_the_file_that_holds_the_value(tmp_path):
    (tmp_path / "root.yaml").write_text("inner:\n  retries: many\n")
    (tmp_path / "leaf.yaml").write_text("base: root.yaml\nname: leaf\n")
    with pytest.raises(ConfigError, match=r"root\.yaml.*retries"):
        load_config(Outer, tmp_path / "leaf.yaml")
    (tmp_path / "leaf.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"leaf\.yaml: base: .*nowhere\.yaml: config file not found"):
        load_config(Outer, tmp_path / "leaf.yaml")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(Outer, tmp_path / "a.yaml")


def _python_tag_yaml(tmp_path, marker) -> str:
    """A YAML file whose tag would make a full (unsafe) loader call os.system."""
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    return str(path)


def test_python_object_tag_is_refused_in_one_line(tmp_path):
    marker = tmp_path / "ran"
    path = _python_tag_yaml(tmp_path, marker)
    with pytest.raises(ConfigError) as exc:
        load_config(Outer, path)
    text = str(exc.value)
    assert "\n" not in text and text.startswith(f"{path}: refused: tag !!python/object/apply:os.system (line 1")
    assert not marker.exists()
    # a --set value with the tag is only ever a string
    assert load_config(Outer, None, sets=[f"name=!!python/object/apply:os.system ['touch {marker}']"]).name.startswith(
        "!!python")
    assert not marker.exists()


@pytest.mark.parametrize("argv", [["build", "--config", "{y}", "--out", "{d}/o"],
                                  ["train", "--config", "{y}"],
                                  ["stylize", "--config", "{y}"],
                                  ["evaluate", "--protocol", "{y}", "--outputs", "x={d}", "--random-metrics", "--out", "{d}/o"]])
def test_python_object_tag_through_commands(tmp_path, argv, capsys):
    from pipelines import cli

    marker = tmp_path / "ran"
    path = _python_tag_yaml(tmp_path, marker)
    argv = [a.format(y=path, d=tmp_path) for a in argv]
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bbst {argv[0]}: error: {path}: refused: tag"), lines
    assert not marker.exists()


def test_given_keys_are_the_top_level_options_a_file_and_sets_name(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("out: somewhere\ncheck:\n  min_side: 5\n")
    assert given_keys(str(path), ["download.timeout=3", "urls=x.csv"]) == {"out", "check", "download", "urls"}
    assert given_keys(None, []) == set()
