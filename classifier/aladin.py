"""ALADIN-ViT style encoder: the released ViT-B/16 + 768-512-256 projection, loaded into a timm ViT.

The released checkpoint (``aladinVIT_bamfg_64.47.pt``, DanRuta/ALADIN) is a plain state dict of an ``AViT``
module whose ``enc_style`` is a ViT in the "ViT-pytorch" layout. Its style code is the final-normed CLS token
passed through ``LeakyReLU -> Linear(768, 512) -> LeakyReLU -> Linear(512, 256)``; users L2-normalise it.
Preprocessing of the release: resize to 224x224, mean 0.5, std 0.5.

Key remapping (released name -> timm ``VisionTransformer`` name), ``enc_style.`` (and ``module.``) stripped:

====================================================  ==========================================
``transformer.embeddings.patch_embeddings.{weight,bias}``  ``patch_embed.proj.{weight,bias}``
``transformer.embeddings.position_embeddings``         ``pos_embed``
``transformer.embeddings.cls_token``                   ``cls_token``
``transformer.encoder.layer.{i}.attention_norm.*``     ``blocks.{i}.norm1.*``
``transformer.encoder.layer.{i}.attn.{query,key,value}.*``  ``blocks.{i}.attn.qkv.*`` (concatenated q, k, v)
``transformer.encoder.layer.{i}.attn.out.*``           ``blocks.{i}.attn.proj.*``
``transformer.encoder.layer.{i}.ffn_norm.*``           ``blocks.{i}.norm2.*``
``transformer.encoder.layer.{i}.ffn.fc{1,2}.*``        ``blocks.{i}.mlp.fc{1,2}.*``
``transformer.encoder.encoder_norm.*``                 ``norm.*``
``proj_head.fc{1,2}.*``                                ``proj_head.fc{1,2}.*`` (kept)
====================================================  ==========================================

Both implementations are pre-LayerNorm (eps 1e-6) blocks with exact GELU and scaled dot-product attention,
so the remapped weights give the same outputs.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import BbstError

ALADIN_MEAN = (0.5, 0.5, 0.5)
ALADIN_STD = (0.5, 0.5, 0.5)
RELEASED_FILENAME = "aladinVIT_bamfg_64.47.pt"

_PREFIX = "transformer."
_LAYER = re.compile(r"^transformer\.encoder\.layer\.(\d+)\.(.+)$")
_SIMPLE = {
    "transformer.embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
    "transformer.embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
    "transformer.embeddings.position_embeddings": "pos_embed",
    "transformer.embeddings.cls_token": "cls_token",
    "transformer.encoder.encoder_norm.weight": "norm.weight",
    "transformer.encoder.encoder_norm.bias": "norm.bias",
}
_BLOCK = {
    "attention_norm": "norm1",
    "ffn_norm": "norm2",
    "attn.out": "attn.proj",
    "ffn.fc1": "mlp.fc1",
    "ffn.fc2": "mlp.fc2",
}


class AladinCheckpointError(BbstError, ValueError):
    """A file that does not have the ALADIN-ViT state-dict layout."""


def _strip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "enc_style."):
            k = k.removeprefix(prefix)
        out[k] = v
    return out


def remap_aladin_state_dict(sd: dict[str, torch.Tensor], where: str = "<state dict>") -> dict[str, torch.Tensor]:
    """Released ALADIN-ViT keys -> :class:`AladinStyleBranch` keys (``vit.*`` and ``proj_head.*``)."""
    sd = _strip(sd)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for k, v in sd.items():
        if k in _SIMPLE:
            out["vit." + _SIMPLE[k]] = v
        elif k.startswith("proj_head."):
            out[k] = v
        elif m := _LAYER.match(k):
            i, rest = int(m.group(1)), m.group(2)
            part = re.match(r"^attn\.(query|key|value)\.(weight|bias)$", rest)
            if part:
                qkv.setdefault((i, part.group(2)), {})[part.group(1)] = v
                continue
            mod, _, param = rest.rpartition(".")
            if mod not in _BLOCK:
                unknown.append(k)
                continue
            out[f"vit.blocks.{i}.{_BLOCK[mod]}.{param}"] = v
        else:
            unknown.append(k)
    if unknown:
        raise AladinCheckpointError(f"{where}: unexpected keys for an ALADIN-ViT checkpoint: {unknown[:8]}")
    for (i, param), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise AladinCheckpointError(f"{where}: block {i} lacks some of query/key/value {param}")
        out[f"vit.blocks.{i}.attn.qkv.{param}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    for required in ("vit.cls_token", "vit.pos_embed", "vit.patch_embed.proj.weight", "proj_head.fc2.weight"):
        if required not in out:
            raise AladinCheckpointError(f"{where}: missing {required!r} (is this an ALADIN-ViT checkpoint?)")
    return out


def infer_architecture(remapped: dict[str, torch.Tensor]) -> dict:
    """ViT size read off a remapped state dict (heads cannot be inferred; 64-dim heads are assumed)."""
    embed_dim = remapped["vit.cls_token"].shape[-1]
    patch = remapped["vit.patch_embed.proj.weight"].shape[-1]
    n_tokens = remapped["vit.pos_embed"].shape[1]
    grid = round((n_tokens - 1) ** 0.5)
    depth = 1 + max(int(k.split(".")[2]) for k in remapped if k.startswith("vit.blocks."))
    return {
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": max(1, embed_dim // 64),
        "patch_size": patch,
        "img_size": grid * patch,
        "mlp_ratio": remapped["vit.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        "mid_dim": remapped["proj_head.fc1.weight"].shape[0],
        "out_dim": remapped["proj_head.fc2.weight"].shape[0],
    }


class AladinStyleBranch(nn.Module):
    """ALADIN-ViT: timm ViT, final-normed CLS token -> LeakyReLU/Linear/LeakyReLU/Linear -> L2-normalised code."""

    def __init__(self, embed_dim: int = 768, depth: int = 12, num_heads: int = 12, patch_size: int = 16,
                 img_size: int = 224, mlp_ratio: float = 4.0, mid_dim: int | None = None, out_dim: int = 256,
                 normalize: bool = True):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.vit = VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                     num_heads=num_heads, mlp_ratio=mlp_ratio, num_classes=0, global_pool="token",
                                     qkv_bias=True, class_token=True)
        mid_dim = mid_dim or (embed_dim + out_dim) // 2  # the release: int((768 + 256) / 2) = 512
        self.proj_head = nn.Sequential(OrderedDict([
            ("relu1", nn.LeakyReLU()), ("fc1", nn.Linear(embed_dim, mid_dim)),
            ("relu2", nn.LeakyReLU()), ("fc2", nn.Linear(mid_dim, out_dim)),
        ]))
        self.out_dim = out_dim
        self.normalize = normalize
        self.mean, self.std = ALADIN_MEAN, ALADIN_STD

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) normalized with mean/std 0.5 -> (B, out_dim) style code."""
        cls = self.vit.forward_head(self.vit.forward_features(x), pre_logits=True)
        code = self.proj_head(cls)
        return F.normalize(code.float(), dim=-1) if self.normalize else code

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], where: str = "<state dict>", num_heads: int | None = None,
                        normalize: bool = True) -> AladinStyleBranch:
        remapped = remap_aladin_state_dict(sd, where)
        arch = infer_architecture(remapped)
        if num_heads:
            arch["num_heads"] = num_heads
        model = cls(**arch, normalize=normalize)
        missing, unexpected = model.load_state_dict(remapped, strict=False)
        if missing or unexpected:
            raise AladinCheckpointError(f"{where}: missing {missing[:8]}, unexpected {unexpected[:8]}")
        return model


def load_aladin_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a released ALADIN-ViT file (``torch.save`` state dict or ``.safetensors``) as a raw state dict."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    from core.tensorfile import load_tensor_file

    obj = load_tensor_file(str(path), "weight file")
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise AladinCheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj
