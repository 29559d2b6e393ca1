"""Configs, RAST ablation rows and protocol templates ship inside the package and resolve by name from any folder."""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

import pytest

from core.config import ConfigFileNotFound, load_config, packaged_dirs, packaged_names, resolve_file

REPO = Path(__file__).resolve().parents[1]


def test_package_data_ships_every_yaml_file_of_the_packaged_folders():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package, folder in (("train", "configs"), ("train", "protocols"), ("pipelines", "configs")):
        for f in (REPO / package / folder).rglob("*.y*ml"):
            rel = f.relative_to(REPO / package).as_posix()
            assert any(fnmatch(rel, pattern) for pattern in data[package]), f"{package}/{rel} is not package data"


def test_names_resolve_to_the_packaged_files_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkout here
    configs = packaged_dirs("config")[0]
    assert resolve_file("neat_tiny") == str(configs / "neat_tiny.yaml")
    assert resolve_file("neat_tiny.yaml") == str(configs / "neat_tiny.yaml")
    assert resolve_file("train/configs/neat_tiny.yaml") == str(configs / "neat_tiny.yaml")  # as written in a checkout
    assert resolve_file("rast_ablation/full") == str(configs / "rast_ablation" / "full.yaml")
    assert resolve_file("neat_paper", "protocol", "--protocol") == str(packaged_dirs("protocol")[0] / "neat_paper.yaml")
    assert {"neat_tiny", "neat_1024", "rast_ablation/full", "balanced_loss/adain_balanced"} <= set(
        packaged_names("config"))
    # a path wins over a packaged name
    (tmp_path / "neat_tiny.yaml").write_text("schedule:\n  max_steps: 3\n")
    assert resolve_file("neat_tiny.yaml") == "neat_tiny.yaml"


def test_an_unknown_name_is_one_line_listing_the_packaged_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigFileNotFound, match=r"^--config neat_tiyn: not found \(no such file, and no packaged config") as exc:
        resolve_file("neat_tiyn")
    assert exc.value.hint.startswith("did you mean neat_tiny? packaged configs: ")
    assert "rast_ablation/*" in exc.value.hint and "rast_ablation/full" not in exc.value.hint
    with pytest.raises(ConfigFileNotFound, match=r"^--template nope: not found \(no such file, and no packaged protocol"):
        resolve_file("nope", "protocol", "--template")


def test_every_packaged_training_config_loads_by_name(tmp_path, monkeypatch):
    from train.config import TrainConfig

    monkeypatch.chdir(tmp_path)
    names = [n for n in packaged_names("config") if not n.startswith("build_bbst")]
    assert len(names) >= 10
    for name in names:
        cfg = load_config(TrainConfig, name)  # base: chains resolve next to the packaged file
        assert cfg.model.name, name
