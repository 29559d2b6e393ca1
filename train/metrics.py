"""Style-transfer evaluation metrics: LPIPS, SIFID, Gram distance, normalised Chamfer colour distance, SSIM, timing."""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.tensorfile import load_tensor_file
from core.weights import find_weights
from train.losses import gram_matrix
from train.models.vgg import STYLE_LAYERS, VGG19Encoder

LPIPS_NETS = ("alex", "vgg")  # backbones lpips_alex / lpips_vgg of core.weights.BACKBONES
_SIFID_MODULES = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")


# ------------------------------------------------------------------------------------------------------------ LPIPS
class LPIPSMetric(nn.Module):
    """LPIPS v0.1 from the ``lpips`` package (its linear-layer weights ship with it); backbone weights load locally.

    ``backbone_weights``: "auto" (torch hub checkpoints dir / $BBST_LPIPS_BACKBONE), a path, or None for a
    random-init backbone (tests only: the distance of identical images is still 0).
    """

    def __init__(self, net: str = "alex", backbone_weights: str | os.PathLike | None = "auto", lin: bool = True):
        super().__init__()
        try:
            import lpips
        except ImportError as exc:
            raise ImportError("LPIPS needs the lpips package: pip install lpips") from exc
        if net not in LPIPS_NETS:
            raise ValueError(f"LPIPS net {net!r} not in {sorted(LPIPS_NETS)}")
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
            warnings.simplefilter("ignore")
            self.model = lpips.LPIPS(pretrained=lin, net=net, pnet_rand=True, verbose=False)
        if backbone_weights is not None:
            path = find_weights(backbone_weights, f"lpips_{net}")
            src = load_tensor_file(str(path), "weight file")
            own = self.model.net.state_dict()
            # lpips slices keep torchvision's layer indices: net.sliceK.<i>.weight <- features.<i>.weight
            mapped = {k: src["features." + k.split(".", 1)[1]] for k in own}
            self.model.net.load_state_dict(mapped)
        self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-image LPIPS for images in [0, 1], (B,)."""
        return self.distance(a, b)

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-image LPIPS, differentiable with respect to the images (the LPIPS loss of a training step)."""
        return self.model(a, b, normalize=True).flatten()

    def train(self, mode: bool = True) -> LPIPSMetric:
        # a frozen metric network (dropout in its linear heads stays off) whatever its parent model does
        return super().train(False)


