"""Each class's row of W as an image. The model scores standardized pixels x = (p - mean) / std, so W . x =
(W / std) . p - W . (mean / std): matched against raw pixels, as the lecture draws it, the template is W / std
(space "pixel"; "input" shows W). Colours "natural" keep its channels, "diverging" its sign (blue -, white 0, red +)."""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import torch

from imgcls.files import write_atomic
from imgcls.runs.checkpoint import Checkpoint

GRID_STEM = "templates"  # the labelled grid; a class of that name gets its index as a prefix
SPACES = ("auto", "pixel", "input")
COLOURS = ("auto", "natural", "diverging")
CLIP = 0.01  # the share of a template's values at each end that saturate in the pictures (display_images)
STILL = 0.1  # a pixel whose training std is under this share of the median pixel's hardly varies
NEGATIVE, POSITIVE = (0.13, 0.40, 0.67), (0.70, 0.09, 0.17)  # the ends of matplotlib's RdBu: blue -, red +
HIGH_FREQUENCY = 0.25  # cycles per pixel: above it, a template's power is speckle, not shape


def template_weights(checkpoint: Checkpoint, space: str = "pixel") -> torch.Tensor:
    """(K, C, H, W): the rows of W (space "input"), or W / std, what is matched against raw pixels."""
    weights = checkpoint.templates()
    return weights / checkpoint.std.float() if resolved_space(space, checkpoint) == "pixel" else weights


def high_frequency_share(templates: torch.Tensor, cutoff: float = HIGH_FREQUENCY) -> torch.Tensor:
    """(K, C, H, W) -> (K,): the share of each template's power (2-D FFT, mean removed) above `cutoff` cycles per
    pixel. White noise about 0.8, smooth shapes under 0.2."""
    t = templates.double()
    power = torch.fft.fft2(t - t.mean((-2, -1), keepdim=True)).abs().square().sum(1)  # (K, H, W)
    fy, fx = torch.fft.fftfreq(t.shape[-2], dtype=torch.float64), torch.fft.fftfreq(t.shape[-1], dtype=torch.float64)
    high = (fy[:, None].square() + fx[None, :].square()).sqrt() > cutoff
    return power[:, high].sum(1) / power.flatten(1).sum(1).clamp_min(1e-300)


def template_noise(checkpoint: Checkpoint) -> float:
    """The median high_frequency_share: of W / std for colour inputs, of W for grey ones (where a still rim pixel's
    huge W / std would be all the measure sees)."""
    space = "pixel" if checkpoint.input_shape[0] == 3 else "input"
    return float(high_frequency_share(template_weights(checkpoint, space)).quantile(0.5))  # as numpy.median


def resolved_space(space: str, checkpoint: Checkpoint) -> str:
    """'auto': pixel space unless some pixels hardly vary in training (MNIST's rim under per-pixel
    standardization): W / std is huge there, a weight the pixel never uses, and would take the whole picture."""
    if space != "auto":
        return space
    std = checkpoint.std.float().flatten()
    return "input" if bool((std < STILL * std.median()).any()) else "pixel"


def resolved_colours(colours: str, channels: int) -> str:
    """'auto': signs are what a grey template shows best; a colour one keeps its colours."""
    return ("diverging" if channels == 1 else "natural") if colours == "auto" else colours


def display_images(weights: torch.Tensor, scale: str = "each", colours: str = "natural",
                   clip: float = 0.0) -> torch.Tensor:
    """(K, C, H, W) weights -> float in [0, 1]: (K, C, H, W) natural, (K, 3, H, W) diverging; scale "each": each its
    own range, "shared": one range, so strengths compare. clip: the share of values at each end that saturate, so
    that a few extreme pixels (MNIST's rim) do not take the whole range."""
    if resolved_colours(colours, weights.shape[1]) == "diverging":
        return diverging(weights.mean(1), scale, clip)
    flat = weights.flatten(1)
    pool = flat.reshape(1, -1) if scale == "shared" else flat
    low, high = _quantile(pool, clip)[:, None], _quantile(pool, 1.0 - clip)[:, None]
    return ((flat - low) / (high - low).clamp_min(1e-12)).clamp(0, 1).reshape(weights.shape)


