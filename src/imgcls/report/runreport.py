"""`imgcls report RUN_DIR`: a finished (or interrupted) run, read back from its folder.

The config (keys that differ from the defaults in bold), the epochs with the best one marked, the
validation and test metrics of the best epoch, per-class test top-1, and the class pairs the model
confuses most. Only the run folder's own files are read; the dataset is not needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from imgcls.errors import UserError
from imgcls.files import printable
from imgcls.report.report import fitted_table
from imgcls.runs.rundir import epoch_topk, topk_of


@dataclass
class RunSummary:
    path: Path
    config: dict
    epochs: list[dict]
    metrics: dict | None  # None: the run did not finish (no metrics.json)
    pairs: list[dict] = field(default_factory=list)
    diverged: str | None = None  # diverged.txt: why training stopped
    retry: str = ""  # the command that tries again with a lower learning rate

    @property
    def classes(self) -> list[str]:
        return self.metrics["classes"] if self.metrics else []

    @property
    def superclasses(self) -> list[tuple[str, float]]:
        """(superclass, test top-1 at that level) for datasets with superclasses; [] otherwise (or from an older
        imgcls, whose metrics.json has no per-superclass figures)."""
        names = (self.metrics or {}).get("superclasses")
        values = (self.metrics or {}).get("test_detail", {}).get("per_superclass")
        fine = (isinstance(names, list) and isinstance(values, list) and len(names) == len(values)
                and all(isinstance(n, str) for n in names)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values))
        return list(zip(names, values)) if fine else []

    def as_dict(self) -> dict:
        out = {"run_dir": str(self.path), "config": self.config, "epochs": len(self.epochs)}
        if self.diverged:
            out.update({"diverged": self.diverged, "retry": self.retry})
        if self.metrics:
            detail = self.metrics.get("test_detail", {})
            out.update({"best_epoch": self.metrics["best_epoch"], "val": self.metrics["val"],
                        "test": self.metrics["test"],
                        "per_class": dict(zip(self.classes, detail.get("per_class", []))),
                        "per_superclass": dict(self.superclasses),
                        "confused_pairs": self.pairs})
        return out


def confused_pairs(confusion: list[list[int]], classes: list[str], count: int = 5) -> list[dict]:
    """The off-diagonal cells with the most images: (true class, predicted class), largest first;
    `share` is the part of the true class's test images that went to the predicted one."""
    cells = []
    for i, row in enumerate(confusion):
        total = sum(row)
        for j, value in enumerate(row):
            if i != j and value > 0:
                cells.append({"true": classes[i], "predicted": classes[j], "count": int(value),
                              "share": value / total if total else 0.0})
    cells.sort(key=lambda cell: (-cell["count"], -cell["share"], cell["true"], cell["predicted"]))
    return cells[:count]


def _not_a_sweep(run) -> None:
    """A sweep's folder is no run's: point to the run it chose and to its table."""
    from imgcls.runs.sweepdir import BEST, SPEC, TABLE

    path = run.path
    if (path / SPEC).is_file() and not run.config.is_file():
        raise UserError(f"{printable(path)} is a sweep folder, not a run folder: pass its chosen run, "
                        f"{printable(path / BEST)}, or read every point's results in {printable(path / TABLE)}")


def load_run(path: Path, pairs: int = 5, class_names: Path | None = None) -> RunSummary:
    """The run folder's files; class_names: a names file (classnames.py) the classes are shown by."""
    from imgcls.runs.rundir import RunDir

    run = RunDir.existing(path)
    _not_a_sweep(run)
    config, metrics, diverged = run.read_config(), run.read_metrics(class_names), run.read_diverged()
    summary = RunSummary(run.path, config, run.read_epochs(), metrics, diverged=diverged,
                         retry=run.retry_command() if diverged else "")
    if metrics and metrics.get("test_detail", {}).get("confusion"):
        summary.pairs = confused_pairs(metrics["test_detail"]["confusion"], metrics["classes"], pairs)
    return summary


def config_rows(config: dict) -> list[tuple[str, str, bool]]:
    """(section.key, value as text, whether it differs from the default) for every key of a saved config."""
    from imgcls.config import Config

    defaults = Config().to_dict()
    rows = []
    for section, values in config.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            changed = defaults.get(section, {}).get(key, object()) != value
            rows.append((f"{section}.{key}", "null" if value is None else str(value), changed))
    return rows


def config_table(config: dict) -> Table:
    table = Table(title="config (*: not the default)")
    table.add_column("")
    table.add_column("key")
    table.add_column("value")
    for key, value, changed in config_rows(config):
        table.add_row("*" if changed else "", Text(printable(key)), Text(printable(value)),
                      style="bold" if changed else "dim")
    return table


EPOCH_COLUMNS = [("epoch", "right"), ("train\nloss", "right"), ("train\ntop-1", "right"), ("val\nloss", "right"),
                 ("val\ntop-1", "right"), ("val\ntop-k", "right"), ("lr", "right"), ("seconds", "right"),
                 ("lr\nlast", "right")]  # most important first: at a narrow terminal the last are left out


