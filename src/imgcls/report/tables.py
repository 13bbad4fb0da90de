"""The tables of datasets, gradcheck, cache info and predict; as in report.py, user text reaches rich as Text."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from imgcls.files import printable
from imgcls.report.report import fitted_table

if TYPE_CHECKING:
    from imgcls.data.catalog import DatasetInfo
    from imgcls.linear.gradcheck import GradcheckResult


def datasets_table(root: Path, infos: list[DatasetInfo]) -> Table:
    table = Table(title=Text(f"datasets (--dataset NAME); data dir: {root}"))
    for column, justify in (("dataset", "left"), ("classes", "left"), ("C×H×W", "right"), ("train", "right"),
                            ("test", "right"), ("present", "left")):
        flexible = column in ("classes", "present")
        table.add_column(column, justify=justify, no_wrap=not flexible, ratio=1 if flexible else None)
    for info in infos:
        shape = "×".join(map(str, info.shape)) if info.shape else "any"
        table.add_row(info.name, Text(_classes_text(info)), shape, f"{info.train:,}" if info.train else "-",
                      f"{info.test:,}" if info.test else "-", _presence_text(info))
    return table


def superclass_lines(infos: list[DatasetInfo]) -> list[str]:
    """Each dataset's superclasses, a line a dataset: too long for a table cell."""
    return [f"{info.name}'s {len(info.superclasses)} superclasses: {', '.join(info.superclasses)}"
            for info in infos if info.superclasses]


def _classes_text(info: DatasetInfo) -> str:
    if not info.classes:
        return f"{info.num_classes}, from the data" if info.num_classes else "from the data"
    text = f"{info.num_classes}: {', '.join(info.classes[:3])}{', ...' if len(info.classes) > 3 else ''}"
    return text + (f" in {len(info.superclasses)} superclasses" if info.superclasses else "")


def _presence_text(info: DatasetInfo) -> Text:
    """yes, no, or which file is damaged (file names may hold [brackets]: no markup from them)."""
    if info.damaged:
        return Text.assemble(("damaged or incomplete", "red"), f": {info.damaged}")
    return Text.assemble(("yes", "green"), f": {info.present}") if info.present else Text("no", style="dim")


def gradcheck_table(result: GradcheckResult) -> Table:
    """Each comparison's worst coordinates, their relative difference green within the tolerance, red beyond."""
    table = Table(title=f"gradient check: mean {result.loss} loss of f(x) = Wx + b; {result.batch_size} images, "
                        f"{result.classes} classes, {result.features} features; h = {result.eps:g}")
    for column, justify in (("comparison", "left"), ("at", "left"), ("first", "right"), ("second", "right"),
                            ("rel. diff.", "right")):
        table.add_column(column, justify=justify, no_wrap=column != "comparison")
    for comparison in result.comparisons:
        for rank, c in enumerate(comparison.worst):
            style = "green" if c.relative <= result.tolerance else "bold red"
            table.add_row(f"{comparison.title}\n({comparison.coordinates} coordinates)" if rank == 0 else "", c.name,
                          f"{c.first:.7e}", f"{c.second:.7e}", f"[{style}]{c.relative:.2e}[/]",
                          end_section=rank == len(comparison.worst) - 1)
    return table


def cache_table(directory: Path) -> Table:
    """The decoded datasets in the cache, and the folders of builds under way or killed."""
    from imgcls.data.cache import builder_alive, list_entries, staging_folders

    table = Table(title=Text(f"decoded-dataset cache: {directory}"))
    for column in ("entry", "dataset", "split", "images", "MB"):
        table.add_column(column, overflow="fold")
    for entry in list_entries(directory):
        identity = entry.meta.get("identity", {})
        shape = entry.meta.get("shape", ["?"])
        table.add_row(entry.path.name, str(identity.get("dataset", "?")), str(identity.get("split", "?")),
                      str(shape[0]), f"{entry.size_bytes / 1e6:.1f}")
    for staging in staging_folders(directory):
        size = sum(f.stat().st_size for f in staging.iterdir() if f.is_file())
        state = "(building)" if builder_alive(staging) else "(left by a killed build; removed by the next build)"
        table.add_row(staging.name, state, "", "", f"{size / 1e6:.1f}")
    return table


def predictions_table(loaded, items: list) -> Table:
    """A row an image: its top-k classes with probabilities. As wide as the terminal: the lowest ranks are left
    out (the caption says so); names fold, never get cut, and are shown below the folder all the images share."""
    k = len(items[0].classes)
    folder = Path(os.path.commonpath([os.path.dirname(item.image) for item in items]) or ".")
    rows = [[Text(printable(os.path.relpath(item.image, folder))),
             *(Text(f"{name} {p:.1%}") for name, p in zip(item.classes, item.probabilities))] for item in items]
    title = (f"{loaded.meta['dataset']}, epoch {loaded.meta['epoch']}: top-{k} of {len(loaded.classes)} classes; "
             f"images in {printable(folder)}")
    return fitted_table(title, [("image", "left")] + [(f"#{rank}", "left") for rank in range(1, k + 1)], rows, keep=2,
                        fold_first=True, whole="a wider terminal, --json or --csv shows them")