def _quantile(rows: torch.Tensor, q: float) -> torch.Tensor:
    """Each row's q-quantile (torch.quantile refuses more than 16M values; sorting does not)."""
    return rows.sort(1).values[:, round(q * (rows.shape[1] - 1))]


def diverging(signed: torch.Tensor, scale: str = "each", clip: float = 0.0) -> torch.Tensor:
    """(K, H, W) signed values -> (K, 3, H, W): white at 0, towards red for +, blue for -; the 1 - clip quantile
    of |value| (each template's, or all of them with scale "shared") is full colour."""
    flat = signed.flatten(1).abs()
    reach = _quantile(flat.reshape(1, -1) if scale == "shared" else flat, 1.0 - clip)
    t = (signed / reach.clamp_min(1e-12).reshape(-1, 1, 1)).clamp(-1, 1)[:, None]  # (K, 1, H, W) in [-1, 1]
    end = torch.where(t >= 0, torch.tensor(POSITIVE)[:, None, None], torch.tensor(NEGATIVE)[:, None, None])
    return 1.0 + t.abs() * (end - 1.0)  # white moved towards the end colour by |t|


def enlargement(shape: tuple[int, ...], size: int) -> int:
    """The whole factor that brings an image's longer side to about `size` pixels (never below 1)."""
    return max(1, size // max(shape[-2:]))


def enlarge(images: torch.Tensor, size: int) -> torch.Tensor:
    factor = enlargement(images.shape, size)
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"


def export_templates(checkpoint: Checkpoint, out: Path, size: int = 128, scale: str = "each",
                     grid_only: bool = False, space: str = "auto", colours: str = "auto",
                     clip: float = CLIP) -> list[Path]:
    """A PNG a class, enlarged to about `size` pixels, and the labelled grid (GRID_STEM.png); the paths written."""
    from imgcls.memory import check_fits_memory

    space = resolved_space(space, checkpoint)
    weights = template_weights(checkpoint, space)
    shown = display_images(weights, scale, colours, clip)
    if not grid_only:
        from torchvision.io import write_png  # only here: importing torchvision imports torch's compiler (seconds)

        channels, height, width = shown.shape[1:]
        factor = enlargement(shown.shape, size)
        # one enlarged template at a time: a float32 image, two temporaries, its 8-bit pixels, the PNG encoder's copy
        check_fits_memory(channels * height * width * factor ** 2 * (3 * 4 + 2), f"--size {size} (templates of "
                          f"{height * factor}x{width * factor} pixels)", "use a smaller --size")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    stems = [] if grid_only else [file_stem(name) for name in checkpoint.classes]
    try:
        for index, (stem, image) in enumerate(zip(stems, shown)):
            path = out / (f"{stem}.png" if stems.count(stem) == 1 and stem != GRID_STEM else f"{index:03d}_{stem}.png")
            # one at a time: all at once took K times more
            pixels = (enlarge(image, size) * 255).round().to(torch.uint8)
            write_atomic(path, lambda temporary, pixels=pixels: write_png(pixels, str(temporary)))
            written.append(path)
        grid = out / f"{GRID_STEM}.png"
        title = grid_title(space, scale, resolved_colours(colours, weights.shape[1]))
        write_atomic(grid, lambda temporary: save_grid(shown, checkpoint.classes, temporary, title))
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM: the CLI says which PNGs are there, not "nothing"
        interrupt.written = written
        raise
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


def _grid_layout(count: int, title: str) -> tuple[int, int, float, float, float, list[str]]:
    """(columns, rows, shrink, width, cell height, the title's lines): beyond 10 columns (100 classes) cells and
    names shrink, so the picture stays about 26 inches wide; the title's lines take a band at the top."""
    columns = grid_columns(count)
    shrink = min(1.0, 10 / columns)
    width = GRID_CELL[0] * shrink * columns
    lines = textwrap.wrap(title, max(10, int(width * TITLE_CHARACTERS_PER_INCH))) if title else []
    return columns, -(-count // columns), shrink, width, GRID_CELL[1] * shrink, lines


def grid_figsize(count: int, title: str = "class templates") -> tuple[float, float]:
    """The labelled grid's size in inches: about sqrt(K) templates a row, and the title's lines above them."""
    _, rows, _, width, cell_h, lines = _grid_layout(count, title)
    return width, cell_h * rows + (0.15 + TITLE_LINE * max(1, len(lines)))


def save_grid(images: torch.Tensor, classes: list[str], path: Path, title: str = "class templates") -> None:
    """All templates in one labelled figure, figsize grid_figsize(K, title) at GRID_DPI."""
    grid_figure(images, classes, title).savefig(path, format="png", dpi=GRID_DPI)


def grid_figure(images: torch.Tensor, classes: list[str], title: str = "class templates"):
    """All the templates as one picture (square pixels, names above them), not an axes each: a hundred classes draw
    in a fraction of a second. The title has its own band at the top, never over the first row's names."""
    from matplotlib.figure import Figure

    count, _, height, width = images.shape
    columns, rows, shrink, fig_w, cell_h, lines = _grid_layout(count, title)
    fig_h = grid_figsize(count, title)[1]
    band_top = fig_h - cell_h * rows  # inches at the top for the title
    cell_w = fig_w / columns
    side = min(cell_w - 0.2 * shrink, cell_h - (LABEL_BAND + 0.1) * shrink)  # the template's longer side, inches
    unit = side / max(height, width)  # inches per template pixel, so the margins can be counted in pixels
    pad_w = max(1, round((cell_w - width * unit) / 2 / unit))
    pad_bottom = max(1, round(0.1 * shrink / unit))
    band = max(2, round((cell_h - height * unit) / unit) - pad_bottom)  # room above each template for its name
    # each template on white paper, and blank cells to fill the last row; then the cells tiled row by row
    cells = torch.nn.functional.pad(images.float(), (pad_w, pad_w, band, pad_bottom, 0, 0, 0, rows * columns - count),
                                    value=1.0)
    channels, cell_rows, cell_columns = cells.shape[1:]
    mosaic = cells.view(rows, columns, channels, cell_rows, cell_columns).permute(0, 3, 1, 4, 2)
    mosaic = mosaic.reshape(rows * cell_rows, columns * cell_columns, channels).expand(-1, -1, 3)
    figure = Figure(figsize=(fig_w, fig_h), dpi=GRID_DPI)
    axis = figure.add_axes((0.0, 0.0, 1.0, 1.0 - band_top / fig_h))
    for index, name in enumerate(classes):
        row, column = divmod(index, columns)
        top, left = row * cell_rows + band, column * cell_columns + pad_w
        # LABEL_POINTS, less for a name too long for its cell (about 0.6 em a character), never under 7 points
        points = max(7.0, min(LABEL_POINTS * shrink, cell_w * 72 / (0.6 * max(len(name), 1))))
        axis.text(left + width / 2 - 0.5, top - 0.5 - 0.06 * shrink / unit, name, ha="center", va="bottom",
                  fontsize=points, clip_on=False)
    axis.imshow(mosaic.numpy(), interpolation="nearest", vmin=0.0, vmax=1.0)
    axis.set_axis_off()
    if lines:
        figure.text(0.5, 1.0 - (band_top / 2) / fig_h, "\n".join(lines), ha="center", va="center",
                    fontsize=14 * max(shrink, 0.7))
    return figure
