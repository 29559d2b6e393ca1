"""NeAT model: registry, VGG encoder, attention, prior ops, discriminators, training steps (tiny, CPU)."""

from __future__ import annotations

import pytest
import torch

from train.models import create_model, list_models
from train.models.layers import (
    PAMABlock,
    attention,
    bilateral_filter,
    cap_tokens,
    gaussian_blur,
    pad_to_multiple,
    recolour,
    sobel_magnitude,
)
from train.models.neat import (
    DeltaDecoder,
    MultiScaleDiscriminator,
    PatchCooccurrenceDiscriminator,
    sobel_split,
)
from train.models.vgg import FEATURE_NAMES, VGG19Encoder, _convert_state_dict, feature_channels


@pytest.fixture(autouse=True)
def _threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: thread hand-off costs more than it saves on a shared machine
    torch.manual_seed(0)
    yield
    torch.set_num_threads(prev)


def _batch(b=2, size=48):
    g = torch.Generator().manual_seed(1)
    return {k: torch.rand(b, 3, size, size, generator=g) for k in ("content", "style", "style2")}


def test_registry_lists_and_rejects_unknown():
    assert {"neat", "neat_tiny", "neat_balanced", "neat_balanced_tiny"} <= set(list_models())
    with pytest.raises(ValueError, match="known models: .*neat"):
        create_model("no_such_model")
    with pytest.raises(TypeError, match="unknown NeAT config keys"):
        create_model("neat_tiny", not_a_field=1)


