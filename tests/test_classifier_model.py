"""Classifier model: registry, shapes of both modes, timm-style forward contract, weights, ALADIN-ViT loading."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from classifier.aladin import AladinCheckpointError, AladinStyleBranch, remap_aladin_state_dict
from classifier.factory import create_classifier, get_classifier_config, list_classifiers
from classifier.transforms import ImageDecodeError, ImageTransform, PreprocessConfig
from core.config import ConfigError
from core.synthetic import encode, make_image
from core.weights import WeightsNotFoundError, WeightsSource, find_weights

torch.set_num_threads(1)
TEST_MODELS = ["test_vit_shared", "test_vit_2trunk", "test_vit_aladin"]


def test_registry_lists_real_and_test_models_and_rejects_unknown_names():
    names = list_classifiers()
    assert set(TEST_MODELS) <= set(names)
    assert {"bbst_vitb16_clip", "bbst_vitb16_2trunk", "bbst_vitb16_aladin"} <= set(names)
    assert list_classifiers("test_*") == sorted(TEST_MODELS)
    with pytest.raises(ValueError, match="unknown classifier model 'nope'.*test_vit_shared"):
        create_classifier("nope")
    with pytest.raises(ConfigError, match="unknown key"):
        create_classifier("test_vit_shared", head={"widht": 3})
    real = get_classifier_config("bbst_vitb16_clip")
    assert real.content.arch == "vit_base_patch16_clip_224" and real.preprocess.size == 224 and real.mode == "shared"


@pytest.mark.parametrize("name", TEST_MODELS)
def test_forward_contract_and_shapes(name):
    torch.manual_seed(0)
    model = create_classifier(name).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (3, model.num_features) == (3, model.content_dim + model.style_dim)
        assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (3, model.cfg.head.hidden)
        logits = model(x)
        assert logits.shape == (3,)
        torch.testing.assert_close(logits, model.forward_head(feats))
    # the content part is the trunk's pooled embedding, L2-normalised
    assert torch.allclose(feats[:, :model.content_dim].norm(dim=-1), torch.ones(3), atol=1e-5)


def _count_block_calls(trunk) -> list[int]:
    calls = [0]
    vit = trunk.vit if hasattr(trunk, "vit") else trunk
    for block in vit.blocks:
        block.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_shared_trunk_runs_one_backbone_pass_and_two_trunk_runs_two():
    shared = create_classifier("test_vit_shared").eval()
    calls = _count_block_calls(shared.trunk)
    with torch.no_grad():
        shared(torch.randn(2, 3, 64, 64))
    assert shared.style_trunk is None and calls[0] == len(shared.trunk.blocks)  # each block once

    two = create_classifier("test_vit_2trunk").eval()
    content_calls, style_calls = _count_block_calls(two.trunk), _count_block_calls(two.style_trunk)
    with torch.no_grad():
        two(torch.randn(2, 3, 64, 64))
    assert content_calls[0] == len(two.trunk.blocks) and style_calls[0] == len(two.style_trunk.blocks)


def test_style_embedding_is_the_projection_of_all_block_token_statistics():
    model = create_classifier("test_vit_shared").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        tokens = []
        h = model.trunk.patch_embed(x)
        h = model.trunk._pos_embed(h)
        h = model.trunk.norm_pre(h)
        for block in model.trunk.blocks:
            h = block(h)
            tokens.append(h[:, model.trunk.num_prefix_tokens:])
        stats = []
        for t in tokens:  # each block: parameter-free LayerNorm, then mean and std over the patch tokens
            t = F.layer_norm(t, (t.shape[-1],))
            stats += [t.mean(1), t.std(1)]
        expected = torch.cat(stats, -1) @ model.style.proj.weight.T
    assert model.style.in_dim == len(model.trunk.blocks) * 2 * model.trunk.embed_dim
    torch.testing.assert_close(feats[:, model.content_dim:], expected, rtol=1e-4, atol=1e-5)


def test_style_statistics_react_to_texture_not_only_to_colour():
    model = create_classifier("test_vit_shared").eval()
    t = ImageTransform(model.cfg.preprocess)
    flat = Image.new("RGB", (64, 64), (120, 60, 200))
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(np.clip(np.asarray(flat, np.float32) + rng.normal(0, 40, (64, 64, 3)), 0, 255).astype(np.uint8))
    with torch.no_grad():
        f = model.forward_features(torch.stack([t(flat), t(noisy)]))
    style = f[:, model.content_dim:]
    assert (style[0] - style[1]).norm() > 0.1 * style[0].norm()


# ------------------------------------------------------------------------------------------ weights
def test_missing_weight_file_is_a_clear_error(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "vit.safetensors"
    with pytest.raises(WeightsNotFoundError, match=str(missing)):
        create_classifier("test_vit_shared", weights=str(missing))
    # "cache": every standard cache folder is named in the error, nothing is downloaded
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.delenv("BBST_WEIGHTS_DIR", raising=False)
    src = WeightsSource(hf_repo="timm/vit_base_patch16_clip_224.openai", hub_filenames=["aladinVIT_bamfg_64.47.pt"],
                        open_clip_filenames=["ViT-B-16.pt"], note="Get it from the release page.")
    with pytest.raises(WeightsNotFoundError) as err:
        find_weights("cache", src, "style trunk")
    msg = str(err.value)
    for expected in (str(tmp_path / "torch" / "hub" / "checkpoints" / "aladinVIT_bamfg_64.47.pt"),
                     str(tmp_path / "hf" / "hub" / "models--timm--vit_base_patch16_clip_224.openai"),
                     str(tmp_path / "xdg" / "clip" / "ViT-B-16.pt"), "Get it from the release page", "style trunk"):
        assert expected in msg
    # a file in the HF cache layout is found
    snap = tmp_path / "hf" / "hub" / "models--timm--vit_base_patch16_clip_224.openai" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "open_clip_pytorch_model.bin").write_bytes(b"x")
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc123")
    assert find_weights("cache", src, "content") == snap / "open_clip_pytorch_model.bin"
    assert find_weights(None, src, "content") is None


def test_trunk_loads_a_local_timm_file(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    donor = create_classifier("test_vit_shared")
    path = tmp_path / "trunk.safetensors"
    save_file({k: v.contiguous() for k, v in donor.trunk.state_dict().items()}, str(path))
    torch.manual_seed(2)
    model = create_classifier("test_vit_shared", weights=str(path))
    for k, v in donor.trunk.state_dict().items():
        torch.testing.assert_close(model.trunk.state_dict()[k], v)


def test_trunk_loads_an_open_clip_checkpoint_and_matches_encode_image(tmp_path):
    """An open_clip-format file (``visual.*`` keys) goes through timm's CLIP converter."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(3)
    clip = CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=64),
                text_cfg=CLIPTextCfg(context_length=8, vocab_size=50, width=16, heads=1, layers=1)).eval()
    path = tmp_path / "open_clip_tiny.bin"
    torch.save(clip.state_dict(), path)
    model = create_classifier("test_vit_shared", weights=str(path),
                         content={"kwargs": {"num_classes": 16}}, normalize_content=False).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.content_features(x), clip.encode_image(x), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ ALADIN-ViT
