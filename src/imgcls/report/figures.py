"""The pictures: a run's learning curves, confusion heat map and templates grid; a sweep's and a search's figures.
Drawn on matplotlib Figure objects (no pyplot state, no display), at a fixed size in pixels, written atomically."""

from __future__ import annotations

import math
from pathlib import Path

from imgcls.errors import UserError
from imgcls.files import printable, write_atomic
from imgcls.runs.rundir import RunDir

DPI = 100
CURVES_FIGSIZE = (10.0, 4.0)  # inches: 1000 x 400 pixels
CURVES_LR_FIGSIZE = (14.0, 4.0)  # with the learning-rate panel (records that have "lr"): 1400 x 400 pixels
ANNOTATE_UP_TO = 20  # classes; beyond that the counts in the cells would be unreadable
NAME_UP_TO = 150  # classes; beyond that the confusion matrix is labelled with class indices


def confusion_figsize(num_classes: int) -> tuple[float, float]:
    """Grows with the number of classes so that their names stay readable."""
    side = min(max(4.0 + 0.5 * num_classes, 6.0), 24.0)
    return side + 1.5, side  # the extra width holds the colour bar


def _figure(figsize: tuple[float, float], layout: str | None = "constrained"):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=DPI, layout=layout)


def _save(figure, path: Path) -> Path:
    write_atomic(path, lambda temporary: figure.savefig(temporary, format="png", dpi=DPI))
    return path


def learning_curves(epochs: list[dict], path: Path, best_epoch: int | None = None, title: str = "") -> Path:
    """Loss and top-1 per epoch, train and validation, from epochs.jsonl's records; and the learning rate when the
    records have it (lr: the epoch's first update, lr_last: its last), on a log scale past a factor of ten."""
    with_lr = all("lr" in record for record in epochs)
    figure = _figure(CURVES_LR_FIGSIZE if with_lr else CURVES_FIGSIZE)
    axes = figure.subplots(1, 3 if with_lr else 2)
    x = [record["epoch"] for record in epochs]
    marker = "o" if len(epochs) <= 30 else None
    for axis, key, label, scale in ((axes[0], "loss", "loss", 1.0), (axes[1], "top1", "top-1 accuracy (%)", 100)):
        for split, style in (("train", "-"), ("val", "--")):
            values = [record[f"{split}_{key}"] * scale for record in epochs]
            axis.plot(x, values, style, marker=marker, markersize=4,
                      label="train (running, during the epoch)" if split == "train" else "validation")
        if best_epoch is not None:
            axis.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch ({best_epoch})")
        _epoch_axis(axis, label)
    if with_lr:
        first = [record["lr"] for record in epochs]
        axes[2].plot(x, first, "-", marker=marker, markersize=4, label="first update of the epoch")
        if all(record.get("lr_last") is not None for record in epochs):
            axes[2].plot(x, [record["lr_last"] for record in epochs], "--", marker="x" if marker else None,
                         markersize=4, label="last update of the epoch")
        if min(first) > 0 and max(first) > 10 * min(first):
            axes[2].set_yscale("log")
        _epoch_axis(axes[2], "learning rate")
    figure.suptitle(title or "learning curves")
    return _save(figure, path)


def _epoch_axis(axis, label: str) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    axis.set_xlabel("epoch")
    axis.set_ylabel(label)
    axis.set_title(label.split(" (")[0])
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)


def confusion_heatmap(confusion: list[list[int]], classes: list[str], path: Path, title: str = "") -> Path:
    """Rows are true classes, columns predicted ones; colour is the share of the row, cells show counts."""
    import numpy as np

    counts = np.asarray(confusion, dtype=np.int64)
    k = len(classes)
    if counts.shape != (k, k):
        raise ValueError(f"a confusion matrix of shape {counts.shape} does not fit {k} classes")
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    w, h = confusion_figsize(k)
    figure = _figure((w, h), layout=None)  # placed by hand: a layout engine measures every label, twice
    fontsize = max(3.0, min(9.0, 0.6 * 72 * 0.8 * h / k))  # a name fits in its row: 60% of its height
    rotation = 45 if k <= 10 else 90
    longest = max(len(name) for name in classes) if k <= NAME_UP_TO else 4
    names = longest * fontsize * 0.6 / 72 + 0.1  # inches a class name takes
    left, bottom = names + 0.45, names * (0.75 if rotation == 45 else 1.0) + 0.45
    top, right = 0.45, 1.5  # the title; the colour bar and its label
    side = max(0.5, min(w - left - right, h - bottom - top))
    axis = figure.add_axes((left / w, bottom / h, side / w, side / h))
    bar = figure.add_axes(((left + side + 0.15) / w, bottom / h, 0.2 / w, side / h))
    image = axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
    figure.colorbar(image, cax=bar, label="share of the true class")
    if k <= NAME_UP_TO:
        axis.set_xticks(range(k), classes, rotation=rotation, ha="right" if rotation == 45 else "center",
                        rotation_mode="anchor" if rotation == 45 else "default", fontsize=fontsize)
        axis.set_yticks(range(k), classes, fontsize=fontsize)
        axis.set_xlabel("predicted class")
        axis.set_ylabel("true class")
    else:  # a name per row would be too small to read: class indices, in the order of metrics.json's "classes"
        axis.set_xlabel("predicted class (index in metrics.json's classes)")
        axis.set_ylabel("true class (index)")
    if k <= ANNOTATE_UP_TO:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    axis.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                              color="white" if shares[i, j] > 0.5 else "black")
    axis.set_title(title or "confusion matrix")
    return _save(figure, path)