def epochs_table(epochs: list[dict], best_epoch: int | None, width: int | None = None, k: int | None = None) -> Table:
    """One row an epoch; at a narrow terminal the last columns are left out, never cut (report.fitted_table).
    k: the run's top-k (metrics.json's; default: the k the records' key names)."""
    rows = []
    columns = [(f"val\ntop-{k or epoch_topk(epochs[0])[0]}", "right") if header == "val\ntop-k" else (header, justify)
               for header, justify in EPOCH_COLUMNS] if epochs else EPOCH_COLUMNS
    for record in epochs:
        mark = " *" if record["epoch"] == best_epoch else ""
        lr_last = record.get("lr_last")
        rows.append([f"{record['epoch']}{mark}", f"{record['train_loss']:.4f}", f"{record['train_top1']:.2%}",
                     f"{record['val_loss']:.4f}", f"{record['val_top1']:.2%}", f"{epoch_topk(record)[1]:.2%}",
                     f"{record['lr']:.3g}", f"{record['seconds']:.2f}", "" if lr_last is None else f"{lr_last:.3g}"])
    return fitted_table("epochs (* lowest validation loss)", columns, rows, width, keep=5)


def per_class_table(summary: RunSummary) -> Table:
    detail = summary.metrics.get("test_detail", {})
    confusion = detail.get("confusion") or []
    from imgcls.linear.metrics import per_class_scores

    columns = [("class", "left"), ("images", "right"), ("top-1", "right"), ("precision", "right"), ("F1", "right"),
               ("most often taken for", "left")]
    rows = []
    scores = per_class_scores(confusion)
    for index, (name, accuracy) in enumerate(zip(summary.classes, detail.get("per_class", []))):
        row = confusion[index] if index < len(confusion) else []
        score = scores[index] if index < len(scores) else None
        others = [(count, j) for j, count in enumerate(row) if j != index and count > 0]
        mistaken = ""
        if others:
            count, j = max(others, key=lambda pair: (pair[0], -pair[1]))
            mistaken = f"{summary.classes[j]} ({count})"
        rows.append([Text(printable(name)), str(sum(row)) if row else "", f"{accuracy:.2%}",
                     f"{score['precision']:.2%}" if score else "", f"{score['f1']:.3f}" if score else "",
                     Text(printable(mistaken))])
    return fitted_table("per-class test top-1 (the class's recall), precision and F1", columns, rows, keep=3,
                        fold_first=True, whole="a wider terminal or --json shows them")


def pairs_table(pairs: list[dict]) -> Table:
    columns = [("true class", "left"), ("predicted as", "left"), ("images", "right"),
               ("share of the true class", "right")]
    rows = [[Text(printable(pair["true"])), Text(printable(pair["predicted"])), str(pair["count"]),
             f"{pair['share']:.1%}"] for pair in pairs]
    return fitted_table("most confused class pairs (test split)", columns, rows, keep=2, fold_first=True,
                        whole="a wider terminal or --json shows them")


def render(summary: RunSummary) -> Group:
    from imgcls.linear.metrics import Metrics
    from imgcls.report.report import Reporter

    path = escape(printable(summary.path))
    parts: list = [f"[bold]run[/] {path}", config_table(summary.config)]
    best = summary.metrics["best_epoch"] if summary.metrics else None
    if summary.epochs:
        parts.append(epochs_table(summary.epochs, best, k=summary.metrics["test"]["k"] if summary.metrics else None))
    if summary.metrics is None and summary.diverged:
        parts.append(f"[red]the run diverged:[/] {escape(summary.diverged)}\nResuming it would diverge again the "
                     f"same way; start a new run with a lower --lr: {escape(summary.retry)}")
    if summary.metrics is None:
        if not summary.diverged:
            parts.append(f"[yellow]no metrics.json: the run did not finish[/] (resume it with imgcls train --resume "
                         f"{path})")
        return Group(*parts)
    data = summary.config.get("data")
    dataset = data.get("dataset", "?") if isinstance(data, dict) else "?"
    rows = {split: Metrics.of_summary(summary.metrics[split]) for split in ("val", "test")}
    refit = summary.metrics.get("refit")
    if isinstance(refit, dict):  # the epochs above are what chose; the model is the refit on every training image
        parts.append(f"refit on all {refit.get('images', '?')} training images for {refit.get('epochs', '?')} "
                     f"epoch(s), chosen on {escape(str(refit.get('chosen_on', '?')))}: the val row holds those "
                     f"held-out figures, the test row the refit model's")
    parts.append(Reporter().metrics_table(f"{printable(str(dataset))}: best epoch {best}", rows))
    if summary.metrics.get("test_detail", {}).get("per_class"):
        parts.append(per_class_table(summary))
    if summary.superclasses:
        parts.append(Reporter().superclass_table(summary.superclasses))
    if summary.pairs:
        parts.append(pairs_table(summary.pairs))
    return Group(*parts)
