"""What the terminal shows: progress bars, a line per epoch, summary tables (rich). The user's text (class names,
paths) reaches rich as Text, never as markup: "cat [domestic]" would lose "[domestic]" as a style tag."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from pathlib import Path

    from imgcls.data.types import PreparedData
    from imgcls.linear.metrics import Metrics


RECENT_SECONDS = 5.0  # the progress bar's images/s and ETA are over about this many seconds, not the whole epoch
EPOCH_LEGEND = "each epoch: train loss, top-1; validation loss, top-1, top-5; seconds (* lowest loss so far)"
REFIT_LEGEND = "each epoch of the refit: train loss, top-1; seconds (no held-out images: the last epoch is kept)"
WIDER = "a wider terminal or --json shows them"


def loss_text(loss: float) -> str:
    """Four decimals while a loss is small, five significant digits beyond (a diverging run stays on its line)."""
    return f"{loss:.4f}" if abs(loss) < 10 else f"{loss:.5g}"


def epoch_line(record: dict, improved: bool, k: int | None = None) -> str:
    """One epoch in under 80 columns (a wrapped line splits numbers); k: the run's top-k (default: the record's)."""
    from imgcls.runs.rundir import epoch_topk

    line = f"epoch {record['epoch']:>3}  train {loss_text(record['train_loss'])} {record['train_top1']:.2%}"
    if "val_loss" not in record:  # a refit's epoch: no held-out images
        return f"{line}  (refit on all training images)  {record['seconds']:.1f}s"
    named, topk = epoch_topk(record)
    return (f"{line}  val {loss_text(record['val_loss'])} {record['val_top1']:.2%} top-{k or named} {topk:.2%}"
            f"  {record['seconds']:.1f}s{' *' if improved else ''}")


def fitted_table(title: str | Text, columns: list[tuple[str, str]], rows: list[list], width: int | None = None,
                 keep: int = 1, fold_first: bool = False, whole: str = "a wider terminal shows them") -> Table:
    """A table no wider than `width` (default: the terminal's): numbers are never cut; the rightmost columns after
    the first `keep` are left out while it is too wide, and the caption names them and `whole`, where they are.
    columns: (header, justify), most important first; fold_first: the first column's names may fold."""
    width = width or Console().width
    for shown in range(len(columns), 0, -1):
        table = Table(title=title if isinstance(title, Text) else Text(title))
        for index, (header, justify) in enumerate(columns[:shown]):
            if index == 0 and fold_first:
                table.add_column(header, justify=justify, overflow="fold", max_width=max(width // 2, 10))
            else:
                table.add_column(header, justify=justify, no_wrap=True)
        for row in rows:
            table.add_row(*row[:shown])
        if shown < len(columns):
            left_out = ", ".join(header.replace("\n", " ") for header, _ in columns[shown:])
            table.caption = Text(f"not shown at {width} columns: {left_out} ({whole})")
        if shown <= keep or Console(width=10_000).measure(table).maximum <= width:
            break
    return table


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def per_class_table(classes: list[str], top1: list[float], confusion: list[list[int]], title: str,
                    taken_for: bool = True) -> Table:
    """Each class's top-1 (its recall), precision, F1 and (taken_for) the class it is most often taken for."""
    from imgcls.files import printable
    from imgcls.linear.metrics import per_class_scores

    columns = [("class", "left"), ("images", "right"), ("top-1", "right"), ("precision", "right"), ("F1", "right"),
               ("most often taken for", "left")]
    rows, scores = [], per_class_scores(confusion)
    for index, (name, accuracy) in enumerate(zip(classes, top1)):
        row, score = (confusion[index], scores[index]) if index < len(confusion) else ([], None)
        # the largest count off the diagonal, the first such class on a tie
        most, other = max(((n, -j) for j, n in enumerate(row) if j != index and n > 0), default=(0, 0))
        rows.append([Text(printable(name)), str(sum(row)) if row else "", f"{accuracy:.2%}",
                     f"{score['precision']:.2%}" if score else "", f"{score['f1']:.3f}" if score else "",
                     Text(printable(f"{classes[-other]} ({most})" if most else ""))])
    return fitted_table(title, columns[:6 if taken_for else 5], rows, keep=3, fold_first=True, whole=WIDER)


class RecentRate:
    """Images a second over the last RECENT_SECONDS, from (time, images seen so far) readings."""

    def __init__(self):
        self.started = time.perf_counter()
        self.readings: deque[tuple[float, float]] = deque([(self.started, 0.0)])

    def add(self, images: float, now: float | None = None) -> float | None:
        now = time.perf_counter() if now is None else now
        self.readings.append((now, images))
        while len(self.readings) > 2 and now - self.readings[1][0] >= RECENT_SECONDS:
            self.readings.popleft()
        (then, before) = self.readings[0]
        return (images - before) / (now - then) if now > then else None


def _speed(rate: float | None) -> str:
    return f"{rate:,.0f} img/s" if rate is not None else ""


class Reporter:
    """The terminal of a command; quiet=True shows nothing but errors, for scripts."""

    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None
        self.recent = RecentRate()
        self.legend_shown: str | None = None  # the legend above the epoch lines now
        self.epochs: int | None = None  # the run's most epochs, when the loop says (epoch_start)
        self.run_start: tuple[float, int] | None = None  # (time, epoch) of this process's first epoch
        self.epoch, self.steps = 0, 1
        self.k: int | None = None  # the run's top-k, once data_ready has said how many classes

    def search_figure(self, path: Path, rows: list[dict], how: str) -> None:
        from imgcls.report.figures import lr_search_figure

        self._drawn(path, lambda: lr_search_figure(rows, path, how))

    def sweep_figure(self, path: Path, records: list[dict], grid: dict, best: int | None) -> None:
        from imgcls.report.figures import sweep_figure

        self._drawn(path, lambda: sweep_figure(records, grid, path, best))

    def _drawn(self, path: Path, draw: Callable[[], object]) -> None:
        """A figure that fails is a warning, never the end of what it describes."""
        try:
            draw()
        except Exception as error:  # noqa: BLE001
            self.note(f"warning: could not draw {path} ({type(error).__name__}: {error})")

    def note(self, text: str | Text) -> None:
        """A line as written (a str is not markup); wrapped between words on a terminal (which would cut them, under
        a live bar that does not know of the extra row), whole in a pipe or a log."""
        if not self.quiet:
            self.console.print(Text(text) if isinstance(text, str) else text, highlight=False,
                               soft_wrap=not self.console.is_terminal)

    def _bar(self, *columns, **options) -> Progress:
        return Progress(*columns, console=self.console, transient=True, disable=self.quiet, **options)

    @contextmanager
    def decoding(self) -> Iterator[Callable[[int, int], None] | None]:
        """A bar while image files are decoded, told (images decoded, images in all); a count from 0 starts a new
        bar (the test split after the training split). None when quiet."""
        if self.quiet:
            yield None
            return
        bar = self._bar(TextColumn("decoding"), BarColumn(bar_width=24), MofNCompleteColumn(),
                        TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), TextColumn("eta"),
                        TimeRemainingColumn())
        shown = {}  # the split's task and its RecentRate

        def update(done: int, total: int) -> None:
            if not shown:
                bar.start()  # on the first image: cached data shows no bar (nor, off a terminal, a blank line)
            if done == 0 or not shown:
                if shown:
                    bar.remove_task(shown["task"])
                shown.update(task=bar.add_task("decode", total=total, speed=""), recent=RecentRate())
            bar.update(shown["task"], completed=done, speed=_speed(shown["recent"].add(done)))

        try:
            yield update
        finally:
            if shown:
                bar.stop()

    @contextmanager
    def sweep_bar(self, total: float) -> Iterator[Callable[[float, str], None]]:
        """One bar over a whole sweep in epochs, told (epochs done, a fraction included, what is under way)."""
        bar = self._bar(TextColumn("sweep {task.fields[text]}"), BarColumn(bar_width=24),
                        TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(), TextColumn("eta"),
                        TimeRemainingColumn())
        task = bar.add_task("sweep", total=total, text="")
        with bar:
            yield lambda done, text: bar.update(task, completed=done, text=text)

    def data_ready(self, data: PreparedData) -> None:
        from imgcls.linear.metrics import top_k

        self.k = top_k(len(data.classes))
        c, h, w = data.shape
        cached = ", from the decoded cache" if data.from_cache else ""
        skipped = f", {data.skipped} unreadable images skipped" if data.skipped else ""
        passed = f", {data.passed_over} files that are not images passed over" if data.passed_over else ""
        self.note(Text.assemble((data.dataset, "bold"), f": {len(data.classes)} classes, {c}x{h}x{w} images; "
                                f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test{cached}"
                                f"{skipped}{passed}"))

    def epoch_start(self, epoch: int, steps: int, epochs: int | None = None) -> None:
        """A new bar for epoch `epoch` (from 0) of `steps` steps; epochs: the run's most epochs, for `epoch N/M`
        and the whole run's ETA (an upper bound: early stopping may end it sooner)."""
        if self.quiet:
            return
        self.epochs = epochs if epochs is not None else self.epochs
        self.epoch, self.steps = epoch, max(steps, 1)
        if self.run_start is None:
            self.run_start = (time.perf_counter(), epoch)
        if self.progress is None:
            # loss and speed are text fields: blank until the first step, never a 'nan' a student reads as divergence
            self.progress = self._bar(TextColumn("epoch {task.fields[epoch]}"), BarColumn(bar_width=10),
                                      MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                                      TextColumn("{task.fields[speed]}"), TextColumn("eta"),
                                      TimeRemainingColumn(compact=True), TextColumn("{task.fields[run]}"),
                                      speed_estimate_period=RECENT_SECONDS)
            self.progress.start()
        if self.task is not None:
            self.progress.remove_task(self.task)
        shown = f"{epoch + 1}/{self.epochs}" if self.epochs else f"{epoch + 1}"
        self.task = self.progress.add_task("train", total=steps, epoch=shown, loss="loss -", speed="",
                                           run=self.run_eta(0))
        self.recent = RecentRate()

    def run_eta(self, step: int) -> str:
        """'run ≤ M:SS': the run's remaining epochs at this process's pace so far ('' before it is known)."""
        if not self.epochs or self.run_start is None:
            return ""
        started, first = self.run_start
        done = self.epoch - first + step / self.steps
        if done <= 0:
            return ""
        seconds = round((time.perf_counter() - started) / done * max(self.epochs - first - done, 0.0))
        hours, rest = divmod(seconds, 3600)
        return f"run ≤ {hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"run ≤ {rest // 60}:{rest % 60:02d}"

    def step(self, step: int, loss: float, images_per_s: float, images: int | None = None) -> None:
        """images: seen this epoch so far, for the recent rate (without them the epoch's average, images_per_s)."""
        if self.progress is not None:
            rate = self.recent.add(images) if images is not None else images_per_s
            self.progress.update(self.task, completed=step, loss=f"loss {loss:.4f}", speed=_speed(rate),
                                 run=self.run_eta(step))

    def epoch_done(self, record: dict, improved: bool) -> None:
        legend = EPOCH_LEGEND.replace("top-5", f"top-{self.k or 5}") if "val_loss" in record else REFIT_LEGEND
        if self.legend_shown != legend:
            self.legend_shown = legend
            self.note(legend)
        self.note(epoch_line(record, improved, self.k))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def run_finished(self, run_path: Path, best_epoch: int, test_summary: dict) -> None:
        """The run is written and whole: a reporter with a log of its own (TensorBoardReporter) ends it here."""

    def metrics_table(self, title: str, rows: dict[str, Metrics]) -> Table:
        ks = {m.k for m in rows.values()}
        table = Table(title=Text(title))
        for column in ("split", "images", "loss", "top-1", f"top-{min(ks)}" if len(ks) == 1 else "top-k"):
            table.add_column(column, justify="right" if column != "split" else "left")
        for name, m in rows.items():
            table.add_row(name, f"{m.count}", f"{m.loss:.4f}", f"{m.top1:.2%}",
                          f"{m.top5:.2%}" + ("" if len(ks) == 1 else f" (k={m.k})"))
            if m.superclass_top1 is not None:
                table.add_row(f"{name} superclass", f"{m.count}", "", f"{m.superclass_top1:.2%}", "")
        return table

    def per_class_table(self, classes: list[str], metrics: Metrics) -> Table:
        return per_class_table(classes, metrics.per_class, metrics.confusion,
                               "per-class top-1 (the class's recall), precision and F1", taken_for=False)

    def superclass_table(self, rows: list[tuple[str, float]]) -> Table:
        """Each superclass's top-1 at its level: a prediction of any of its classes counts as right."""
        return fitted_table("per-superclass top-1 (any class of the superclass counts)",
                            [("superclass", "left"), ("top-1", "right")],
                            [[Text(name), f"{accuracy:.2%}"] for name, accuracy in rows], keep=2, fold_first=True)

    def show(self, renderable, force: bool = False) -> None:
        if force or not self.quiet:
            Console().print(renderable)


def sweep_table(records: list[dict], best: int | None, limit: int = 20, width: int | None = None) -> Table:
    """The points by validation loss, best first (test shown, not used to choose); a point's options a line each."""
    ranked = sorted(records, key=lambda r: (r["val_loss"] is None or r["diverged"],
                                            math.inf if r["val_loss"] is None else r["val_loss"], r["point"]))
    columns = [("rank", "right"), ("point (folder\nand options)", "left"), ("", "left"), ("val loss", "right"),
               ("val top-1", "right"), ("epochs", "right"), ("test top-1", "right")]
    rows = []
    for rank, record in enumerate(ranked[:limit], 1):
        mark = "chosen" if record["point"] == best else "diverged" if record["diverged"] else ""
        options = "".join(f"\n{name}={value}" for name, value in record["options"].items()) or " base"
        loss = "-" if record["val_loss"] is None else loss_text(record["val_loss"])
        rows.append([str(rank), Text(f"{record['point']:03d}{options}"), mark, loss,
                     percent(record["val_top1"]), f"{record['best_epoch'] or '-'}/{record['epochs_run']}",
                     percent(record["test_top1"])])
    title = f"sweep: {len(records)} points by validation loss (test not used to choose)"
    table = fitted_table(title, columns, rows, width, keep=3, whole="sweep.csv holds them")
    if len(ranked) > limit:
        more = f"{len(ranked) - limit} more in sweep.csv"
        table.caption = Text(f"{more}; {table.caption}") if table.caption else Text(more)
    return table


def lr_search_table(rows: list[dict]) -> Table:
    """The search's settings, lowest held-out loss first."""
    table = Table(title="search (held-out loss chooses; stage rates: every setting, short; decays: each decay at "
                        "its rate, longer)")
    for column in ("stage", "lr", "weight decay", "loss", "top-1", "epochs", ""):
        table.add_column(column, justify="left" if column in ("", "stage") else "right")
    for row in sorted(rows, key=lambda row: (row["stage"] != "decays", row["val_loss"] is None or row["diverged"],
                                             row["val_loss"] or 0)):
        mark = "chosen" if row["chosen"] else "diverged" if row["diverged"] else ""
        loss = "-" if row["val_loss"] is None else f"{row['val_loss']:.4f}"
        table.add_row(row["stage"], f"{row['lr']:g}", f"{row['weight_decay']:g}", loss, percent(row["val_top1"]),
                      str(row["epochs"] or "-"), mark)
    return table
