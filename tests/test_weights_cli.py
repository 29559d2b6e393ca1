"""`bbst weights`: every backbone, where bbst looks, which are present, the command that fetches each; and every
weights-not-found error ends by naming it (plus --random-metrics where the metrics can run without)."""

from __future__ import annotations

import json

import pytest

from core.weights import BACKBONES, WeightsNotFoundError, find_weights
from pipelines import cli


@pytest.fixture()
def empty_caches(tmp_path, monkeypatch):
    for var in ("XDG_CACHE_HOME", "TORCH_HOME", "HF_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "BBST_WEIGHTS_DIR",
                *(b.source.env for b in BACKBONES.values() if b.source.env)):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_lists_every_backbone_missing_with_the_command_that_fetches_it(empty_caches, capsys, monkeypatch):
    monkeypatch.setattr("core.weights.cache_dirs", _dirs_under(empty_caches))
    table = cli.main(["weights"])
    out = capsys.readouterr().out
    assert [r["name"] for r in table] == list(BACKBONES)
    assert out.startswith(f"0 of {len(BACKBONES)} backbones present. bbst never downloads weights")
    for name in ("vgg19", "vgg16", "lpips_alex", "inception_v3", "clip_vitb16"):
        assert f"[{name}]: MISSING" in out
    bbst_dir = _dirs_under(empty_caches)()["bbst"]
    assert (f"fetch:   mkdir -p {bbst_dir} && curl -L -o {bbst_dir}/vgg19-dcbb9e9d.pth "
            "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth") in out
    assert "fetch:   huggingface-cli download timm/vit_base_patch16_clip_224.openai open_clip_pytorch_model.bin" in out
    assert "--random-metrics" in out
    # what each feature needs: the classifier trunks, VGG-16/19, Inception for SIFID, LPIPS AlexNet
    for title in ("VGG-19", "VGG-16", "InceptionV3 (SIFID)", "LPIPS alex backbone", "OpenAI CLIP ViT-B/16"):
        assert title in out


def test_a_present_file_is_shown_where_it_was_found(empty_caches, capsys, monkeypatch):
    dirs = _dirs_under(empty_caches)
    monkeypatch.setattr("core.weights.cache_dirs", dirs)
    weights = dirs()["bbst"]
    weights.mkdir(parents=True)
    (weights / "vgg19-dcbb9e9d.pth").write_bytes(b"x")
    table = json.loads(_run_json(capsys))
    vgg = next(r for r in table if r["name"] == "vgg19")
    assert vgg["found"] == str(weights / "vgg19-dcbb9e9d.pth") and vgg["command"].startswith("mkdir -p ")
    assert all(r["found"] is None for r in table if r["name"] != "vgg19")
    missing = cli.main(["weights", "--missing"])
    assert "vgg19" not in [r["name"] for r in missing] and len(missing) == len(BACKBONES) - 1


def test_every_weights_not_found_error_ends_with_bbst_weights(empty_caches, monkeypatch):
    monkeypatch.setattr("core.weights.cache_dirs", _dirs_under(empty_caches))
    for name in BACKBONES:
        with pytest.raises(WeightsNotFoundError) as exc:
            find_weights("auto", name)
        assert exc.value.hint.startswith("`bbst weights` lists every backbone"), name
    with pytest.raises(WeightsNotFoundError) as exc:
        find_weights(empty_caches / "nope.pth", "vgg16")
    assert exc.value.hint.startswith("`bbst weights`")


def test_evaluation_without_metric_weights_names_bbst_weights_and_random_metrics(empty_caches, monkeypatch, capsys):
    from train.evaluation import write_tiny_protocol

    monkeypatch.setattr("core.weights.cache_dirs", _dirs_under(empty_caches))
    proto = write_tiny_protocol(empty_caches / "proto")
    assert cli.main(["evaluate", "--protocol", str(proto), "--outputs", f"copy={empty_caches}",
                     "--out", str(empty_caches / "eval")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("bbst evaluate: error: ") and "weights not found" in err[0]
    assert err[-1] == ("  hint: `bbst weights` lists every backbone, where bbst looks for it and the command that "
                       "fetches it; or run without them: --random-metrics (random backbones, meaningless numbers)")


def _dirs_under(root):
    def dirs():
        return {"bbst": root / "bbst", "torch_hub": root / "hub" / "checkpoints", "hf_hub": root / "hf",
                "open_clip": root / "open_clip", "clip": root / "clip"}
    return dirs


def _run_json(capsys) -> str:
    capsys.readouterr()
    cli.main(["weights", "--json"])
    return capsys.readouterr().out