# ------------------------------------------------------------------------------------------------------------ SIFID
class SIFIDMetric(nn.Module):
    """Single-image FID (SinGAN): Frechet distance between InceptionV3 block-1 (192-d) features of two images.

    Each spatial position is one sample; inputs are scaled to [-1, 1] without resizing. Weights: torchvision's
    ``inception_v3_google`` or pytorch-fid's ``pt_inception`` file (their first five conv blocks share names), or
    None for random init (tests).
    """

    def __init__(self, weights: str | os.PathLike | None = "auto"):
        super().__init__()
        from torchvision.models.inception import BasicConv2d

        # Only the layers up to block 1 are needed: build them alone instead of the whole 27M-parameter network.
        layers = {"Conv2d_1a_3x3": BasicConv2d(3, 32, kernel_size=3, stride=2),
                  "Conv2d_2a_3x3": BasicConv2d(32, 32, kernel_size=3),
                  "Conv2d_2b_3x3": BasicConv2d(32, 64, kernel_size=3, padding=1),
                  "Conv2d_3b_1x1": BasicConv2d(64, 80, kernel_size=1),
                  "Conv2d_4a_3x3": BasicConv2d(80, 192, kernel_size=3)}
        if weights is not None:
            path = find_weights(weights, "inception_v3")
            src = load_tensor_file(str(path), "weight file")
            for name in _SIFID_MODULES:
                prefix = name + "."
                sub = {k[len(prefix):]: v for k, v in src.items() if k.startswith(prefix)}
                if not sub:
                    raise ValueError(f"{path}: no {name} weights; not an InceptionV3 state dict")
                layers[name].load_state_dict(sub)
        self.blocks = nn.Sequential(layers["Conv2d_1a_3x3"], layers["Conv2d_2a_3x3"], layers["Conv2d_2b_3x3"],
                                    nn.MaxPool2d(3, 2), layers["Conv2d_3b_1x1"], layers["Conv2d_4a_3x3"])
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> np.ndarray:
        f = self.blocks(2 * x - 1)
        return f.flatten(2).transpose(1, 2).double().cpu().numpy()  # B, positions, 192

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        ff, fr = self.features(fake), self.features(real)
        return torch.tensor([frechet_distance(a, b) for a, b in zip(ff, fr)])


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to sample sets x, y (N, D), as in pytorch-fid/SinGAN.

    d = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)). The trace of the matrix square root is the sum of the
    square roots of the eigenvalues of S1 S2 (real and >= 0 for two covariance matrices, up to rounding, which is
    clipped): the same number as pytorch-fid's ``sqrtm`` route, ~50x faster and without its singular-matrix retry.
    """
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    diff = mu1 - mu2
    eig = torch.linalg.eigvals(torch.from_numpy(s1 @ s2)).real.numpy()  # torch: obeys torch.set_num_threads
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


# ------------------------------------------------------------------------------------------- pixel-space metrics
def chamfer_colour_distance(a: torch.Tensor, b: torch.Tensor, num_points: int = 4096, seed: int = 0,
                            chunk: int = 2048) -> torch.Tensor:
    """Symmetric Chamfer distance between the RGB colour sets of two images, normalised by the point count.

    Colours are on the 0-255 scale; each image contributes ``num_points`` pixels sampled with a fixed seed (all pixels
    if fewer), so the score does not depend on resolution. Distance = mean squared distance to the nearest colour of
    the other image, summed over both directions. Returns (B,).
    """
    out = []
    for x, y in zip(a, b):
        pts = []
        for img in (x, y):
            p = img.reshape(3, -1).t().float() * 255.0
            if p.shape[0] > num_points:
                # same seed for both images: identical images pick identical pixels and score exactly 0
                gen = torch.Generator().manual_seed(seed)
                p = p[torch.randperm(p.shape[0], generator=gen)[:num_points].to(p.device)]
            pts.append(p)
        px, py = pts

        def nn_mean(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
            # exact differences (not the matmul expansion), so identical colour sets give exactly 0
            mins = [torch.cdist(src[i:i + chunk], dst, compute_mode="donot_use_mm_for_euclid_dist").amin(1)
                    for i in range(0, src.shape[0], chunk)]
            return torch.cat(mins).pow(2).mean()

        out.append(nn_mean(px, py) + nn_mean(py, px))
    return torch.stack(out)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0,
         ) -> torch.Tensor:
    """SSIM (Wang et al. 2004; Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03) averaged over RGB and pixels, (B,)."""
    x = torch.arange(window, dtype=torch.float32, device=a.device) - window // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).expand(3, 1, window, window)
    a, b = a.float(), b.float()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, k, groups=3)  # 'valid' like skimage/torchmetrics: no padding artefacts

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    saa = blur(a * a) - mu_a ** 2
    sbb = blur(b * b) - mu_b ** 2
    sab = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
    return s.flatten(1).mean(1)


def gram_distance(vgg: VGG19Encoder, out: torch.Tensor, style: torch.Tensor,
                  layers: tuple[str, ...] = STYLE_LAYERS) -> torch.Tensor:
    """Mean over VGG-19 layers of the MSE between (C*H*W-normalised) Gram matrices of output and style, (B,)."""
    with torch.no_grad():
        fo, fs = vgg(out, layers), vgg(style, layers)
        per = [(gram_matrix(fo[n]) - gram_matrix(fs[n])).pow(2).flatten(1).mean(1) for n in layers]
    return torch.stack(per).mean(0)


# ------------------------------------------------------------------------------------------------------- all at once
METRIC_NAMES = ("lpips", "sifid", "chamfer", "ssim", "gram")  # NeAT Table 1's columns, in its order
STYLE_MATCH_MODES = ("crop", "pad")


def match_style(style: torch.Tensor, size: tuple[int, int], mode: str = "crop") -> torch.Tensor:
    """The style image brought to the output's (H, W) without distorting it: scaled to cover and centre-cropped
    (``crop``) or scaled to fit and reflect-padded (``pad``). Never stretched."""
    from train.inference import resize_cover_crop, resize_fit_pad

    if mode not in STYLE_MATCH_MODES:
        raise ValueError(f"style_match {mode!r} not in {STYLE_MATCH_MODES}")
    h, w = size
    if tuple(style.shape[-2:]) == (h, w):
        return style
    return resize_cover_crop(style, h, w) if mode == "crop" else resize_fit_pad(style, h, w)


class StyleTransferMetrics:
    """Holds the metric backbones once; ``__call__(output, content, style)`` returns per-image metric lists.

    LPIPS and SSIM compare output with content (content preservation). SIFID and Gram compare output with the style
    image brought to the output's size by ``match_style`` (cropped or padded, never stretched); Chamfer compares
    colour sets and takes the whole style image. Only the backbones of the requested ``metrics`` are loaded.
    Formulas, sources and choices: docs/evaluation.md.
    """

    def __init__(self, vgg_weights: str | None = "auto", lpips_net: str = "alex", lpips_backbone: str | None = "auto",
                 inception_weights: str | None = "auto", device: str | torch.device = "cpu", vgg_width: float = 1.0,
                 metrics: tuple[str, ...] | list[str] = METRIC_NAMES, style_match: str = "crop"):
        unknown = set(metrics) - set(METRIC_NAMES)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; known: {', '.join(METRIC_NAMES)}")
        if style_match not in STYLE_MATCH_MODES:
            raise ValueError(f"style_match {style_match!r} not in {STYLE_MATCH_MODES}")
        self.metrics = tuple(metrics)
        self.style_match = style_match
        self.device = torch.device(device)
        self.vgg = VGG19Encoder(vgg_weights, width=vgg_width).to(self.device) if "gram" in metrics else None
        self.lpips = LPIPSMetric(lpips_net, lpips_backbone).to(self.device) if "lpips" in metrics else None
        self.sifid = SIFIDMetric(inception_weights).to(self.device) if "sifid" in metrics else None

    @classmethod
    def random_init(cls, device: str = "cpu", metrics: tuple[str, ...] | list[str] = METRIC_NAMES,
                    style_match: str = "crop") -> StyleTransferMetrics:
        """Random-weight backbones (tests and dry runs: the math is exercised, the numbers mean nothing)."""
        return cls(vgg_weights=None, lpips_backbone=None, inception_weights=None, device=device, vgg_width=1 / 16,
                   metrics=metrics, style_match=style_match)

    def __call__(self, output: torch.Tensor, content: torch.Tensor, style: torch.Tensor) -> dict[str, list[float]]:
        output, content, style = (t.to(self.device) for t in (output, content, style))
        if content.shape[-2:] != output.shape[-2:]:
            content = F.interpolate(content, size=output.shape[-2:], mode="bilinear", antialias=True)
        style_m = match_style(style, tuple(output.shape[-2:]), self.style_match)
        out: dict[str, list[float]] = {}
        for name in self.metrics:
            if name == "lpips":
                out[name] = self.lpips(output, content).tolist()
            elif name == "ssim":
                out[name] = ssim(output, content).tolist()
            elif name == "sifid":
                out[name] = self.sifid(output, style_m).tolist()
            elif name == "gram":
                out[name] = gram_distance(self.vgg, output, style_m).tolist()
            elif name == "chamfer":
                out[name] = chamfer_colour_distance(output, style).tolist()
        return out


def seconds_per_image(fn, content: torch.Tensor, style: torch.Tensor, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn(content, style)`` after ``warmup`` untimed calls.

    Every call is bracketed by ``torch.cuda.synchronize()`` whenever CUDA is in use, including when ``fn`` moves
    CPU inputs to the GPU itself (a Stylizer does), so queued kernels are counted in the call that launched them.
    """
    def sync():
        if content.is_cuda:
            torch.cuda.synchronize(content.device)
        elif torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn(content, style)
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(content, style)
        sync()
        times.append(time.perf_counter() - t)
    return float(np.median(times))