def write_run_figures(run_dir: Path, class_names: Path | None = None) -> list[Path]:
    """Draw every figure the run folder has the files for, the classes named by class_names (a names file); the
    paths written. A folder without epochs.jsonl, metrics.json or best.safetensors is not a run: a UserError."""
    from imgcls.report.templates import export_templates
    from imgcls.runs import checkpoint as ckpt

    run = RunDir.existing(run_dir)
    metrics, epochs = run.read_metrics(class_names), run.read_epochs()
    if not epochs and metrics is None and not run.best.is_file():
        raise UserError(f"{printable(run.path)} is not a run folder (no epochs.jsonl, metrics.json or "
                        f"best.safetensors); pass the --out folder of a training run")
    written = []
    best_epoch = metrics["best_epoch"] if metrics else None
    if epochs:
        title = f"learning curves: {printable(run.path.resolve().name)}"
        written.append(learning_curves(epochs, run.curves, best_epoch, title))
    if metrics and metrics.get("test_detail", {}).get("confusion"):
        test = metrics["test"]
        title = (f"confusion matrix, test split: {test['count']} images, top-1 {test['top1']:.1%}"
                 f" (best epoch {best_epoch})")
        written.append(confusion_heatmap(metrics["test_detail"]["confusion"], metrics["classes"], run.confusion,
                                         title))
    if run.best.is_file():
        best = ckpt.load(run.best)
        if class_names is not None:
            from imgcls.data.classnames import named_classes

            best.meta["classes"] = named_classes(best.classes, class_names)
        if best.meta["dataset"] != "features":  # a features model's rows of W are not pictures
            written += export_templates(best, run.path, grid_only=True)  # templates.png, export-templates' defaults
    return written


def validation_curves(runs: list[tuple[str, list[dict], int | None]], path: Path) -> Path:
    """Several runs' validation loss and top-1 per epoch overlaid, each run's best epoch ringed; runs: (label,
    epochs.jsonl's records, best epoch or None)."""
    figure = _figure(CURVES_FIGSIZE)
    loss_axis, top1_axis = figure.subplots(1, 2)
    for label, epochs, best_epoch in runs:
        x = [record["epoch"] for record in epochs]
        for axis, key, scale in ((loss_axis, "val_loss", 1.0), (top1_axis, "val_top1", 100)):
            values = [record[key] * scale for record in epochs]
            line, = axis.plot(x, values, marker="o" if len(x) <= 30 else None, markersize=3, label=label)
            if best_epoch in x:
                axis.plot([best_epoch], [values[x.index(best_epoch)]], "o", markersize=9, fillstyle="none",
                          color=line.get_color())
    for axis, label in ((loss_axis, "validation loss"), (top1_axis, "validation top-1 accuracy (%)")):
        _epoch_axis(axis, label)
    figure.suptitle(f"validation curves of {len(runs)} runs (rings: each run's best epoch)")
    return _save(figure, path)


def sweep_figure(records: list[dict], grid: dict[str, list[str]], path: Path, best: int | None = None) -> Path:
    """Validation top-1 over a sweep's grid: a heat map for two options, a line against one (log-scaled when its
    values are numbers spread over a decade or more), else the points as bars, best first."""
    varied = [name for name, values in grid.items() if len(values) > 1]
    # a diverged point has no score to draw: NaN, never 0 or the top-1 of its last good epoch; each kind marks it
    value = {r["point"]: float("nan") if r["diverged"] or r["val_top1"] is None else r["val_top1"] * 100
             for r in records}
    if len(varied) == 2 and len(records) == len(grid[varied[0]]) * len(grid[varied[1]]):
        return _save(_sweep_heatmap(records, varied, grid, value), path)
    if len(varied) == 1 and len(records) == len(grid[varied[0]]):
        return _save(_sweep_line(records, varied[0], grid[varied[0]], value, best), path)
    return _save(_sweep_bars(records, value, best), path)


