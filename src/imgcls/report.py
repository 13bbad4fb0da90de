"""What the terminal shows: a progress bar per epoch, a line per epoch, summary tables.

`Reporter(quiet=True)` shows nothing but errors, for scripts. Text that comes from the user (class names,
paths, names in checkpoints) reaches rich as Text, never as markup: "cat [domestic]" would lose its
"[domestic]" as a style tag, and a path holding "[/x]" would stop the program with a MarkupError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from imgcls.data.prepare import PreparedData
    from imgcls.metrics import Metrics


class Reporter:
    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None

    def note(self, text: str | Text) -> None:
        """A line as it is written (a str is not read as markup)."""
        if not self.quiet:
            self.console.print(Text(text) if isinstance(text, str) else text, highlight=False, soft_wrap=True)

    def data_ready(self, data: PreparedData) -> None:
        c, h, w = data.shape
        cached = ", from the decoded cache" if data.from_cache else ""
        skipped = f", {data.skipped} unreadable images skipped" if data.skipped else ""
        passed = f", {data.passed_over} files that are not images passed over" if data.passed_over else ""
        self.note(Text.assemble((data.dataset, "bold"), f": {len(data.classes)} classes, {c}x{h}x{w} images; "
                                f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test{cached}"
                                f"{skipped}{passed}"))

    def epoch_start(self, epoch: int, steps: int) -> None:
        if self.quiet:
            return
        if self.progress is None:
            self.progress = Progress(
                TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[speed]:,.0f} img/s"),
                TimeElapsedColumn(), console=self.console, transient=True)
            self.progress.start()
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task("train", total=steps, epoch=epoch + 1, loss=float("nan"), speed=0.0)

    def step(self, step: int, loss: float, images_per_s: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, loss=loss, speed=images_per_s)

    def epoch_done(self, record: dict, improved: bool) -> None:
        mark = " *" if improved else ""
        self.note(f"epoch {record['epoch']:>3}  train loss {record['train_loss']:.4f} top-1 {record['train_top1']:.2%}"
                  f"  val loss {record['val_loss']:.4f} top-1 {record['val_top1']:.2%} top-5 {record['val_top5']:.2%}"
                  f"  {record['seconds']:.2f}s{mark}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def metrics_table(self, title: str, rows: dict[str, Metrics]) -> Table:
        table = Table(title=Text(title))
        for column in ("split", "images", "loss", "top-1", "top-k"):
            table.add_column(column, justify="right" if column != "split" else "left")
        for name, m in rows.items():
            table.add_row(name, f"{m.count}", f"{m.loss:.4f}", f"{m.top1:.2%}", f"{m.top5:.2%} (k={m.k})")
            if m.superclass_top1 is not None:
                table.add_row(f"{name} superclass", f"{m.count}", "", f"{m.superclass_top1:.2%}", "")
        return table

    def per_class_table(self, classes: list[str], metrics: Metrics) -> Table:
        table = Table(title="per-class top-1")
        table.add_column("class")
        table.add_column("top-1", justify="right")
        for name, accuracy in zip(classes, metrics.per_class):
            table.add_row(Text(name), f"{accuracy:.2%}")
        return table

    def superclass_table(self, rows: list[tuple[str, float]]) -> Table:
        """Each superclass's top-1 at the superclass level (CIFAR-100's 20): a prediction of any of its classes
        counts as right for its images."""
        table = Table(title="per-superclass top-1 (any class of the superclass counts)")
        table.add_column("superclass")
        table.add_column("top-1", justify="right")
        for name, accuracy in rows:
            table.add_row(Text(name), f"{accuracy:.2%}")
        return table

    def show(self, renderable, force: bool = False) -> None:
        if force or not self.quiet:
            Console().print(renderable)
