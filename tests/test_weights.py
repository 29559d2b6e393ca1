"""core/weights.py: one table of known backbones and one lookup (environment variable, caches, explicit path)."""

from __future__ import annotations

import pytest

from core.errors import MissingInputError
from core.weights import BACKBONES, WeightsNotFoundError, WeightsSource, find_weights, locate, weights_table


@pytest.fixture()
def empty_caches(tmp_path, monkeypatch):
    for var in ("XDG_CACHE_HOME", "TORCH_HOME", "HF_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "BBST_WEIGHTS_DIR", *(b.source.env for b in BACKBONES.values()
                                                                                if b.source.env)):
        monkeypatch.delenv(var, raising=False)
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_home" / "hub"))
    return tmp_path


def test_table_rows_name_their_files_env_and_where_to_fetch():
    assert {"vgg19", "vgg16", "lpips_alex", "lpips_vgg", "inception_v3", "clip_vitb16", "aladin_vit"} <= set(BACKBONES)
    envs = {b.source.env for b in BACKBONES.values()} - {None}
    assert envs == {"BBST_VGG19_WEIGHTS", "BBST_VGG16_WEIGHTS", "BBST_LPIPS_BACKBONE", "BBST_INCEPTION_WEIGHTS"}
    for name, row in BACKBONES.items():
        assert row.name == name and row.files and row.fetch and row.used_by and row.title


def test_search_order_env_then_bbst_dir_then_torch_hub(empty_caches, monkeypatch):
    tmp = empty_caches
    found, looked = locate("vgg19")
    assert found is None and [p.name for p in looked] == ["vgg19-dcbb9e9d.pth", "vgg_normalised.pth"] * 2
    hub = tmp / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "vgg_normalised.pth").write_bytes(b"x")
    assert find_weights("auto", "vgg19") == hub / "vgg_normalised.pth"
    bbst = tmp / "mine"
    bbst.mkdir()
    (bbst / "vgg19-dcbb9e9d.pth").write_bytes(b"x")
    monkeypatch.setenv("BBST_WEIGHTS_DIR", str(bbst))
    assert find_weights("cache", "vgg19") == bbst / "vgg19-dcbb9e9d.pth"  # "cache" and "auto" are one search
    own = tmp / "elsewhere.pth"
    own.write_bytes(b"x")
    monkeypatch.setenv("BBST_VGG19_WEIGHTS", str(own))
    assert find_weights("auto", "vgg19") == own
    assert find_weights(None, "vgg19") is None and find_weights("", "vgg19") is None  # random init


def test_not_found_lists_every_place_and_where_to_fetch(empty_caches, monkeypatch):
    monkeypatch.setenv("BBST_LPIPS_BACKBONE", str(empty_caches / "gone.pth"))
    with pytest.raises(WeightsNotFoundError) as err:
        find_weights("auto", "lpips_alex")
    msg = str(err.value)
    assert isinstance(err.value, MissingInputError) and msg.startswith("LPIPS alex backbone weights not found")
    _, looked = locate("lpips_alex")
    assert all(str(p) in msg for p in looked) and str(empty_caches / "gone.pth") in msg
    assert "alexnet-owt-7be5be79.pth" in msg and "download.pytorch.org" in msg and "$BBST_WEIGHTS_DIR" in msg
    with pytest.raises(WeightsNotFoundError, match=r"VGG-16 weights not found: .*nope\.pth does not exist"):
        find_weights(empty_caches / "nope.pth", "vgg16")


def test_a_source_names_a_backbone_and_unknown_names_fail_early(empty_caches):
    assert locate(WeightsSource(backbone="aladin_vit"))[1] == locate("aladin_vit")[1]
    with pytest.raises(ValueError, match="unknown backbone 'clip_vit_huge'"):
        WeightsSource(backbone="clip_vit_huge")


def test_every_classifier_config_names_a_known_backbone():
    from classifier.factory import get_classifier_config, list_classifiers

    for name in list_classifiers():
        cfg = get_classifier_config(name)
        for trunk in (cfg.content, cfg.style.trunk):
            if trunk is not None and trunk.weights.backbone is not None:
                assert trunk.weights.backbone in BACKBONES


def test_weights_table_reports_found_files(empty_caches, monkeypatch):
    bbst = empty_caches / "w"
    bbst.mkdir()
    (bbst / "aladinVIT_bamfg_64.47.pt").write_bytes(b"x")
    monkeypatch.setenv("BBST_WEIGHTS_DIR", str(bbst))
    rows = {r["name"]: r for r in weights_table()}
    assert rows["aladin_vit"]["found"] == str(bbst / "aladinVIT_bamfg_64.47.pt")
    assert rows["vgg19"]["found"] is None and rows["vgg19"]["env"] == "BBST_VGG19_WEIGHTS" and rows["vgg19"]["looked"]