def test_vgg_taps_shapes_and_missing_weights(tmp_path, monkeypatch):
    vgg = VGG19Encoder(weights=None, width=1 / 16)
    feats = vgg(torch.rand(1, 3, 64, 48), FEATURE_NAMES)
    ch = feature_channels(1 / 16)
    assert feats["relu1_1"].shape == (1, ch["relu1_1"], 64, 48)
    assert feats["relu4_1"].shape == (1, ch["relu4_1"], 8, 6)
    assert feats["relu5_1"].shape == (1, ch["relu5_1"], 4, 3)
    assert not any(p.requires_grad for p in vgg.parameters())
    monkeypatch.setenv("BBST_VGG19_WEIGHTS", str(tmp_path / "nope.pth"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match=r"nope\.pth[\s\S]*vgg19-dcbb9e9d\.pth[\s\S]*vgg_normalised\.pth"):
        VGG19Encoder(weights="auto")


def test_vgg_loads_torchvision_and_normalised_layouts(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["E"])  # torchvision's VGG-19 feature stack (the classifier is not needed)
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    enc = VGG19Encoder(weights=str(path))
    x = torch.rand(1, 3, 32, 32)
    ref = features[:21]((x - enc.mean) / enc.std)  # features[20] = relu4_1
    assert torch.allclose(enc(x, ("relu4_1",))["relu4_1"], ref, atol=1e-5)
    # AdaIN/PAMA normalised layout: 1x1 input conv then reflection-padded convs, keys "0.weight", "2.weight"...
    norm = {"0.weight": torch.randn(3, 3, 1, 1), "0.bias": torch.randn(3)}
    idx = 2
    for w in enc.convs.values():
        norm[f"{idx}.weight"], norm[f"{idx}.bias"] = torch.randn_like(w.weight), torch.randn_like(w.bias)
        idx += 3
    fmt, mapped = _convert_state_dict(norm)
    assert fmt == "normalised" and torch.equal(mapped["convs.conv1_1.weight"], norm["2.weight"])


def test_chunked_and_sdpa_attention_equal_full():
    q, k, v = torch.randn(2, 300, 16), torch.randn(2, 70, 16), torch.randn(2, 70, 8)
    full = attention(q, k, v, mode="full")
    assert torch.allclose(attention(q, k, v, mode="chunked", chunk_size=64), full, atol=1e-5)
    assert torch.allclose(attention(q, k, v, mode="sdpa", chunk_size=64), full, atol=1e-5)
    block = PAMABlock(16)
    fc, fs = torch.randn(1, 16, 12, 10), torch.randn(1, 16, 7, 9)
    assert torch.allclose(block(fc, fs, mode="chunked", chunk_size=17), block(fc, fs, mode="full"), atol=1e-5)


def test_cap_tokens_keeps_aspect_under_cap():
    f = torch.randn(1, 4, 80, 40)
    capped = cap_tokens(f, 200)
    assert capped.shape[-2] * capped.shape[-1] <= 200 and capped.shape[-2] == 2 * capped.shape[-1]
    assert cap_tokens(f, 10_000) is f


def test_prior_ops():
    img = torch.rand(2, 3, 40, 30)
    assert gaussian_blur(img, 7).shape == img.shape
    flat = torch.full((1, 3, 20, 20), 0.3)
    assert torch.allclose(bilateral_filter(flat, 25, 100 / 255, 100.0), flat, atol=1e-6)
    # edge-preserving: a step edge survives the bilateral filter far better than the Gaussian
    step = torch.zeros(1, 3, 20, 20)
    step[..., 10:] = 1.0
    bil = bilateral_filter(step, 9, 0.1, 100.0)
    assert (bil - step).abs().max() < 0.05 and (gaussian_blur(step, 9) - step).abs().max() > 0.2
    # the OpenCV (CPU) path and the torch loop (GPU / autograd) are the same filter
    noisy = torch.rand(1, 3, 30, 40)
    assert torch.allclose(bilateral_filter(noisy, 9, 0.3, 5.0),
                          bilateral_filter(noisy.requires_grad_(), 9, 0.3, 5.0).detach(), atol=1e-4)
    target = torch.rand(2, 3, 25, 35) * torch.tensor([0.2, 1.0, 0.5]).view(1, 3, 1, 1)
    out = recolour(img, target)

    def stats(x):
        f = x.flatten(2)
        c = f - f.mean(-1, keepdim=True)
        return f.mean(-1), c @ c.transpose(1, 2) / f.shape[-1]

    (m_o, c_o), (m_t, c_t) = stats(out), stats(target)
    assert torch.allclose(m_o, m_t, atol=1e-4) and torch.allclose(c_o, c_t, atol=2e-4)


def test_sobel_split_sorts_patches_by_edge_intensity():
    guide = torch.zeros(1, 3, 64, 64)
    guide[..., :, 32:] = (torch.arange(32) % 2).float()  # right half: stripes, left half: flat
    simple, complex_ = sobel_split(guide, guide, num_per_tier=4, min_scale=0.2, max_scale=0.3, patch_size=8)
    assert simple.shape == complex_.shape == (1, 4, 3, 8, 8)
    e_simple = sobel_magnitude(simple.flatten(0, 1)).mean()
    e_complex = sobel_magnitude(complex_.flatten(0, 1)).mean()
    assert e_complex > e_simple


def test_decoder_and_discriminator_shapes():
    dec = DeltaDecoder(32, width=1 / 16)
    assert dec(torch.randn(2, 32, 6, 5)).shape == (2, 3, 48, 40)
    d = MultiScaleDiscriminator(width=8, scales=3)
    outs = d(torch.rand(2, 3, 128, 128))
    assert len(outs) == 3 and outs[0].shape[:2] == (2, 1)
    assert len(d(torch.rand(1, 3, 64, 64))) == 2  # scales too small for the conv stack are skipped
    pd = PatchCooccurrenceDiscriminator(patch_size=16, width=8, max_width=32, mlp_width=64)
    q, r = pd.encoder(torch.rand(5, 3, 16, 16)), pd.encoder(torch.rand(5, 3, 16, 16))
    assert pd(q, r).shape == (5,)


def test_generator_and_discriminator_steps_finite_and_differentiable():
    model = create_model("neat_tiny")
    loss, logs, images = model.generator_step(_batch())
    expected = {"style", "content", "identity_pixel", "identity_feature", "adv", "patch_simple", "patch_complex",
                "contrast_style", "contrast_content", "style_nce"}
    assert expected <= set(logs) and all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    assert set(images) >= {"content", "style", "prior", "output"} and images["output"].shape == (2, 3, 48, 48)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.blocks.parameters()) or \
        model.decoder.net[-1].weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    dloss, dlogs = model.discriminator_step(_batch())
    assert {"adv", "patch_simple", "patch_complex", "style_nce"} <= set(dlogs)
    dloss.backward()
    for mod in (model.domain_disc, model.patch_disc_simple, model.patch_disc_complex, model.style_projector):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters()), type(mod).__name__
    assert all(p.grad is None for p in model.decoder.parameters())  # D step never touches the generator


def test_style_nce_queue_is_filled_and_gives_negatives_to_a_batch_of_one():
    model = create_model("neat_tiny", nce_queue_size=3)
    before = model.nce_queue_relu3_1.clone()
    model.discriminator_step(_batch(b=2))
    assert int(model.nce_queue_ptr) == 2
    assert not torch.equal(model.nce_queue_relu3_1[:2], before[:2]) and torch.equal(model.nce_queue_relu3_1[2],
                                                                                     before[2])
    model.discriminator_step(_batch(b=2))
    assert int(model.nce_queue_ptr) == 1  # wraps around
    assert "nce_queue_relu3_1" in model.state_dict()  # checkpoints carry the queue
    _, dlogs = model.discriminator_step(_batch(b=1))
    _, glogs, _ = model.generator_step(_batch(b=1))
    assert dlogs["style_nce"] > 0 and glogs["style_nce"] > 0


def test_r1_penalties_are_logged_and_differentiable():
    model = create_model("neat_tiny", w_r1=10.0, w_patch_r1=1.0)
    dloss, dlogs = model.discriminator_step(_batch(size=64))
    assert dlogs["r1"] >= 0 and dlogs["patch_r1"] > 0
    dloss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.patch_disc_simple.parameters())


