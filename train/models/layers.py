"""Building blocks: memory-bounded attention, PAMA blocks, style-token capping, and the prior's image filters."""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)
ATTENTION_MODES = ("chunked", "sdpa", "full")


# ----------------------------------------------------------------------------------------------- feature statistics
def mean_std(feat: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel spatial mean and std, shaped (B, C, 1, 1)."""
    b, c = feat.shape[:2]
    flat = feat.reshape(b, c, -1).float()
    mean = flat.mean(-1)
    std = (flat.var(-1, unbiased=False) + eps).sqrt()
    return mean.view(b, c, 1, 1).to(feat.dtype), std.view(b, c, 1, 1).to(feat.dtype)


def mean_variance_norm(feat: torch.Tensor) -> torch.Tensor:
    """Instance-normalise features (no affine), as SANet/PAMA do before computing attention keys."""
    mean, std = mean_std(feat)
    return (feat - mean) / std


def cap_tokens(feat: torch.Tensor, max_tokens: int | None) -> torch.Tensor:
    """Area-downsample a feature map (aspect kept) so that H*W <= max_tokens; no-op below the cap."""
    h, w = feat.shape[-2:]
    if not max_tokens or h * w <= max_tokens:
        return feat
    scale = math.sqrt(max_tokens / (h * w))
    nh, nw = max(1, int(h * scale)), max(1, int(w * scale))
    return F.adaptive_avg_pool2d(feat, (nh, nw))


# ------------------------------------------------------------------------------------------------------- attention
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str = "chunked",
              chunk_size: int = 4096, scale: float = 1.0) -> torch.Tensor:
    """softmax(scale * q k^T) v with q (B, Nq, D), k (B, Nk, D), v (B, Nk, Dv).

    The softmax runs over the key (style) axis, so splitting the queries (content positions) into chunks is exact:
    peak memory is chunk_size x Nk instead of Nq x Nk. ``sdpa`` hands the same product to
    ``F.scaled_dot_product_attention`` (fused, memory-efficient kernels where the backend has them) and still
    chunks the queries so the CPU math fallback stays bounded; ``full`` materialises the whole matrix (reference).
    """
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention mode {mode!r} not in {ATTENTION_MODES}")
    if mode == "full":
        return torch.softmax(torch.bmm(q, k.transpose(1, 2)) * scale, dim=-1).bmm(v)
    outs = []
    for start in range(0, q.shape[1], chunk_size):
        qc = q[:, start:start + chunk_size]
        if mode == "sdpa":
            outs.append(F.scaled_dot_product_attention(qc.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1),
                                                       scale=scale).squeeze(1))
        else:
            outs.append(torch.softmax(torch.bmm(qc, k.transpose(1, 2)) * scale, dim=-1).bmm(v))
    return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]


class AttentionUnit(nn.Module):
    """PAMA attention unit: keys/queries from normalised features (C/2, ReLU6), values from raw style features."""

    def __init__(self, channels: int):
        super().__init__()
        half = max(1, channels // 2)
        self.f = nn.Conv2d(channels, half, 1)
        self.g = nn.Conv2d(channels, half, 1)
        self.h = nn.Conv2d(channels, half, 1)
        self.out = nn.Conv2d(half, channels, 1)
        self.act = nn.ReLU6()

    def forward(self, fc: torch.Tensor, fs: torch.Tensor, mode: str = "chunked", chunk_size: int = 4096,
                ) -> torch.Tensor:
        b, _, h, w = fc.shape
        q = self.act(self.f(mean_variance_norm(fc))).flatten(2).transpose(1, 2)  # B, HWc, C/2
        k = self.act(self.g(mean_variance_norm(fs))).flatten(2).transpose(1, 2)  # B, HWs, C/2
        v = self.act(self.h(fs)).flatten(2).transpose(1, 2)  # B, HWs, C/2
        # PAMA uses no 1/sqrt(d) temperature: keep scale=1 so pretrained PAMA-style behaviour carries over.
        out = attention(q, k, v, mode=mode, chunk_size=chunk_size, scale=1.0)
        return self.act(self.out(out.transpose(1, 2).reshape(b, -1, h, w)))


class FuseUnit(nn.Module):
    """PAMA fuse gate: a multi-kernel sigmoid gate mixing content features and attended style features."""

    def __init__(self, channels: int):
        super().__init__()
        self.proj1 = nn.Conv2d(2 * channels, channels, 1)
        self.proj2 = nn.Conv2d(channels, channels, 1)
        self.proj3 = nn.Conv2d(channels, channels, 1)
        self.gates = nn.ModuleList(nn.Conv2d(channels, 1, k, padding=k // 2, padding_mode="reflect")
                                   for k in (1, 3, 5))

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        fcat = self.proj1(torch.cat([f1, f2], dim=1))
        gate = torch.stack([torch.sigmoid(g(fcat)) for g in self.gates]).mean(0).clamp(0, 1)
        return gate * self.proj2(f1) + (1 - gate) * self.proj3(f2)


class PAMABlock(nn.Module):
    """One progressive attentional alignment step: shared conv_in -> attention -> conv_out -> fuse with content."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.attn = AttentionUnit(channels)
        self.conv_out = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.fuse = FuseUnit(channels)
        self.act = nn.ReLU6()

    def forward(self, fc: torch.Tensor, fs: torch.Tensor, mode: str = "chunked", chunk_size: int = 4096,
                ) -> torch.Tensor:
        fc = self.act(self.conv_in(fc))
        fs = self.act(self.conv_in(fs))
        fcs = self.act(self.conv_out(self.attn(fc, fs, mode=mode, chunk_size=chunk_size)))
        return self.fuse(fc, fcs)


# ------------------------------------------------------------------------------------------------- image filters
def gaussian_blur(img: torch.Tensor, kernel_size: int, sigma: float | None = None) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding; sigma defaults to OpenCV's rule for the kernel size."""
    if kernel_size <= 1:
        return img
    kernel_size = kernel_size + 1 - kernel_size % 2  # odd
    if sigma is None or sigma <= 0:
        sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    x = torch.arange(kernel_size, device=img.device, dtype=torch.float32) - kernel_size // 2
    k1 = torch.exp(-x ** 2 / (2 * sigma ** 2))
    k1 = (k1 / k1.sum()).to(img.dtype)
    c = img.shape[1]
    pad = kernel_size // 2
    out = F.pad(img, (pad, pad, 0, 0), mode="reflect")
    out = F.conv2d(out, k1.view(1, 1, 1, -1).expand(c, 1, 1, kernel_size), groups=c)
    out = F.pad(out, (0, 0, pad, pad), mode="reflect")
    return F.conv2d(out, k1.view(1, 1, -1, 1).expand(c, 1, kernel_size, 1), groups=c)


@functools.cache
def _opencv():
    try:
        import cv2
    except ImportError:
        log.warning("opencv-python-headless is not installed: the bilateral filter falls back to a slow torch loop "
                    "on CPU (pip install opencv-python-headless)")
        return None
    return cv2


def bilateral_filter(img: torch.Tensor, diameter: int = 25, sigma_color: float = 100.0 / 255.0,
                     sigma_space: float = 100.0) -> torch.Tensor:
    """Edge-preserving bilateral filter over a circular window (OpenCV's semantics, L1 colour distance).

    Loops over window offsets instead of unfolding patches, so memory stays O(pixels) at any resolution
    (unfolding a 25x25 window at 4K would need tens of GB). ``sigma_color`` is on the image's [0, 1] scale:
    100/255 reproduces OpenCV's sigmaColor=100 on 8-bit images.
    """
    if diameter <= 1:
        return img
    if img.device.type == "cpu" and not img.requires_grad:
        cv2 = _opencv()
        if cv2 is not None:  # same filter (matches the loop below to ~1e-6), ~20x faster on CPU
            arr = img.detach().float().permute(0, 2, 3, 1).contiguous().numpy()
            out = [cv2.bilateralFilter(a, diameter, sigma_color, sigma_space) for a in arr]
            return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(img.dtype)
    radius = diameter // 2
    pad = F.pad(img, (radius, radius, radius, radius), mode="reflect")
    h, w = img.shape[-2:]
    num = torch.zeros_like(img)
    den = torch.zeros_like(img[:, :1])
    inv_c = -1.0 / (2 * sigma_color ** 2)
    inv_s = -1.0 / (2 * sigma_space ** 2)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            r2 = dy * dy + dx * dx
            if r2 > radius * radius:
                continue
            shifted = pad[:, :, radius + dy:radius + dy + h, radius + dx:radius + dx + w]
            dist = (shifted - img).abs().sum(1, keepdim=True)
            wgt = torch.exp(dist * dist * inv_c + r2 * inv_s)
            num += wgt * shifted
            den += wgt
    return num / den


def recolour(img: torch.Tensor, target: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Match img's per-image RGB mean and covariance to target's (ZCA whitening then colouring, as in NNST/ARF)."""
    with torch.autocast(device_type=img.device.type, enabled=False):
        x = img.float().flatten(2)  # B, 3, N
        y = target.float().flatten(2)
        mx, my = x.mean(-1, keepdim=True), y.mean(-1, keepdim=True)
        xc, yc = x - mx, y - my
        eye = eps * torch.eye(3, device=img.device)
        cov_x = xc @ xc.transpose(1, 2) / xc.shape[-1] + eye
        cov_y = yc @ yc.transpose(1, 2) / yc.shape[-1] + eye
        ex, vx = torch.linalg.eigh(cov_x)
        ey, vy = torch.linalg.eigh(cov_y)
        whiten = vx @ torch.diag_embed(ex.clamp(1e-8, 1e8).rsqrt()) @ vx.transpose(1, 2)
        colour = vy @ torch.diag_embed(ey.clamp(1e-8, 1e8).sqrt()) @ vy.transpose(1, 2)
        out = colour @ (whiten @ xc) + my
    return out.view_as(img).to(img.dtype)


def sobel_magnitude(img: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the luma, (B, 1, H, W)."""
    grey = (img * torch.tensor([0.299, 0.587, 0.114], device=img.device, dtype=img.dtype).view(1, 3, 1, 1)).sum(1,
                                                                                                              True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=img.device, dtype=img.dtype)
    kernel = torch.stack([kx, kx.t()]).unsqueeze(1)
    g = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernel)
    return (g.pow(2).sum(1, keepdim=True) + 1e-12).sqrt()


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad H and W at the bottom/right up to a multiple (reflect where the image is large enough): encoders
    that downsample k times need sides divisible by 2**k; callers crop the output back."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
    return x
