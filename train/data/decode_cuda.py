"""Decode on the GPU: the training process finishes ``loader.decode="cuda"`` batches with nvJPEG (torchvision)."""

from __future__ import annotations

import math

import torch

from train.config import DataConfig
from train.data.decode import decode_crops


def orient_tensor(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply EXIF ``orientation`` to a CxHxW tensor, exactly as ``PIL.ImageOps.exif_transpose``."""
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-1).flip(-2)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(img, -1, (-2, -1))
    if orientation == 7:
        return torch.rot90(img, 1, (-2, -1)).flip(-1)
    if orientation == 8:
        return torch.rot90(img, 1, (-2, -1))
    return img


def _decode_one_on_device(e: dict, crop: int, device: torch.device) -> torch.Tensor | list[torch.Tensor]:
    """One JPEG on ``device``; if nvJPEG refuses it, its crops decoded on the CPU instead."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(e["jpeg"], mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        arrays = decode_crops(bytes(e["jpeg"].numpy()), e["specs"], crop, e["where"])
        return [torch.from_numpy(a.copy()).permute(2, 0, 1).to(device) for a in arrays]


def decode_on_device(batch: dict, data_cfg: DataConfig, device: torch.device) -> dict:
    """Finish a ``decode="cuda"`` batch: batched nvJPEG decode, crop, resize and flip on ``device``."""
    import torch.nn.functional as F
    from torchvision.io import ImageReadMode, decode_jpeg

    crop = data_cfg.crop_size
    for name, views in (("content", ["content"]), ("style", ["style", "style2"] if data_cfg.style2 else ["style"])):
        encoded = batch.pop(f"_{name}_encoded", None)
        if encoded is None:
            continue
        jpeg_idx = [i for i, e in enumerate(encoded) if isinstance(e, dict)]
        # nvJPEG ignores EXIF orientation (torchvision applies it on CPU only), so it is applied here
        try:
            decoded = decode_jpeg([encoded[i]["jpeg"] for i in jpeg_idx], mode=ImageReadMode.RGB,
                                  device=device) if jpeg_idx else []
        except RuntimeError:  # one image nvJPEG cannot handle fails the whole call: decode one by one
            decoded = [_decode_one_on_device(encoded[i], crop, device) for i in jpeg_idx]
        images = {i: orient_tensor(img, encoded[i]["orientation"]) if isinstance(img, torch.Tensor) else img
                  for i, img in zip(jpeg_idx, decoded)}
        out: list[list[torch.Tensor]] = [[] for _ in views]
        for i, e in enumerate(encoded):
            if not isinstance(e, dict):  # decoded on the CPU worker (PNG, WebP...)
                for v in range(len(views)):
                    out[v].append(e[v].to(device, non_blocking=True))
                continue
            img = images[i]
            if isinstance(img, list):  # decoded on the CPU after nvJPEG refused it: crops are ready
                for v in range(len(views)):
                    out[v].append(img[v])
                continue
            for v, ((x0, y0, x1, y1), flip) in enumerate(zip(e["boxes"], e["flips"])):
                xa, ya = math.floor(x0), math.floor(y0)
                xb, yb = max(xa + 1, math.ceil(x1)), max(ya + 1, math.ceil(y1))
                piece = img[:, ya:yb, xa:xb].unsqueeze(0).float()
                piece = F.interpolate(piece, size=(crop, crop), mode="bilinear", antialias=True,
                                      align_corners=False)
                piece = piece.clamp_(0, 255).round_().to(torch.uint8)[0]
                out[v].append(piece.flip(-1) if flip else piece)
        for v, view in enumerate(views):
            batch[view] = torch.stack(out[v])
    return batch
