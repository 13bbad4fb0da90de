"""Use a trained model on image files: each is decoded, resized, made grey for a grey model and normalized by the
same code that prepared training's images, scored, and its top-k classes returned with softmax probabilities."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from imgcls.data.decode import decode_image_bytes, error_reason, resize, to_grey_if_grey
from imgcls.data.features import rows_to_predict
from imgcls.data.normalize import PixelNormalizer
from imgcls.data.readers import IMAGE_EXTENSIONS, is_image_name, read_image_file, walk_files
from imgcls.data.types import Normalization
from imgcls.device import resolve_device
from imgcls.errors import UserError
from imgcls.runs.checkpoint import Checkpoint


@dataclass
class Prediction:
    image: str
    classes: list[str]  # the top-k class names, most probable first
    probabilities: list[float]

    def as_dict(self) -> dict:
        return {"image": self.image, "class": self.classes[0], "probability": self.probabilities[0],
                "top": [{"class": name, "probability": p} for name, p in zip(self.classes, self.probabilities)]}


@dataclass
class Predictions:
    items: list[Prediction]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, why) with --skip-bad-images
    resized: int = 0  # images resized to the checkpoint's input size because they had another size


def list_images(paths: list[Path]) -> list[Path]:
    """Files as given; a folder gives its image files, recursively and sorted, as training lists a class folder (less
    hidden files and folders). A symlink to nothing or a FIFO is listed: reading it says what it is."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = [Path(p) for p in walk_files(path) if is_image_name(p)]
            inside = [p for p in inside if not any(part.startswith(".") for part in p.relative_to(path).parts)]
            if not inside:
                raise UserError(f"folder {path} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            found.extend(inside)
        elif os.path.lexists(path):
            found.append(path)
        else:
            raise UserError(f"image {path} does not exist; pass image files or a folder of them")
    return found


def prepare_image(data: bytes, checkpoint: Checkpoint) -> tuple[torch.Tensor, bool]:
    """Encoded bytes -> uint8 (C, H, W) in the checkpoint's input shape; also whether it had to be resized."""
    from torchvision.transforms.v2.functional import resize as tv_resize, rgb_to_grayscale

    channels, height, width = checkpoint.input_shape
    image_size = checkpoint.meta.get("config", {}).get("data", {}).get("image_size")
    image = decode_image_bytes(data, image_size)  # RGB, resized as training resized if it did
    resized = tuple(image.shape[-2:]) != (height, width)
    if resized:  # a square one as training resizes
        image = resize(image, height) if height == width else tv_resize(image, [height, width], antialias=True)
    if channels == 1:
        image = to_grey_if_grey(image.unsqueeze(0))[0]
        if image.shape[0] != 1:  # a colour image for a grey model: its luminance
            image = rgb_to_grayscale(image, num_output_channels=1)
    return image.contiguous(), resized


def normalized(images: torch.Tensor, checkpoint: Checkpoint, device: torch.device) -> torch.Tensor:
    """uint8 (N, C, H, W) -> the float (N, C*H*W) rows training fed the model, through the same code."""
    return PixelNormalizer(Normalization(checkpoint.mean, checkpoint.std), device)(images.flatten(1))


@torch.inference_mode()
def predict(checkpoint: Checkpoint, paths: list[Path], k: int = 5, device_name: str = "cpu",
            skip_bad: bool = False, chunk: int = 1024) -> Predictions:
    device = resolve_device(device_name)
    result = Predictions([])
    images, names = [], []
    for path in paths:
        try:
            image, resized = prepare_image(read_image_file(path), checkpoint)
        except (RuntimeError, ValueError, OSError) as error:
            why = error_reason(error)
            if skip_bad:
                result.skipped.append((str(path), why))
                continue
            raise UserError(f"cannot read image {path} ({why}); fix or remove it, or pass --skip-bad-images") from None
        result.resized += resized
        images.append(image)
        names.append(str(path))
    result.items = _top_k(checkpoint, device, k, names, images, chunk)
    return result


@torch.inference_mode()
def predict_features(checkpoint: Checkpoint, path: Path, k: int = 5, device_name: str = "cpu",
                     chunk: int = 4096) -> Predictions:
    """A features model's top-k for each row of a features file, named FILE[row], normalized as in training."""
    device = resolve_device(device_name)
    rows = rows_to_predict(path, checkpoint.weight.shape[1])
    names = [f"{path.name}[{row}]" for row in range(len(rows))]
    return Predictions(_top_k(checkpoint, device, k, names, rows, chunk))


def _top_k(checkpoint: Checkpoint, device: torch.device, k: int, names: list[str], inputs, chunk: int) \
        -> list[Prediction]:
    """Each input's k likeliest classes with their softmax probabilities, `chunk` inputs (the rows of a tensor, or
    a list of images, stacked a chunk at a time: the list is never copied whole) at a time."""
    model = checkpoint.model().to(device).eval()
    k = max(1, min(k, len(checkpoint.classes)))
    items = []
    for start in range(0, len(inputs), chunk):
        part = inputs[start:start + chunk]
        part = part if isinstance(part, torch.Tensor) else torch.stack(part)
        scores = model(normalized(part, checkpoint, device)).float()
        top = scores.topk(k, dim=1)
        probabilities = torch.softmax(scores.double(), dim=1).gather(1, top.indices).tolist()
        items += [Prediction(name, [checkpoint.classes[i] for i in indices], chances)
                  for name, indices, chances in zip(names[start:start + chunk], top.indices.tolist(), probabilities)]
    return items


def to_csv(predictions: list[Prediction]) -> str:
    """One row per image: image, class_1, probability_1, ..., class_k, probability_k."""
    k = max((len(p.classes) for p in predictions), default=0)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image"] + [f"{what}_{rank}" for rank in range(1, k + 1) for what in ("class", "probability")])
    for p in predictions:
        writer.writerow([p.image] + [value for pair in zip(p.classes, p.probabilities)
                                     for value in (pair[0], f"{pair[1]:.6g}")])
    return buffer.getvalue()
