"""Image grids for sample, interpolation and comparison figures: rows of images fitted into equal cells."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_cell(img: torch.Tensor, cell: int) -> torch.Tensor:
    """(1 or 3, H, W) or (1, 3, H, W) in [0, 1] -> (3, cell, cell): aspect kept, long side = cell, white padding."""
    if img.dim() == 4:
        img = img[0]
    img = img.detach().float().cpu().clamp(0, 1)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    h, w = img.shape[-2:]
    s = cell / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    out = torch.ones(3, cell, cell)
    top, left = (cell - nh) // 2, (cell - nw) // 2
    out[:, top:top + nh, left:left + nw] = img.clamp(0, 1)
    return out


def label_strip(labels: list[str], cell: int, pad: int = 4) -> torch.Tensor:
    """(3, h, W) white strip with each label centred over its ``cell``-wide column (cut to fit the column)."""
    from PIL import Image, ImageDraw, ImageFont

    size = max(10, min(18, cell // 12))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing: the fixed bitmap font
        font = ImageFont.load_default()
    height = size + 2 * pad
    strip = Image.new("RGB", (len(labels) * (cell + pad) + pad, height), "white")
    draw = ImageDraw.Draw(strip)
    for j, label in enumerate(labels):
        text = label
        while text and draw.textlength(text, font=font) > cell:
            text = text[:-2] + "…" if len(text) > 1 else ""
        x = pad + j * (cell + pad) + (cell - draw.textlength(text, font=font)) / 2
        draw.text((x, pad // 2), text, fill="black", font=font)
    import numpy as np

    return torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1).float() / 255.0


def make_grid(rows: list[list[torch.Tensor | None]], cell: int = 256, pad: int = 4,
              labels: list[str] | None = None) -> torch.Tensor:
    """Rows of images (None = empty cell) -> one (3, H, W) image with every image fitted into a ``cell`` square.

    ``labels`` names the columns in a strip above the first row.
    """
    if not rows or not any(rows):
        raise ValueError("make_grid needs at least one image")
    ncol = max(len(r) for r in rows)
    grid = torch.ones(3, len(rows) * (cell + pad) + pad, ncol * (cell + pad) + pad)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            if img is not None:
                y, x = pad + i * (cell + pad), pad + j * (cell + pad)
                grid[:, y:y + cell, x:x + cell] = fit_cell(img, cell)
    if labels:
        labels = list(labels) + [""] * (ncol - len(labels))
        grid = torch.cat([label_strip(labels[:ncol], cell, pad), grid], dim=1)
    return grid


def save_grid(rows: list[list[torch.Tensor | None]], path, cell: int = 256, labels: list[str] | None = None) -> None:
    """Write :func:`make_grid` as a PNG (atomically: a killed run leaves no half-written figure)."""
    from pathlib import Path

    from core.atomic import atomic_write

    path = Path(path)
    grid = make_grid(rows, cell, labels=labels)[None]
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(f):
        import numpy as np
        from PIL import Image

        arr = (grid[0].permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
        Image.fromarray(arr).save(f, format="PNG")
    atomic_write(str(path), write)
