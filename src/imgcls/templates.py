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
    factor = enlargement(images.shape, size)
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def enlargement(shape: tuple[int, ...], size: int) -> int:
    """The whole factor that brings an image's longer side to about `size` pixels (never below 1)."""
    return max(1, size // max(shape[-2:]))


def file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"


def check_size_fits(shape: tuple[int, ...], size: int) -> None:
    """Refuse a --size whose one enlarged template cannot be made in memory: a float32 image and two
    temporaries of its size, its 8-bit pixels, and the PNG encoder's copy."""
    from imgcls.memory import check_fits_memory

    channels, height, width = shape[-3:]
    factor = enlargement(shape, size)
    pixels = channels * height * factor * width * factor
    check_fits_memory(pixels * (3 * 4 + 2), f"--size {size} (templates of {height * factor}x{width * factor} "
                                            f"pixels)", "use a smaller --size")


def export_templates(checkpoint: Checkpoint, out: Path, size: int = 128, scale: str = "each",
                     grid_only: bool = False) -> list[Path]:
    from torchvision.io import write_png

    weights = checkpoint.weight.float().reshape(-1, *checkpoint.input_shape)
    shown = display_images(weights, scale)
    if not grid_only:
        check_size_fits(tuple(weights.shape), size)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if not grid_only:
        stems = [file_stem(name) for name in checkpoint.classes]
        for index, (name, image) in enumerate(zip(stems, shown)):
            unique = stems.count(name) == 1 and name != GRID_STEM
            stem = name if unique else f"{index:03d}_{name}"
            path = out / f"{stem}.png"
            # one template enlarged at a time: all of them at once took K times the memory
            pixels = (enlarge(image, size) * 255).round().to(torch.uint8)
            write_atomic(path, lambda temporary, pixels=pixels: write_png(pixels, str(temporary)))
            written.append(path)
    grid = out / f"{GRID_STEM}.png"
    write_atomic(grid, lambda temporary: save_grid(shown, checkpoint.classes, temporary))
    return written + [grid]


GRID_DPI = 100
GRID_CELL = (1.3, 1.5)  # inches per template, its name above it


def grid_figsize(count: int) -> tuple[float, float]:
    """The labelled grid's size in inches: up to 10 templates a row."""
    columns = min(10, count)
    rows = -(-count // columns)
    return GRID_CELL[0] * columns, GRID_CELL[1] * rows


def save_grid(images: torch.Tensor, classes: list[str], path: Path) -> None:
    """All templates in one labelled figure, figsize grid_figsize(K) at GRID_DPI.

    One picture of all the templates side by side (square pixels, names above them), not one
    matplotlib axes each: a hundred classes draw in a fraction of a second.
    """
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure

    count, channels, height, width = images.shape
    columns = min(10, count)
    rows = -(-count // columns)
    fig_w, fig_h = grid_figsize(count)
    title = 0.3  # inches at the top for the title
    cell_w, cell_h = fig_w / columns, (fig_h - title) / rows  # inches
    side = min(cell_w - 0.2, cell_h - 0.35)  # the template's longer side, inches; the rest: margins and its name
    unit = side / max(height, width)  # inches per template pixel, so the margins can be counted in pixels
    pad_w = max(1, round((cell_w - width * unit) / 2 / unit))
    pad_bottom = max(1, round(0.05 / unit))
    band = max(2, round((cell_h - height * unit) / unit) - pad_bottom)  # room above each template for its name
    cell_rows, cell_columns = band + height + pad_bottom, 2 * pad_w + width
    mosaic = np.ones((rows * cell_rows, columns * cell_columns, 3), dtype=np.float32)  # white paper
    pictures = images.permute(0, 2, 3, 1).float().numpy()
    figure = Figure(figsize=(fig_w, fig_h), dpi=GRID_DPI)
    axis = figure.add_axes((0.0, 0.0, 1.0, 1.0 - title / fig_h))
    for index, (picture, name) in enumerate(zip(pictures, classes)):
        row, column = divmod(index, columns)
        top, left = row * cell_rows + band, column * cell_columns + pad_w
        mosaic[top:top + height, left:left + width] = picture  # one grey channel spreads to all three
        axis.text(left + width / 2 - 0.5, top - 0.5 - 0.03 / unit, name, ha="center", va="bottom", fontsize=8,
                  clip_on=False)
    axis.imshow(mosaic, interpolation="nearest", vmin=0.0, vmax=1.0)
    axis.set_axis_off()
    figure.suptitle("class templates (rows of W)", fontsize=10)
    figure.savefig(path, format="png", dpi=GRID_DPI)
