"""--augment: `flip`, `translate:N[:zero|:reflect]`, both (`flip,translate:4`), or `none`, applied to whole
uint8 training batches with one gather; the draws are a pure function of (seed, epoch), so resume redraws them.
torch is imported inside the functions: the config checks a spelling before torch is loaded."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgcls.errors import UserError, did_you_mean, shown

if TYPE_CHECKING:
    import torch

OFF = "none"
NAMES = ("flip", "translate", OFF)
BORDERS = ("zero", "reflect")
SPELLING = "flip, translate:N, translate:N:reflect, both joined by a comma (flip,translate:4), or none"
MAX_SHIFT_DIGITS = 6  # a shift of a million pixels is refused by the image size anyway


@dataclass(frozen=True)
class Augmentation:
    flip: bool = False
    shift: int | None = None  # translate: the most pixels an image moves along each axis; None: no translate
    reflect: bool = False  # the uncovered border mirrors the image, rather than being zeros

    @property
    def active(self) -> bool:
        return self.flip or self.shift is not None

    def __str__(self) -> str:
        parts = ["flip"] if self.flip else []
        if self.shift is not None:
            parts.append(f"translate:{self.shift}" + (":reflect" if self.reflect else ""))
        return ",".join(parts) or OFF

    def check_fits(self, shape: tuple[int, ...]) -> None:
        """A UserError unless a shift stays inside images of this (C, H, W) shape (reflection needs that)."""
        side = min(shape[-2:])
        if self.shift is not None and self.shift >= side:
            raise UserError(f"augment {self} shifts images by up to {self.shift} pixels, but they are "
                            f"{shape[-2]}x{shape[-1]}; use a shift below {side} (translate:{max(side // 8, 1)} "
                            f"is usual)")

    def plan(self, count: int, seed: int, epoch: int, device: torch.device) -> EpochPlan:
        """The draws for the `count` positions of epoch `epoch`'s order, from a seed of their own (not one the
        permutation or the model's init draws from)."""
        import torch

        digest = hashlib.blake2b(f"imgcls augment {seed} {epoch}".encode(), digest_size=8).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest, "little"))
        flip = (torch.rand(count, generator=generator) < 0.5).to(device) if self.flip else None
        offsets = None
        if self.shift is not None:
            offsets = torch.randint(-self.shift, self.shift + 1, (2, count), generator=generator).to(device)
        return EpochPlan(self, flip, offsets)


@dataclass
class EpochPlan:
    """One epoch's draws, by position in the epoch's order: flip (count,) bool; offsets (2, count) of (dy, dx)."""

    augmentation: Augmentation
    flip: torch.Tensor | None
    offsets: torch.Tensor | None

    def apply(self, images: torch.Tensor, rows: slice, part: slice = slice(None)) -> torch.Tensor:
        """The uint8 images (n, C, H, W) at positions `rows` of the epoch (of which this process has `part`),
        augmented with their draws."""
        flip = None if self.flip is None else self.flip[rows][part]
        offsets = None if self.offsets is None else self.offsets[:, rows][:, part]
        return augment_batch(images, flip, offsets, self.augmentation.reflect, self.augmentation.shift)


def augment_batch(images: torch.Tensor, flip: torch.Tensor | None, offsets: torch.Tensor | None,
                  reflect: bool = False, shift: int | None = None) -> torch.Tensor:
    """Each image mirrored left to right where `flip` is True, then moved down by dy and right by dx
    (`offsets` (2, n), at most `shift`), the uncovered border zeros or reflected. A new tensor."""
    import torch
    import torch.nn.functional as F

    n, channels, height, width = images.shape
    if offsets is None:
        offsets, shift = images.new_zeros((2, n), dtype=torch.int64), 0
    pad = int(offsets.abs().max()) if shift is None else shift
    # Padded once by the largest shift, each image reads its own window: one gather moves every channel of every
    # image at once (mirroring and padding commute, for either border).
    padded = F.pad(images, (pad,) * 4, mode="reflect" if reflect else "constant") if pad else images
    side = width + 2 * pad
    rows = torch.arange(height, device=images.device) + pad - offsets[0, :, None]
    cols = torch.arange(width, device=images.device) + pad - offsets[1, :, None]
    if flip is not None:
        cols = torch.where(flip[:, None], side - 1 - cols, cols)
    sources = (rows[:, :, None] * side + cols[:, None, :]).view(n, 1, height * width)
    return padded.flatten(2).gather(2, sources.expand(n, channels, height * width)).view(n, channels, height, width)


def parse_augmentation(text: str) -> Augmentation:
    """The spelling read; ValueError saying what is wrong."""
    parts = [part.strip() for part in text.split(",")]
    if parts == [OFF]:
        return Augmentation()
    given: dict[str, str] = {}  # name -> its argument
    for part in parts:
        name, _, argument = part.partition(":")
        if name not in NAMES:
            raise ValueError(f"unknown augmentation {shown(part)}{did_you_mean(name, NAMES)}")
        if name == OFF:
            raise ValueError("none stands alone (no augmentation)")
        if name in given:
            raise ValueError(f"{name} given twice")
        if name == "flip" and argument:
            raise ValueError("flip takes no number")
        given[name] = argument
    shift, reflect = _read_translate(given["translate"]) if "translate" in given else (None, False)
    return Augmentation("flip" in given, shift, reflect)


def _read_translate(argument: str) -> tuple[int, bool]:
    pixels, _, border = argument.partition(":")
    if not (pixels.isascii() and pixels.isdigit()):
        raise ValueError("the shift of translate must be a whole number of pixels, 0 or more")
    if len(pixels) > MAX_SHIFT_DIGITS:
        raise ValueError(f"a shift of {pixels[:20]} pixels is far larger than any image")
    if border not in ("", *BORDERS):
        raise ValueError(f"unknown border {shown(border)}{did_you_mean(border, BORDERS)}")
    return int(pixels), border == "reflect"


def augment_problem(value: str, name: str) -> str | None:
    """A config check: what is wrong with this spelling, or None."""
    try:
        parse_augmentation(value)
    except ValueError as error:
        return f"{name} {shown(value)}: {error}; write {SPELLING}"
    return None


def read_augmentation(value: str | None) -> Augmentation | None:
    """The config's value as the batches use it: None when there is nothing to do."""
    augmentation = None if value is None else parse_augmentation(value)
    return augmentation if augmentation is not None and augmentation.active else None


def canonical_augmentation(value: str | None) -> str | None:
    """The one spelling config.yaml keeps: None for no augmentation, else as str(Augmentation) writes it."""
    augmentation = read_augmentation(value)
    return None if augmentation is None else str(augmentation)
