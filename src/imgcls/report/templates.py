"""The picture of what a linear classifier learned: each class's row of W as an image.

The model scores standardized pixels, x = (p - mean) / std, so W . x = (W / std) . p - W . (mean / std):
matched against the raw pixels p, as the lecture draws it, the template is W / std (`space="pixel"`,
the default); `space="input"` shows W itself. A template is then rescaled for display: each to its own
range (`scale="each"`), or all to one shared range (`scale="shared"`) so their strengths can be
compared; `colours="natural"` keeps its channels as colours (min..max to black..white),
`colours="diverging"` shows its sign, the channels averaged, blue negative, white 0, red positive
(`"auto"`: diverging for grey images, natural for colour ones). Each is enlarged by a whole factor.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from imgcls.runs.checkpoint import Checkpoint
from imgcls.files import write_atomic

GRID_STEM = "templates"  # the labelled grid; a class of that name gets its index as a prefix
SPACES = ("auto", "pixel", "input")
CLIP = 0.01  # the share of a template's values at each end that saturate in the pictures (display_images)
STILL = 0.1  # a pixel whose training std is under this share of the median pixel's hardly varies
COLOURS = ("auto", "natural", "diverging")
NEGATIVE, POSITIVE = (0.13, 0.40, 0.67), (0.70, 0.09, 0.17)  # the ends of matplotlib's RdBu: blue -, red +


def template_weights(checkpoint: Checkpoint, space: str = "pixel") -> torch.Tensor:
    """(K, C, H, W): the rows of W (space="input"), or W / std, what is matched against raw pixels."""
    weights = checkpoint.templates()
    return weights / checkpoint.std.float() if resolved_space(space, checkpoint) == "pixel" else weights


HIGH_FREQUENCY = 0.25  # cycles per pixel: above it, a template's power is speckle, not shape


def high_frequency_share(templates: torch.Tensor, cutoff: float = HIGH_FREQUENCY) -> torch.Tensor:
    """(K, C, H, W) -> (K,): the share of each template's power (2-D FFT of each channel, its mean removed,
    summed over channels) at spatial frequencies above `cutoff`. White noise about 0.8, smooth shapes under 0.2."""
    t = templates.double()
    t = t - t.mean((-2, -1), keepdim=True)
    power = torch.fft.fft2(t).abs().square().sum(1)  # (K, H, W)
    fy, fx = torch.fft.fftfreq(t.shape[-2], dtype=torch.float64), torch.fft.fftfreq(t.shape[-1], dtype=torch.float64)
    high = (fy[:, None].square() + fx[None, :].square()).sqrt() > cutoff
    return power[:, high].sum(1) / power.flatten(1).sum(1).clamp_min(1e-300)


def template_noise(checkpoint: Checkpoint) -> float:
    """The median over classes of high_frequency_share: of W / std for colour inputs, of W for grey ones
    (where a still rim pixel's huge W / std would be all the measure sees)."""
    space = "pixel" if checkpoint.input_shape[0] == 3 else "input"
    return float(high_frequency_share(template_weights(checkpoint, space)).quantile(0.5))  # as numpy.median


def resolved_space(space: str, checkpoint: Checkpoint) -> str:
    """'auto': pixel space unless some pixels hardly vary in training (MNIST's rim under per-pixel
    standardization): W / std is huge there, a weight the pixel never uses, and takes the whole picture."""
    if space != "auto":
        return space
    std = checkpoint.std.float().flatten()
    return "input" if bool((std < STILL * std.median()).any()) else "pixel"


def resolved_colours(colours: str, channels: int) -> str:
    """'auto': signs are what a grey template shows best; a colour one keeps its colours."""
    if colours == "auto":
        return "diverging" if channels == 1 else "natural"
    return colours


def display_images(weights: torch.Tensor, scale: str = "each", colours: str = "natural",
                   clip: float = 0.0) -> torch.Tensor:
    """(K, C, H, W) weights -> float in [0, 1]: (K, C, H, W) natural, (K, 3, H, W) diverging.

    clip: the share of values, at each end, that saturate: the range runs from the clip to the 1 - clip
    quantile. In pixel space a pixel that hardly varies (MNIST's rim) gets a huge W / std that it never
    uses; unclipped, those few pixels take the whole range and the rest of the template is one flat grey."""
    if resolved_colours(colours, weights.shape[1]) == "diverging":
        return diverging(weights.mean(1), scale, clip)
    flat = weights.flatten(1)
    pool = flat.reshape(1, -1) if scale == "shared" else flat
    low, high = _quantile(pool, clip), _quantile(pool, 1.0 - clip)
    low, high = low.expand(len(flat)), high.expand(len(flat))
    span = (high - low).clamp_min(1e-12)
    return ((flat - low[:, None]) / span[:, None]).clamp(0, 1).reshape(weights.shape)


def _quantile(rows: torch.Tensor, q: float) -> torch.Tensor:
    """Each row's q-quantile (torch.quantile refuses more than 16M values; sorting does not)."""
    ordered = rows.sort(1).values
    return ordered[:, round(q * (rows.shape[1] - 1))]


def diverging(signed: torch.Tensor, scale: str = "each", clip: float = 0.0) -> torch.Tensor:
    """(K, H, W) signed values -> (K, 3, H, W): white at 0, towards red for +, blue for -, symmetric about 0
    (the 1 - clip quantile of |value|, each template's or all of them with scale="shared", is full colour)."""
    flat = signed.flatten(1).abs()
    reach = _quantile(flat.reshape(1, -1) if scale == "shared" else flat, 1.0 - clip)
    t = (signed / reach.clamp_min(1e-12).reshape(-1, 1, 1)).clamp(-1, 1)[:, None]  # (K, 1, H, W) in [-1, 1]
    end = torch.where(t >= 0, torch.tensor(POSITIVE)[:, None, None], torch.tensor(NEGATIVE)[:, None, None])
    return 1.0 + t.abs() * (end - 1.0)  # white moved towards the end colour by |t|


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
                     grid_only: bool = False, space: str = "auto", colours: str = "auto",
                     clip: float = CLIP) -> list[Path]:
    from torchvision.io import write_png

    space = resolved_space(space, checkpoint)
    weights = template_weights(checkpoint, space)
    shown = display_images(weights, scale, colours, clip)
    if not grid_only:
        check_size_fits(tuple(shown.shape), size)
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
    title = grid_title(space, scale, resolved_colours(colours, weights.shape[1]))
    write_atomic(grid, lambda temporary: save_grid(shown, checkpoint.classes, temporary, title))
    return written + [grid]


