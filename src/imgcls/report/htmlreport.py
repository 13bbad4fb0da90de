"""RUN/report.html: a run as one self-contained web page (pictures as data: URIs, the style inline), to mail or
archive: the run folder's figures and tables, and a gallery of the test images the best checkpoint got most
confidently wrong and most typically right."""

from __future__ import annotations

import base64
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
    import io

    from PIL import Image  # not torchvision: importing it imports torch's compiler (seconds)

    pixels = image.permute(1, 2, 0).numpy()
    picture = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    picture.thumbnail((THUMBNAIL_MAX, THUMBNAIL_MAX))  # keeps the aspect ratio, never enlarges
    buffer = io.BytesIO()
    picture.save(buffer, format="png")
    return png_data_uri(buffer.getvalue())


def load_gallery(run: RunDir) -> dict | str:
    """The gallery's picks ({"wrong": [...], "right": [...]}) from the test split scored by the best checkpoint; or,
    where it cannot be drawn, a note why not."""
    from imgcls.runs import checkpoint as ckpt

    if not run.best.is_file():
        return "no best.safetensors in the run folder: no model to score the test images with"
    checkpoint = ckpt.load(run.best)
    data = checkpoint.meta.get("config", {}).get("data", {})
    if data.get("dataset") == "features":
        return "not drawn for --dataset features: its test split holds feature vectors, not images"
    if data.get("stream"):
        return ("not drawn for a --stream run: its test images are decoded from their files, which would make "
                "writing this page as slow as a test evaluation")
    try:
        images, labels = _test_split(checkpoint)
    except UserError as error:
        return f"the test images could not be read ({printable(error)})"
    confidence, predicted = _scores(checkpoint, images)
    wrong, right = gallery_picks(confidence, predicted, labels)
    classes = checkpoint.classes

    def item(i: int) -> dict:
        return {"src": thumbnail(images[i]), "true": classes[int(labels[i])], "predicted": classes[int(predicted[i])],
                "probability": float(confidence[i])}

    return {"wrong": [item(i) for i in wrong], "right": [item(i) for i in right]}


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
    with torch.inference_mode():
        tops = [torch.softmax(model(normalized(chunk, checkpoint, torch.device("cpu"))).double(), dim=1).max(dim=1)
                for chunk in images.split(SCORE_CHUNK)]
    return torch.cat([top.values for top in tops]), torch.cat([top.indices for top in tops])


def page_context(run_path: Path, class_names: Path | None = None) -> dict:
    """Everything the template shows, from the run folder (and, for the gallery, its test split)."""
    from imgcls.report.runreport import config_rows, load_run

    summary = load_run(run_path, class_names=class_names)
    run = RunDir(summary.path)
    per_class = [{"name": name, **scores} for name, scores in
                 zip(summary.classes, per_class_scores(summary.detail.get("confusion") or []))]
    return {"name": printable(summary.path.resolve().name), "path": printable(summary.path),
            "dataset": summary.dataset, "config": config_rows(summary.config), "epochs": summary.epochs,
            "metrics": summary.metrics, "k": summary.k, "diverged": summary.diverged, "per_class": per_class,
            "pairs": summary.pairs, "superclasses": summary.superclasses,
            **{name: png_data_uri(path.read_bytes()) if path.is_file() else None
               for name, path in (("curves", run.curves), ("confusion", run.confusion), ("templates", run.templates))},
            "gallery": load_gallery(run) if summary.metrics else "the run did not finish"}


def write_run_page(run_dir: Path, class_names: Path | None = None) -> Path:
    """Write RUN/report.html; a folder that is not a run is a UserError (load_run's)."""
    import jinja2

    # autoescape: class names and config values come from the user's folders and may hold <, & or quotes
    environment = jinja2.Environment(loader=jinja2.PackageLoader("imgcls.report", ""), autoescape=True,
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    page = environment.get_template(TEMPLATE).render(**page_context(Path(run_dir), class_names), topk_of=topk_of,
                                                     epoch_topk=epoch_topk)
    path = RunDir(Path(run_dir)).report_page
    write_text_atomic(path, page)
    return path