def _sweep_heatmap(records, varied, grid, value):
    import matplotlib

    rows, columns = grid[varied[0]], grid[varied[1]]
    figure = _figure((max(8.0, 3.0 + 1.3 * len(columns)), max(5.5, 2.0 + 0.8 * len(rows))))
    axis = figure.subplots()
    cells = [[math.nan] * len(columns) for _ in rows]
    for record in records:
        cells[rows.index(record["options"][varied[0]])][columns.index(record["options"][varied[1]])] = \
            value[record["point"]]
    colours = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")  # diverged cells: grey
    image = axis.imshow(cells, cmap=colours, aspect="auto")
    finite = [cell for row in cells for cell in row if not math.isnan(cell)] or [0.0]
    dark = max(finite) - (max(finite) - min(finite)) / 3
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            text, colour = ("diverged", "tab:red") if math.isnan(cell) else \
                (f"{cell:.1f}", "white" if cell < dark else "black")
            axis.text(j, i, text, ha="center", va="center", color=colour, fontsize=11)
    axis.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    axis.set_yticks(range(len(rows)), rows)
    axis.set_xlabel(varied[1])
    axis.set_ylabel(varied[0])
    figure.colorbar(image, ax=axis, label="validation top-1 (%)")
    figure.suptitle("sweep: validation top-1")
    return figure


def _sweep_line(records, name: str, values: list[str], value, best: int | None):
    figure = _figure((9, 5.5))
    axis = figure.subplots()
    by_value = {record["options"][name]: record for record in records}
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        numbers = None
    x = numbers if numbers is not None else list(range(len(values)))
    y = [value[by_value[v]["point"]] for v in values]
    axis.plot(x, y, marker="o")  # a diverged point (NaN) breaks the line there
    lost = [position for position, top1 in zip(x, y) if math.isnan(top1)]
    if lost:
        low = min((top1 for top1 in y if not math.isnan(top1)), default=0.0)
        axis.plot(lost, [low] * len(lost), "x", color="tab:red", markersize=12, mew=2, label="diverged")
    if numbers is not None and min(numbers) > 0 and max(numbers) / min(numbers) >= 10:
        axis.set_xscale("log")
    if numbers is None:
        axis.set_xticks(x, values)
    if best is not None:
        chosen = next(r for r in records if r["point"] == best)
        axis.axvline(x[values.index(chosen["options"][name])], color="grey", linestyle=":", label="chosen")
    if best is not None or lost:
        axis.legend()
    axis.set_xlabel(name)
    axis.set_ylabel("validation top-1 (%)")
    axis.grid(alpha=0.3)
    figure.suptitle("sweep: validation top-1")
    return figure


SWEEP_BARS = 40  # the best this many points: a bar a point beyond that is unreadable (sweep.csv has them all)


def _sweep_bars(records, value, best: int | None):
    ranked = sorted(records, key=lambda r: (math.isnan(value[r["point"]]), -value[r["point"]]))[:SWEEP_BARS]
    figure = _figure((9, max(5.0, 1.5 + 0.4 * len(ranked))))
    axis = figure.subplots()
    labels = [" ".join(f"{k}={v}" for k, v in r["options"].items()) or "base" for r in ranked]
    colors = ["tab:orange" if r["point"] == best else "tab:blue" for r in ranked]
    axis.barh(range(len(ranked)), [0.0 if math.isnan(value[r["point"]]) else value[r["point"]] for r in ranked],
              color=colors)
    for position, record in enumerate(ranked):
        if math.isnan(value[record["point"]]):
            axis.text(0, position, " diverged", va="center", color="tab:red", fontsize=10)
    axis.set_yticks(range(len(ranked)), labels, fontsize=9)
    axis.invert_yaxis()
    axis.set_xlabel("validation top-1 (%)")
    shown = "" if len(records) <= SWEEP_BARS else f", the best {SWEEP_BARS} of {len(records)}"
    figure.suptitle(f"sweep: validation top-1 (orange: chosen; red: diverged{shown})")
    return figure


def lr_search_figure(rows: list[dict], path: Path, how: str) -> Path:
    """Held-out loss and top-1 against the learning rate (log scale), one line per weight decay; diverged
    settings are left out, the chosen one is ringed."""
    figure = _figure((10, 4))
    axes = figure.subplots(1, 2)
    chosen = next((row["lr"], row["weight_decay"]) for row in rows if row["chosen"])
    first = rows[0]["stage"]  # the stage that tried every setting
    rows = [dict(row, chosen=(row["lr"], row["weight_decay"]) == chosen) for row in rows if row["stage"] == first]
    decays = sorted({row["weight_decay"] for row in rows})
    for axis, key, label, scale in ((axes[0], "val_loss", "held-out loss", 1.0),
                                    (axes[1], "val_top1", "held-out top-1 (%)", 100.0)):
        for decay in decays:
            finite = [row for row in rows if row["weight_decay"] == decay and row[key] is not None
                      and not row["diverged"]]
            axis.plot([row["lr"] for row in finite], [row[key] * scale for row in finite], marker="o",
                      label=f"weight decay {decay:g}")
        for row in rows:
            if row["chosen"] and row[key] is not None:
                axis.plot([row["lr"]], [row[key] * scale], marker="o", markersize=14, fillstyle="none",
                          color="black", label="chosen")
        axis.set_xscale("log")
        if key == "val_loss":
            axis.set_yscale("log")  # a diverging rate's loss would flatten the others' into a line
        axis.set_xlabel("learning rate")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    figure.suptitle(f"search, stacked: {how}")
    return _save(figure, path)
