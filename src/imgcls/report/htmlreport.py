"""RUN/report.html: a run as one self-contained web page.

The config, learning curves, per-class precision/recall/F1, the confusion matrix, the templates,
the most confused pairs, and a gallery of test images: the ones the model got most confidently
wrong and the most typical right ones. Every picture is embedded as a data: URI (base64 PNG) and
the style sheet is inline, so the one file can be mailed or archived and still shows everything.

The figures are the run folder's own PNGs (figures.py draws them); the gallery scores the run's test
split, read as `eval` reads it (through the decoded cache), with the best checkpoint.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path

from imgcls.errors import UserError
from imgcls.files import printable, write_text_atomic
from imgcls.linear.metrics import per_class_scores
from imgcls.runs.rundir import RunDir, epoch_topk, topk_of

GALLERY_WRONG = 12  # thumbnails of each kind: the page stays small and quick to write
GALLERY_RIGHT = 12
THUMBNAIL_MAX = 96  # pixels a side; larger images are shrunk before they are embedded
SCORE_CHUNK = 2048  # test images scored at once (bounded memory on large test splits)
TEMPLATE = "runpage.html.j2"


def gallery_picks(confidence, predicted, labels, wrong: int = GALLERY_WRONG, right: int = GALLERY_RIGHT):
    """Indices of the most confidently wrong images (highest probability of the predicted class) and of the most
    typical right ones: each class's most confident hits in turn, so that every class shows."""
    import torch

    order = torch.argsort(confidence, descending=True, stable=True)
    hit = (predicted == labels)[order]
    wrong_picks = order[~hit][:wrong].tolist()
    hits = order[hit]
    by_class = [hits[labels[hits] == c].tolist() for c in labels[hits].unique().tolist()]
    right_picks, rank = [], 0
    while len(right_picks) < right and any(rank < len(members) for members in by_class):
        right_picks += [members[rank] for members in by_class if rank < len(members)]
        rank += 1
    right_picks = sorted(right_picks[:right], key=lambda i: -float(confidence[i]))
    return wrong_picks, right_picks


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def thumbnail(image) -> str:
    """A uint8 (C, H, W) image as a PNG data URI, shrunk to THUMBNAIL_MAX pixels a side if larger."""
    import numpy as np
    from matplotlib.image import imsave

    side = max(image.shape[-2:])
    if side > THUMBNAIL_MAX:
        from torchvision.transforms.v2.functional import resize

        h, w = image.shape[-2:]
        image = resize(image, [max(1, h * THUMBNAIL_MAX // side), max(1, w * THUMBNAIL_MAX // side)], antialias=True)
    pixels = image.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    if pixels.shape[2] == 1:
        imsave(buffer, pixels[:, :, 0], format="png", cmap="gray", vmin=0, vmax=255)
    else:
        imsave(buffer, np.ascontiguousarray(pixels), format="png")
    return png_data_uri(buffer.getvalue())


@dataclass
class Gallery:
    wrong: list[dict] = field(default_factory=list)  # {"src", "true", "predicted", "probability"}
    right: list[dict] = field(default_factory=list)
    note: str = ""  # why there is no gallery


def load_gallery(run: RunDir) -> Gallery:
    """Score the run's test split with its best checkpoint and pick the gallery's images. Without the data (moved,
    deleted, a --stream run) the page goes without a gallery and says why."""
    from imgcls.runs import checkpoint as ckpt

    if not run.best.is_file():
        return Gallery(note="no best.safetensors in the run folder: no model to score the test images with")
    checkpoint = ckpt.load(run.best)
    if checkpoint.meta.get("config", {}).get("data", {}).get("dataset") == "features":
        return Gallery(note="not drawn for --dataset features: its test split holds feature vectors, not images")
    if checkpoint.meta.get("config", {}).get("data", {}).get("stream"):
        return Gallery(note="not drawn for a --stream run: its test images are decoded from their files, which "
                            "would make writing this page as slow as a test evaluation")
    try:
        images, labels = _test_split(checkpoint)
    except UserError as error:
        return Gallery(note=f"the test images could not be read ({printable(error)})")
    confidence, predicted = _scores(checkpoint, images)
    wrong, right = gallery_picks(confidence, predicted, labels)
    classes = checkpoint.classes

    def item(i: int) -> dict:
        return {"src": thumbnail(images[i]), "true": classes[int(labels[i])], "predicted": classes[int(predicted[i])],
                "probability": float(confidence[i])}

    return Gallery([item(i) for i in wrong], [item(i) for i in right])


def _test_split(checkpoint):
    """The test split as training read it (the decoded cache, the run's --image-size), never downloading."""
    import dataclasses

    from imgcls.data.prepare import load_decoded
    from imgcls.runs.evaluate import data_config_of

    config = dataclasses.replace(data_config_of(checkpoint, None), download=False)
    split, _ = load_decoded(config, "test")
    if split.classes != checkpoint.classes or tuple(split.images.shape[1:]) != checkpoint.input_shape:
        raise UserError(f"the data found in {config.data_dir or 'the default data dir'} is not the data this run was "
                        f"trained on")
    return split.images, split.labels


def _scores(checkpoint, images):
    """The probability of each image's predicted class, and that class, as `predict` computes them."""
    import torch

    from imgcls.runs.predict import normalized

    model = checkpoint.model().eval()
    confidence, predicted = [], []
    with torch.inference_mode():
        for chunk in images.split(SCORE_CHUNK):
            probabilities = torch.softmax(model(normalized(chunk, checkpoint, torch.device("cpu"))).double(), dim=1)
            top = probabilities.max(dim=1)
            confidence.append(top.values)
            predicted.append(top.indices)
    return torch.cat(confidence), torch.cat(predicted)


def _embedded(path: Path) -> str | None:
    return png_data_uri(path.read_bytes()) if path.is_file() else None


def page_context(run_path: Path, class_names: Path | None = None) -> dict:
    """Everything the template shows, from the run folder (and, for the gallery, its test split)."""
    from imgcls.report.runreport import config_rows, load_run

    summary = load_run(run_path, class_names=class_names)
    run = RunDir(summary.path)
    metrics = summary.metrics
    detail = (metrics or {}).get("test_detail", {})
    confusion = detail.get("confusion") or []
    per_class = [{"name": name, **scores, "top1": top1} for name, scores, top1 in
                 zip(summary.classes, per_class_scores(confusion), detail.get("per_class", []))]
    data = summary.config.get("data")
    return {"name": printable(summary.path.resolve().name), "path": printable(summary.path),
            "dataset": data.get("dataset", "?") if isinstance(data, dict) else "?",
            "config": config_rows(summary.config), "epochs": summary.epochs, "metrics": metrics,
            "k": metrics["test"]["k"] if metrics else epoch_topk(summary.epochs[0])[0] if summary.epochs else 5,
            "diverged": summary.diverged, "per_class": per_class, "pairs": summary.pairs,
            "superclasses": summary.superclasses,
            "curves": _embedded(run.curves), "confusion": _embedded(run.confusion),
            "templates": _embedded(run.templates),
            "gallery": load_gallery(run) if metrics else Gallery(note="the run did not finish")}


def render_page(context: dict) -> str:
    from importlib.resources import files

    import jinja2

    # autoescape: class names and config values come from the user's folders and may hold <, & or quotes
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                                     lstrip_blocks=True)
    template = environment.from_string(files("imgcls.report").joinpath(TEMPLATE).read_text(encoding="utf-8"))
    return template.render(**context, topk_of=topk_of, epoch_topk=epoch_topk)


def write_run_page(run_dir: Path, class_names: Path | None = None) -> Path:
    """Write RUN/report.html; a folder that is not a run is a UserError (load_run's)."""
    path = RunDir(Path(run_dir)).report_page
    write_text_atomic(path, render_page(page_context(Path(run_dir), class_names)))
    return path
