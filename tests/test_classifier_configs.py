"""Classifier architecture configs: the paper's layout exists and builds; every shipped config says what it is;
the evaluation report shows the paper's 96 % next to the measured accuracy."""

from __future__ import annotations

import json

import numpy as np
import torch

from classifier.evaluate import PAPER_REFERENCE, write_report
from classifier.factory import create_classifier, get_classifier_config, list_classifiers
from core.weights import BACKBONES


def test_paper_layout_imagenet_vit_content_aladin_style_mlp_head():
    cfg = get_classifier_config("bbst_vitb16_imagenet_aladin")
    assert cfg.mode == "two_trunk"
    assert cfg.content.arch == "vit_base_patch16_224" and cfg.content.kwargs["num_classes"] == 0
    # original ViT, ImageNet: the config names a row of the one backbone table, which says where its file comes from
    assert cfg.content.weights.backbone == "vit_b16_orig"
    assert BACKBONES["vit_b16_orig"].source.hf_repo == "timm/vit_base_patch16_224.orig_in21k_ft_in1k"
    assert cfg.style.type == "aladin" and cfg.style.trunk.arch == "aladin_vit"
    assert cfg.style.trunk.kwargs["out_dim"] == 256 and cfg.head.hidden > 0
    # the same layout at test size builds and runs (random init; real weights come from the local caches)
    tiny = {"content": {"kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}},
            "style": {"trunk": {"kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2,
                                           "num_heads": 2, "out_dim": 16}}},
            "preprocess": {"size": 32}}
    model = create_classifier("bbst_vitb16_imagenet_aladin", **tiny).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.rand(2, 3, 32, 32))
    assert feats.shape == (2, 32 + 16)


def test_every_config_describes_itself_accurately():
    for name in list_classifiers("bbst_*"):
        cfg = get_classifier_config(name)
        desc = cfg.description
        assert desc, name
        claims_paper = desc.startswith("the paper's layout")
        is_paper = (cfg.style.type == "aladin" and cfg.content.arch == "vit_base_patch16_224")
        assert claims_paper == is_paper, name
        if "clip" in cfg.content.arch:
            assert "CLIP" in desc, name


def test_report_states_the_paper_accuracy_next_to_the_measured_one(tmp_path):
    labels = np.array([0, 1, 1, 0, 1, 0])
    probs = np.array([0.1, 0.9, 0.4, 0.2, 0.8, 0.7])
    report = write_report(tmp_path, keys=[f"k{i}" for i in range(6)], labels=labels, probs=probs,
                          probs_uncalibrated=probs, thresholds={"style": 0.6, "content": 0.3},
                          reference=PAPER_REFERENCE)
    md = (tmp_path / "report.md").read_text()
    measured = report["metrics"]["accuracy"]
    assert f"| accuracy | {measured:.4f} | 0.9600 |" in md
    assert "NeAT paper" in md
    assert json.loads((tmp_path / "report.json").read_text())["reference"]["accuracy"]["value"] == 0.96