def _fabricated_aladin_state_dict(dim=32, depth=2, patch=8, img=64, mid=24, out=16, seed=0):
    """Random tensors in the released ALADIN-ViT key layout (``AViT.enc_style`` of DanRuta/ALADIN)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.05):
        return torch.randn(*shape, generator=g) * s

    n = (img // patch) ** 2 + 1
    p = "enc_style."
    sd = {p + "transformer.embeddings.patch_embeddings.weight": r(dim, 3, patch, patch),
          p + "transformer.embeddings.patch_embeddings.bias": r(dim),
          p + "transformer.embeddings.position_embeddings": r(1, n, dim),
          p + "transformer.embeddings.cls_token": r(1, 1, dim),
          p + "transformer.encoder.encoder_norm.weight": 1 + r(dim), p + "transformer.encoder.encoder_norm.bias": r(dim),
          p + "proj_head.fc1.weight": r(mid, dim, s=0.2), p + "proj_head.fc1.bias": r(mid),
          p + "proj_head.fc2.weight": r(out, mid, s=0.2), p + "proj_head.fc2.bias": r(out)}
    for i in range(depth):
        q = f"{p}transformer.encoder.layer.{i}."
        for norm in ("attention_norm", "ffn_norm"):
            sd[q + norm + ".weight"], sd[q + norm + ".bias"] = 1 + r(dim), r(dim)
        for lin in ("query", "key", "value", "out"):
            sd[q + f"attn.{lin}.weight"], sd[q + f"attn.{lin}.bias"] = r(dim, dim, s=0.2), r(dim)
        sd[q + "ffn.fc1.weight"], sd[q + "ffn.fc1.bias"] = r(4 * dim, dim, s=0.2), r(4 * dim)
        sd[q + "ffn.fc2.weight"], sd[q + "ffn.fc2.bias"] = r(dim, 4 * dim, s=0.2), r(dim)
    return sd


def _reference_aladin(sd, x, heads):
    """Independent re-statement of the released forward (ViT-pytorch layout) on the raw state dict."""
    sd = {k.removeprefix("enc_style."): v for k, v in sd.items()}
    e = "transformer.embeddings."
    h = F.conv2d(x, sd[e + "patch_embeddings.weight"], sd[e + "patch_embeddings.bias"],
                 stride=sd[e + "patch_embeddings.weight"].shape[-1])
    h = h.flatten(2).transpose(1, 2)
    h = torch.cat([sd[e + "cls_token"].expand(len(x), -1, -1), h], 1) + sd[e + "position_embeddings"]
    dim = h.shape[-1]
    i = 0
    while f"transformer.encoder.layer.{i}.attn.query.weight" in sd:
        q = f"transformer.encoder.layer.{i}."
        y = F.layer_norm(h, (dim,), sd[q + "attention_norm.weight"], sd[q + "attention_norm.bias"], eps=1e-6)

        def split(t):
            return t.view(len(x), -1, heads, dim // heads).permute(0, 2, 1, 3)

        qq, kk, vv = (split(F.linear(y, sd[q + f"attn.{n}.weight"], sd[q + f"attn.{n}.bias"]))
                      for n in ("query", "key", "value"))
        att = torch.softmax(qq @ kk.transpose(-1, -2) / math.sqrt(dim // heads), -1)
        ctx = (att @ vv).permute(0, 2, 1, 3).reshape(len(x), -1, dim)
        h = h + F.linear(ctx, sd[q + "attn.out.weight"], sd[q + "attn.out.bias"])
        y = F.layer_norm(h, (dim,), sd[q + "ffn_norm.weight"], sd[q + "ffn_norm.bias"], eps=1e-6)
        y = F.linear(F.gelu(F.linear(y, sd[q + "ffn.fc1.weight"], sd[q + "ffn.fc1.bias"])),
                     sd[q + "ffn.fc2.weight"], sd[q + "ffn.fc2.bias"])
        h = h + y
        i += 1
    cls = F.layer_norm(h, (dim,), sd["transformer.encoder.encoder_norm.weight"],
                       sd["transformer.encoder.encoder_norm.bias"], eps=1e-6)[:, 0]
    code = F.linear(F.leaky_relu(cls), sd["proj_head.fc1.weight"], sd["proj_head.fc1.bias"])
    code = F.linear(F.leaky_relu(code), sd["proj_head.fc2.weight"], sd["proj_head.fc2.bias"])
    return F.normalize(code, dim=-1)


def test_released_aladin_checkpoint_layout_loads_as_style_branch(tmp_path):
    sd = _fabricated_aladin_state_dict()
    path = tmp_path / "aladinVIT_tiny.pt"
    torch.save(sd, path)
    branch = AladinStyleBranch.from_state_dict(torch.load(path, weights_only=True), str(path), num_heads=2).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(branch(x), _reference_aladin(sd, x, heads=2), rtol=1e-4, atol=1e-5)
    # through the factory: the style trunk of a two-trunk model, fed the model's own normalization
    model = create_classifier("test_vit_aladin", style_weights=str(path)).eval()
    img = make_image(1, 64, 64, seed=0)
    t = ImageTransform(model.cfg.preprocess)
    xm = t(img)[None]
    x_aladin = (torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1)[None] - 0.5) / 0.5
    with torch.no_grad():
        style = model.forward_features(xm)[:, model.content_dim:]
        torch.testing.assert_close(style, _reference_aladin(sd, x_aladin, heads=2), rtol=1e-4, atol=1e-4)


def test_not_an_aladin_checkpoint_is_rejected(tmp_path):
    sd = _fabricated_aladin_state_dict()
    del sd["enc_style.proj_head.fc2.weight"]
    with pytest.raises(AladinCheckpointError, match="proj_head.fc2.weight"):
        remap_aladin_state_dict(sd, "x.pt")
    sd = _fabricated_aladin_state_dict()
    sd["enc_style.something.else"] = torch.zeros(1)
    with pytest.raises(AladinCheckpointError, match="unexpected keys"):
        remap_aladin_state_dict(sd, "x.pt")


# ------------------------------------------------------------------------------------------ transforms
def test_one_transform_decodes_resizes_and_reports_bad_bytes():
    t = ImageTransform(PreprocessConfig(size=64))
    big = make_image(0, 640, 480, seed=1)
    jpeg = encode(big)
    x = t(jpeg)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    # JPEG draft decoding gives (almost) the same pixels as a full decode followed by the same resize
    torch.testing.assert_close(x, t(big), atol=0.35, rtol=0)
    # transparency is composited onto white
    rgba = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    white = t.to_uint8(buf.getvalue())
    assert int(white.min()) == 255
    batch, errors = t.batch([jpeg, b"not an image", None], num_threads=2)
    assert batch.shape == (1, 3, 64, 64) and errors[0] is None
    assert "cannot decode image" in errors[1] and errors[2] == "no image bytes"
    with pytest.raises(ImageDecodeError):
        t(b"\xff\xd8\xff garbage")
    with pytest.raises(ValueError, match="interpolation"):
        PreprocessConfig(interpolation="cubic-ish")
