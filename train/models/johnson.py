"""Johnson et al.'s image transformation network, with learnt or conditional (per-sample) instance normalisation.

Johnson, Alahi & Fei-Fei (ECCV 2016): 9x9 conv, two stride-2 convs, residual blocks at stride 4, two upsampling convs
and a 9x9 conv to RGB through a scaled tanh. Instance norm replaces batch norm (Ulyanov et al.); the upsampling is
nearest-neighbour + conv (Dumoulin et al.; the same parameter count as a fractionally-strided conv). MetaStyle uses
it with learnt instance-norm scale/shift; the Magenta arbitrary-style network (Ghiasi et al. 2017) feeds every
instance norm a per-sample scale/shift predicted from the style image (conditional instance normalisation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.models.layers import pad_to_multiple


def reflect_conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    """k x k convolution with reflection padding (keeps borders free of zero-padding artefacts)."""
    return nn.Conv2d(cin, cout, k, stride, padding=k // 2, padding_mode="reflect")


class UpConv(nn.Module):
    """Nearest-neighbour 2x upsampling then a 3x3 convolution (no checkerboard artefacts)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = reflect_conv(cin, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TransformerNet(nn.Module):
    """Johnson's transformation network; output in [0, 1] by the scaled tanh (1 + tanh(x)) / 2.

    ``conditional=False``: every instance norm has a learnt scale and shift (MetaStyle, Johnson).
    ``conditional=True``: the norms have no parameters; ``forward(x, norm_params)`` takes a (B, 2 * sum(C)) tensor of
    per-sample scales and shifts, one (scale, shift) pair of C values per norm in ``norm_channels`` order.
    """

    def __init__(self, width: float = 1.0, res_blocks: int = 5, conditional: bool = False):
        super().__init__()
        c1, c2, c3 = (max(2, round(c * width)) for c in (32, 64, 128))
        self.conditional = conditional
        self.down = nn.ModuleList([reflect_conv(3, c1, 9), reflect_conv(c1, c2, 3, 2), reflect_conv(c2, c3, 3, 2)])
        self.res = nn.ModuleList(nn.ModuleList([reflect_conv(c3, c3, 3), reflect_conv(c3, c3, 3)])
                                 for _ in range(res_blocks))
        self.up = nn.ModuleList([UpConv(c3, c2), UpConv(c2, c1)])
        self.out = reflect_conv(c1, 3, 9)
        self.norm_channels = [c1, c2, c3] + [c3] * (2 * res_blocks) + [c2, c1]
        self.norms = nn.ModuleList(nn.InstanceNorm2d(c, affine=not conditional) for c in self.norm_channels)

    def num_norm_params(self) -> int:
        """Length of the per-sample ``norm_params`` vector of the conditional network."""
        return 2 * sum(self.norm_channels)

    def forward(self, x: torch.Tensor, norm_params: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditional != (norm_params is not None):
            raise ValueError("a conditional TransformerNet needs norm_params; an unconditional one takes none")
        h_in, w_in = x.shape[-2:]
        x = pad_to_multiple(x, 4)
        offsets = [0]
        for c in self.norm_channels:
            offsets.append(offsets[-1] + 2 * c)
        k = 0

        def norm(h: torch.Tensor) -> torch.Tensor:
            nonlocal k
            h = self.norms[k](h)
            if norm_params is not None:
                c = self.norm_channels[k]
                p = norm_params[:, offsets[k]:offsets[k + 1]]
                h = h * p[:, :c, None, None] + p[:, c:, None, None]
            k += 1
            return h

        h = x
        for conv in self.down:
            h = F.relu(norm(conv(h)))
        for c_a, c_b in self.res:
            h = h + norm(c_b(F.relu(norm(c_a(h)))))
        for conv in self.up:
            h = F.relu(norm(conv(h)))
        return ((1 + torch.tanh(self.out(h))) / 2)[..., :h_in, :w_in]


def norm_parameter_names(net: nn.Module) -> set[str]:
    """Names of the instance-norm scale/shift parameters (the style-specific ones per Dumoulin et al.)."""
    return {f"{mod_name}.{p}" if mod_name else p for mod_name, mod in net.named_modules()
            if isinstance(mod, nn.InstanceNorm2d) for p, _ in mod.named_parameters(recurse=False)}