def grid_title(space: str, scale: str, colours: str) -> str:
    what = "W / std, as matched against raw pixels" if space == "pixel" else "rows of W, on standardized pixels"
    ranges = "each to its own range" if scale == "each" else "one range for all"
    sign = "; red +, white 0, blue -" if colours == "diverging" else ""
    return f"class templates ({what}; {ranges}{sign})"


GRID_DPI = 100
GRID_CELL = (2.6, 3.0)  # inches per template up to 100 classes, its name above it: the template's side is 2.4 in
LABEL_POINTS = 20  # a class name's size: about 25 pixels from ascender to descender, readable when projected
LABEL_BAND = 0.45  # inches above a template for its name
TITLE_LINE = 0.3  # inches a line of the title takes (14 points and its spacing), above the first row's names
TITLE_CHARACTERS_PER_INCH = 9  # about, at 14 points: where the title wraps


def grid_columns(count: int) -> int:
    """About sqrt(K) columns: a grid near square, its names large, rather than one long row."""
    return max(1, math.ceil(math.sqrt(count)))


def grid_shrink(count: int) -> float:
    """Beyond 10 columns (100 classes) cells and names shrink, so the picture stays about 26 inches wide."""
    return min(1.0, 10 / grid_columns(count))


def grid_figsize(count: int, title: str = "class templates") -> tuple[float, float]:
    """The labelled grid's size in inches: about sqrt(K) templates a row, and the title's lines above them."""
    columns = grid_columns(count)
    rows = -(-count // columns)
    cell_w, cell_h = (side * grid_shrink(count) for side in GRID_CELL)
    return cell_w * columns, cell_h * rows + title_height(title_lines(title, cell_w * columns))


def title_lines(title: str, width: float) -> list[str]:
    import textwrap

    return textwrap.wrap(title, max(10, int(width * TITLE_CHARACTERS_PER_INCH))) if title else []


def title_height(lines: list[str]) -> float:
    return 0.15 + TITLE_LINE * max(1, len(lines))


def save_grid(images: torch.Tensor, classes: list[str], path: Path, title: str = "class templates") -> None:
    """All templates in one labelled figure, figsize grid_figsize(K, title) at GRID_DPI."""
    grid_figure(images, classes, title).savefig(path, format="png", dpi=GRID_DPI)


def grid_figure(images: torch.Tensor, classes: list[str], title: str = "class templates"):
    """One picture of all the templates side by side (square pixels, names above them), not one
    matplotlib axes each: a hundred classes draw in a fraction of a second. The title has its own band
    at the top (figure.suptitle sat at 98% of the height: on a tall grid, over the first row's names)."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure

    count, channels, height, width = images.shape
    columns = grid_columns(count)
    rows = -(-count // columns)
    shrink = grid_shrink(count)
    fig_w, fig_h = grid_figsize(count, title)
    lines = title_lines(title, fig_w)
    band_top = title_height(lines)  # inches at the top for the title
    cell_w, cell_h = fig_w / columns, (fig_h - band_top) / rows  # inches
    side = min(cell_w - 0.2 * shrink, cell_h - (LABEL_BAND + 0.1) * shrink)  # the template's longer side, inches
    unit = side / max(height, width)  # inches per template pixel, so the margins can be counted in pixels
    pad_w = max(1, round((cell_w - width * unit) / 2 / unit))
    pad_bottom = max(1, round(0.1 * shrink / unit))
    band = max(2, round((cell_h - height * unit) / unit) - pad_bottom)  # room above each template for its name
    cell_rows, cell_columns = band + height + pad_bottom, 2 * pad_w + width
    mosaic = np.ones((rows * cell_rows, columns * cell_columns, 3), dtype=np.float32)  # white paper
    pictures = images.permute(0, 2, 3, 1).float().numpy()
    figure = Figure(figsize=(fig_w, fig_h), dpi=GRID_DPI)
    axis = figure.add_axes((0.0, 0.0, 1.0, 1.0 - band_top / fig_h))
    for index, (picture, name) in enumerate(zip(pictures, classes)):
        row, column = divmod(index, columns)
        top, left = row * cell_rows + band, column * cell_columns + pad_w
        mosaic[top:top + height, left:left + width] = picture  # one grey channel spreads to all three
        axis.text(left + width / 2 - 0.5, top - 0.5 - 0.06 * shrink / unit, name, ha="center", va="bottom",
                  fontsize=label_points(name, cell_w, shrink), clip_on=False)
    axis.imshow(mosaic, interpolation="nearest", vmin=0.0, vmax=1.0)
    axis.set_axis_off()
    if lines:
        figure.text(0.5, 1.0 - (band_top / 2) / fig_h, "\n".join(lines), ha="center", va="center",
                    fontsize=14 * max(shrink, 0.7))
    return figure


def label_points(name: str, cell_width: float, shrink: float) -> float:
    """LABEL_POINTS, less for a name too long for its cell (about 0.6 em a character), never under 7 points."""
    fits = cell_width * 72 / (0.6 * max(len(name), 1))
    return max(7.0, min(LABEL_POINTS * shrink, fits))