def test_no_discriminator_gives_zero_loss_and_config_roundtrip():
    model = create_model("neat_tiny", w_adv=0.0, w_patch_simple=0.0, w_patch_complex=0.0, w_style_nce_d=0.0)
    dloss, logs = model.discriminator_step(_batch())
    assert float(dloss.detach()) == 0.0 and logs == {}
    with pytest.raises(ValueError, match="multiples of 16"):
        model.generator_step({k: torch.rand(2, 3, 40, 48) for k in ("content", "style", "style2")})
    rebuilt = create_model("neat_tiny", **model.model_config())
    assert rebuilt.model_config() == model.model_config()
    rebuilt.load_state_dict(model.state_dict())


def test_stylize_any_size_alpha_and_blur():
    model = create_model("neat_tiny").eval()
    # make the decoder do something so alpha matters
    torch.nn.init.normal_(model.decoder.net[-1].weight, std=0.1)
    c, s = torch.rand(1, 3, 37, 51), torch.rand(1, 3, 40, 40)
    out = model.stylize(c, s)
    assert out.shape == c.shape and out.min() >= 0 and out.max() <= 1
    a0, a1, a15 = (model.stylize(c, s, alpha=a) for a in (0.0, 1.0, 1.5))
    assert not torch.allclose(a0, a1) and not torch.allclose(a1, a15)
    assert not torch.allclose(model.stylize(c, s, blur=0.0), a1)
    with pytest.raises(ValueError, match="blur"):
        model.stylize(c, s, blur=-1)


def test_vgg16_encoder_loads_torchvision_weights_and_refuses_vgg19(tmp_path, monkeypatch):
    from torchvision.models.vgg import cfgs, make_layers

    from train.models.vgg import VGG16_STYLE_LAYERS, VGG16Encoder

    features = make_layers(cfgs["D"])  # torchvision's VGG-16 feature stack
    path = tmp_path / "vgg16-397923af.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    enc = VGG16Encoder(weights=str(path))
    x = torch.rand(1, 3, 32, 32)
    ref = features[:23]((x - enc.mean) / enc.std)  # features[22] = relu4_3
    feats = enc(x, VGG16_STYLE_LAYERS + ("relu3_3",))
    assert torch.allclose(feats["relu4_3"], ref, atol=1e-5)
    assert feats["relu1_2"].shape == (1, 64, 32, 32) and feats["relu3_3"].shape == (1, 256, 8, 8)
    with pytest.raises(ValueError, match="VGG16 weights"):
        VGG19Encoder(weights=str(path))
    monkeypatch.delenv("BBST_VGG16_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match=r"VGG-16 weights not found[\s\S]*vgg16-397923af\.pth"):
        VGG16Encoder(weights="auto")


def test_neat_style_loss_switch_and_vgg16_loss_network():
    from train.models.neat import STYLE_WEIGHTS

    torch.manual_seed(0)
    batch = {"content": torch.rand(2, 3, 32, 32), "style": torch.rand(2, 3, 32, 32)}
    no_gan = {"w_adv": 0.0, "w_patch_simple": 0.0, "w_patch_complex": 0.0, "w_style_nce": 0.0}
    model = create_model("neat_tiny", style_loss="balanced_gram", loss_network="vgg16", loss_vgg_weights=None,
                         style_layers=("relu1_2", "relu2_2", "relu3_3", "relu4_3"), content_layer="relu3_3",
                         **no_gan)
    assert model.cfg.w_style == STYLE_WEIGHTS["balanced_gram"] and model.loss_vgg is not None
    _, logs, _ = model.generator_step(batch)
    assert 0.0 <= logs["style"] <= 4.0  # [0, 1] per layer, four layers
    with pytest.raises(ValueError, match="style_loss"):
        create_model("neat_tiny", style_loss="nope")


def test_no_prior_deltas_model_decodes_the_image_itself():
    """Table 1's "no prior deltas": the decoder output is the image; the prior takes no part in it."""
    torch.manual_seed(0)
    model = create_model("neat_tiny", prior_deltas=False).eval()
    c, s = torch.rand(1, 3, 37, 51), torch.rand(1, 3, 40, 40)
    decoded = model.decoder(model.transform(model.vgg(pad_to_multiple(c, 8), ("relu4_1",))["relu4_1"],
                                            model.vgg(s, ("relu4_1",))["relu4_1"]))
    assert torch.equal(model.stylize(c, s), decoded[..., :37, :51].clamp(0, 1))
    # a delta decoder starts at zero (output = weighted prior); an image decoder must start from a live init
    assert model.decoder.net[-1].weight.abs().sum() > 0
    assert create_model("neat_tiny").decoder.net[-1].weight.abs().sum() == 0
    with pytest.raises(ValueError, match="without prior deltas"):
        model.stylize(c, s, blur=0.0)
    assert model.disabled_controls == ("blur", "prior_weight")
    _, logs, images = model.train().generator_step(_batch())
    assert "prior" not in images and torch.isfinite(torch.tensor(list(logs.values()))).all()
