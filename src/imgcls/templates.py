"""The picture of what a linear classifier learned: each class's row of W as an image.

A template lives in the normalized input space, so it is rescaled for display: by default
each to its own [min, max] (`scale="each"`), or all to one shared range (`scale="shared"`) so
their strengths can be compared. Each is enlarged by an integer factor, pixels kept square.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from imgcls.checkpoint import Checkpoint
from imgcls.files import write_atomic


GRID_STEM = "templates"  # the labelled grid; a class of that name gets its index as a prefix


def display_images(weights: torch.Tensor, scale: str = "each") -> torch.Tensor:
    """(K, C, H, W) weights -> (K, C, H, W) float in [0, 1]."""
    flat = weights.flatten(1)
    if scale == "shared":
        low, high = flat.min().expand(len(flat)), flat.max().expand(len(flat))
    else:
        low, high = flat.min(1).values, flat.max(1).values
    span = (high - low).clamp_min(1e-12)
    return ((flat - low[:, None]) / span[:, None]).reshape(weights.shape)


def enlarge(images: torch.Tensor, size: int) -> torch.Tensor:
    factor = max(1, size // max(images.shape[-2:]))
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"


def export_templates(checkpoint: Checkpoint, out: Path, size: int = 128, scale: str = "each",
                     grid_only: bool = False) -> list[Path]:
    from torchvision.io import write_png

    weights = checkpoint.weight.float().reshape(-1, *checkpoint.input_shape)
    images = enlarge(display_images(weights, scale), size)
    pixels = (images * 255).round().to(torch.uint8)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if not grid_only:
        stems = [file_stem(name) for name in checkpoint.classes]
        for index, (name, image) in enumerate(zip(stems, pixels)):
            unique = stems.count(name) == 1 and name != GRID_STEM
            stem = name if unique else f"{index:03d}_{name}"
            path = out / f"{stem}.png"
            write_atomic(path, lambda temporary, image=image: write_png(image, str(temporary)))
            written.append(path)
    grid = out / f"{GRID_STEM}.png"
    write_atomic(grid, lambda temporary: save_grid(display_images(weights, scale), checkpoint.classes, temporary))
    return written + [grid]


def save_grid(images: torch.Tensor, classes: list[str], path: Path) -> None:
    """All templates in one labelled figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(images)
    columns = min(10, count)
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.5 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, name in zip(axes.flat, images, classes):
        picture = image.permute(1, 2, 0).numpy()
        axis.imshow(picture[:, :, 0] if picture.shape[2] == 1 else picture, cmap="gray", interpolation="nearest")
        axis.set_title(name, fontsize=8)
    figure.suptitle("class templates (rows of W)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)
