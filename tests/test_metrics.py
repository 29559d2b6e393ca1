"""Evaluation metrics: identities (identical images), orderings, local-weight loading and clear errors."""

from __future__ import annotations

import pytest
import torch

from train.metrics import (
    LPIPSMetric,
    SIFIDMetric,
    StyleTransferMetrics,
    chamfer_colour_distance,
    frechet_distance,
    seconds_per_image,
    ssim,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def metrics():
    torch.manual_seed(0)
    return StyleTransferMetrics.random_init()


def _img(seed, size=(128, 128)):  # 128 px: SIFID needs more positions (784) than feature dims (192)
    return torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(seed))


def test_identical_images(metrics):
    x = _img(0)
    m = metrics(x, x, x)
    assert m["lpips"][0] == pytest.approx(0.0, abs=1e-6)
    assert m["ssim"][0] == pytest.approx(1.0, abs=1e-5)
    assert m["chamfer"][0] == pytest.approx(0.0, abs=1e-6)
    assert m["gram"][0] == pytest.approx(0.0, abs=1e-12)
    assert abs(m["sifid"][0]) < 1e-3


def test_different_images_score_worse(metrics):
    x, y = _img(0), _img(1) * 0.2 + 0.7  # noise vs a dim-contrast, bright image: different statistics
    same, diff = metrics(x, x, x), metrics(x, y, y)
    assert diff["lpips"][0] > 0 and diff["ssim"][0] < 0.5 and diff["gram"][0] >= 0
    assert diff["sifid"][0] > same["sifid"][0] + 1e-3
    # a shifted palette is further away in colour than the same palette
    assert chamfer_colour_distance(x, (x * 0.5)).item() > chamfer_colour_distance(x, x.flip(-1)).item()


def test_ssim_and_chamfer_definitions():
    x = _img(2)
    assert ssim(x, x.clamp(0.2, 0.8)).item() < 1.0
    # Chamfer is normalised by the point count: same distribution at another resolution scores about the same
    small = torch.full((1, 3, 16, 16), 0.5)
    big = torch.full((1, 3, 128, 128), 0.5)
    other = torch.full((1, 3, 16, 16), 0.6)
    assert chamfer_colour_distance(small, other).item() == pytest.approx(2 * 3 * (0.1 * 255) ** 2, rel=1e-4)
    assert chamfer_colour_distance(big, other).item() == pytest.approx(chamfer_colour_distance(small, other).item(),
                                                                      rel=1e-4)


def test_frechet_distance_of_shifted_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g).double().numpy()
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 2.0) == pytest.approx(12.0, rel=1e-3)  # |mu diff|^2 = 3 * 4


def test_lpips_and_sifid_load_local_weights(tmp_path, monkeypatch):
    from torchvision.models.inception import BasicConv2d

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth"):
        LPIPSMetric("alex", backbone_weights="auto")
    with pytest.raises(FileNotFoundError, match="inception_v3_google"):
        SIFIDMetric(weights="auto")
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    # a torchvision-layout alexnet state dict ("features.N.weight"), random values
    shapes = LPIPSMetric("alex", backbone_weights=None).model.net.state_dict()
    alex = {"features." + k.split(".", 1)[1]: torch.randn_like(v) for k, v in shapes.items()}
    torch.save(alex, ckpt / "alexnet-owt-7be5be79.pth")
    lp = LPIPSMetric("alex", backbone_weights="auto")
    assert torch.equal(lp.model.net.slice1[0].weight, alex["features.0.weight"])
    conv4a = BasicConv2d(80, 192, kernel_size=3)
    inc = {f"Conv2d_4a_3x3.{k}": v for k, v in conv4a.state_dict().items()}
    for name, layer in (("Conv2d_1a_3x3", BasicConv2d(3, 32, kernel_size=3, stride=2)),
                        ("Conv2d_2a_3x3", BasicConv2d(32, 32, kernel_size=3)),
                        ("Conv2d_2b_3x3", BasicConv2d(32, 64, kernel_size=3, padding=1)),
                        ("Conv2d_3b_1x1", BasicConv2d(64, 80, kernel_size=1))):
        inc.update({f"{name}.{k}": v for k, v in layer.state_dict().items()})
    torch.save(inc, ckpt / "inception_v3_google-0cc3c7bd.pth")
    sf = SIFIDMetric(weights="auto")
    assert torch.equal(sf.blocks[-1].conv.weight, conv4a.conv.weight)
    torch.save({"fc.weight": torch.zeros(1)}, ckpt / "inception_v3_google-0cc3c7bd.pth")
    with pytest.raises(ValueError, match="not an InceptionV3 state dict"):
        SIFIDMetric(weights="auto")


def test_seconds_per_image_counts_calls():
    calls = []
    t = seconds_per_image(lambda c, s: calls.append(1), _img(0), _img(1), repeats=3, warmup=1)
    assert len(calls) == 4 and t >= 0


def test_evaluate_writes_quality_and_speed_tables(tmp_path):
    from core.synthetic import artwork_like, photo_like
    from pipelines.evaluate import main
    from train.models import create_model

    torch.manual_seed(0)
    model = create_model("neat_tiny")
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model_name": "neat_tiny", "model_config": model.model_config(), "model": model.state_dict(),
                "step": 0}, ckpt)
    photo_like(64, 48, seed=1).save(tmp_path / "c1.jpg")
    artwork_like(48, 48, seed=2).save(tmp_path / "s1.png")
    (tmp_path / "broken.png").write_bytes(b"nope")
    (tmp_path / "pairs.csv").write_text("content,style\nc1.jpg,s1.png\nc1.jpg,broken.png\n")
    other = tmp_path / "other"
    other.mkdir()
    photo_like(64, 48, seed=1).save(other / "c1_stylized_s1.png")  # a "method" that returns the content
    res = main(["--pairs", str(tmp_path / "pairs.csv"), "--model", f"tiny={ckpt}", "--no-blur-row",
                "--outputs", f"identity={other}", "--random-metrics", "--timing-sizes", "32x32", "48x40",
                "--timing-repeats", "1", "--sizes", "max:1024", "--out", str(tmp_path / "eval")])
    labels = [r[0] for r in res["quality"]]
    assert labels == ["tiny", "tiny (no prior blurring)", "identity"]
    assert all(r[1] == "1" for r in res["quality"])  # the broken pair is recorded, not averaged
    assert sum(r["status"] == "error" for r in res["per_pair"]) == 3
    identity = res["quality"][2]
    assert float(identity[2]) == pytest.approx(0.0, abs=0.02)  # LPIPS to content ~0 (JPEG re-encode only)
    assert len(res["speed"]) == 2 and len(res["speed"][0]) == 3
    md = (tmp_path / "eval" / "quality.md").read_text()
    assert "SIFID" in md and "RANDOM" in md
    assert (tmp_path / "eval" / "speed.csv").exists()
