"""`imgcls report RUN_DIR`: a finished (or interrupted) run read back from its folder alone, no dataset needed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from imgcls.errors import UserError
from imgcls.files import printable
from imgcls.report.report import WIDER, Reporter, fitted_table, per_class_table
from imgcls.runs.rundir import epoch_topk


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
    def detail(self) -> dict:
        return (self.metrics or {}).get("test_detail", {})

    @property
    def dataset(self) -> str:
        data = self.config.get("data")
        return str(data.get("dataset", "?")) if isinstance(data, dict) else "?"

    @property
    def k(self) -> int:
        """The run's top-k: metrics.json's, else the one the epoch records name."""
        return self.metrics["test"]["k"] if self.metrics else epoch_topk(self.epochs[0])[0] if self.epochs else 5

    @property
    def superclasses(self) -> list[tuple[str, float]]:
        """(superclass, test top-1 at that level); [] without them (or from an older imgcls, or damaged)."""
        names, values = (self.metrics or {}).get("superclasses"), self.detail.get("per_superclass")
        fine = (isinstance(names, list) and isinstance(values, list) and len(names) == len(values)
                and all(isinstance(n, str) for n in names)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values))
        return list(zip(names, values)) if fine else []

    def as_dict(self) -> dict:
        out = {"run_dir": str(self.path), "config": self.config, "epochs": len(self.epochs)}
        if self.diverged:
            out.update({"diverged": self.diverged, "retry": self.retry})
        if self.metrics:
            out.update({"best_epoch": self.metrics["best_epoch"], "val": self.metrics["val"],
                        "test": self.metrics["test"],
                        "per_class": dict(zip(self.classes, self.detail.get("per_class", []))),
                        "per_superclass": dict(self.superclasses), "confused_pairs": self.pairs})
        return out


def confused_pairs(confusion: list[list[int]], classes: list[str], count: int = 5) -> list[dict]:
    """The off-diagonal cells with the most images, largest first; `share`: of the true class's test images."""
    cells = [{"true": classes[i], "predicted": classes[j], "count": int(value), "share": value / sum(row)}
             for i, row in enumerate(confusion) for j, value in enumerate(row) if i != j and value > 0]
    cells.sort(key=lambda cell: (-cell["count"], -cell["share"], cell["true"], cell["predicted"]))
    return cells[:count]


def load_run(path: Path, pairs: int = 5, class_names: Path | None = None) -> RunSummary:
    """The run folder's files; class_names: a names file (classnames.py) the classes are shown by."""
    from imgcls.runs.rundir import RunDir
    from imgcls.runs.sweepdir import BEST, SPEC, TABLE

    run = RunDir.existing(path)
    if (run.path / SPEC).is_file() and not run.config.is_file():
        raise UserError(f"{printable(run.path)} is a sweep folder, not a run folder: pass its chosen run, "
                        f"{printable(run.path / BEST)}, or read every point's results in {printable(run.path / TABLE)}")
    config, metrics, diverged = run.read_config(), run.read_metrics(class_names), run.read_diverged()
    summary = RunSummary(run.path, config, run.read_epochs(), metrics, diverged=diverged,
                         retry=run.retry_command() if diverged else "")
    if summary.detail.get("confusion"):
        summary.pairs = confused_pairs(summary.detail["confusion"], metrics["classes"], pairs)
    return summary


def flat_config(config: dict) -> dict[str, object]:
    """A saved config as {"section.key": value}."""
    return {f"{section}.{key}": value for section, values in config.items() if isinstance(values, dict)
            for key, value in values.items()}


def config_rows(config: dict) -> list[tuple[str, str, bool]]:
    """(section.key, value as text, whether it differs from the default) for every key of a saved config."""
    from imgcls.config import Config

    defaults = flat_config(Config().to_dict())
    return [(key, "null" if value is None else str(value), defaults.get(key, object()) != value)
            for key, value in flat_config(config).items()]


def config_table(config: dict) -> Table:
    table = Table(title="config (*: not the default)")
    for column in ("", "key", "value"):
        table.add_column(column)
    for key, value, changed in config_rows(config):
        table.add_row("*" if changed else "", Text(printable(key)), Text(printable(value)),
                      style="bold" if changed else "dim")
    return table


def epochs_table(epochs: list[dict], best_epoch: int | None, width: int | None = None, k: int | None = None) -> Table:
    """One row an epoch, as wide as the terminal (the last columns left out first); k: the run's top-k (default:
    the one the records name)."""
    topk = f"val\ntop-{k or epoch_topk(epochs[0])[0]}" if epochs else "val\ntop-k"
    columns = [(header, "right") for header in ("epoch", "train\nloss", "train\ntop-1", "val\nloss", "val\ntop-1", topk,
                                                "lr", "seconds", "lr\nlast")]
    rows = []
    for record in epochs:
        lr_last = record.get("lr_last")
        rows.append([f"{record['epoch']}{' *' if record['epoch'] == best_epoch else ''}",
                     f"{record['train_loss']:.4f}", f"{record['train_top1']:.2%}", f"{record['val_loss']:.4f}",
                     f"{record['val_top1']:.2%}", f"{epoch_topk(record)[1]:.2%}", f"{record['lr']:.3g}",
                     f"{record['seconds']:.2f}", "" if lr_last is None else f"{lr_last:.3g}"])
    return fitted_table("epochs (* lowest validation loss)", columns, rows, width, keep=5)


def pairs_table(pairs: list[dict]) -> Table:
    columns = [("true class", "left"), ("predicted as", "left"), ("images", "right"),
               ("share of the true class", "right")]
    rows = [[Text(printable(pair["true"])), Text(printable(pair["predicted"])), str(pair["count"]),
             f"{pair['share']:.1%}"] for pair in pairs]
    return fitted_table("most confused class pairs (test split)", columns, rows, keep=2, fold_first=True, whole=WIDER)


def render(summary: RunSummary) -> Group:
    from imgcls.linear.metrics import Metrics

    path = escape(printable(summary.path))
    parts: list = [f"[bold]run[/] {path}", config_table(summary.config)]
    best = summary.metrics["best_epoch"] if summary.metrics else None
    if summary.epochs:
        parts.append(epochs_table(summary.epochs, best, k=summary.k))
    if summary.metrics is None:
        if summary.diverged:
            parts.append(f"[red]the run diverged:[/] {escape(summary.diverged)}\nResuming it would diverge again the "
                         f"same way; start a new run with a lower --lr: {escape(summary.retry)}")
        else:
            parts.append(f"[yellow]no metrics.json: the run did not finish[/] (resume it with imgcls train --resume "
                         f"{path})")
        return Group(*parts)
    refit = summary.metrics.get("refit")
    if isinstance(refit, dict):  # the epochs above are what chose; the model is the refit on every training image
        parts.append(f"refit on all {refit.get('images', '?')} training images for {refit.get('epochs', '?')} "
                     f"epoch(s), chosen on {escape(str(refit.get('chosen_on', '?')))}: the val row holds those "
                     f"held-out figures, the test row the refit model's")
    rows = {split: Metrics.of_summary(summary.metrics[split]) for split in ("val", "test")}
    parts.append(Reporter().metrics_table(f"{printable(summary.dataset)}: best epoch {best}", rows))
    if summary.detail.get("per_class"):
        parts.append(per_class_table(summary.classes, summary.detail["per_class"], summary.detail.get("confusion", []),
                                     "per-class test top-1 (the class's recall), precision and F1"))
    if summary.superclasses:
        parts.append(Reporter().superclass_table(summary.superclasses))
    if summary.pairs:
        parts.append(pairs_table(summary.pairs))
    return Group(*parts)
