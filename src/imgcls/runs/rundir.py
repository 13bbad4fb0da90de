"""The run folder (docs/guide.md describes each file): what a run leaves behind, each file written whole and read
back checked. While a run writes it, its process holds .imgcls.lock there (filelock), which notes its pid."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import yaml
from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, create_model

from imgcls.data.classnames import named_classes
from imgcls.errors import UserError, shown, validation_problem
from imgcls.files import check_writable, printable, remove_stale_temporaries, write_json_atomic, write_text_atomic
from imgcls.runs.yamlfile import read_yaml

CONFIG, EPOCHS, METRICS = "config.yaml", "epochs.jsonl", "metrics.json"
BEST, LAST = "best.safetensors", "last.safetensors"
SELECTION, REFIT = "selection.json", "refit.safetensors"  # what the run chose; the refit's state while under way
RUN_FILES = (CONFIG, EPOCHS, METRICS, BEST, LAST)
REFIT_FILES = (SELECTION, REFIT)
METRICS_CSV = "metrics.csv"  # epochs.jsonl as a table, for a spreadsheet
DIVERGED = "diverged.txt"
REPORT_PAGE = "report.html"  # htmlreport.py's page of the run
LOCK = ".imgcls.lock"
CURVES, CONFUSION, TEMPLATES = "curves.png", "confusion.png", "templates.png"  # drawn by figures.py
FIGURE_FILES = (CURVES, CONFUSION, TEMPLATES)
TENSORBOARD = "tensorboard"  # --tensorboard's event files (tboard.py)
# What a run folder may hold that imgcls wrote: a new run there replaces these and nothing else.
LR_SEARCH = "lr-search.png"  # --lr auto's search, drawn by figures.py as lr-find draws it
OWN_FILES = (*RUN_FILES, *REFIT_FILES, METRICS_CSV, *FIGURE_FILES, LR_SEARCH, REPORT_PAGE, DIVERGED)
OWN_FOLDERS = ("templates", TENSORBOARD)  # export-templates' output (the README's example) and --tensorboard's


def _file(name: str) -> property:
    return property(lambda self: self.path / name)


@dataclass
class RunDir:
    path: Path
    # (inode, mtime) of each run file when this process locked the folder: what changed since, it wrote
    _before: dict = field(default_factory=dict, repr=False, compare=False)

    config = _file(CONFIG)
    epochs = _file(EPOCHS)
    metrics = _file(METRICS)
    metrics_csv = _file(METRICS_CSV)
    best = _file(BEST)
    last = _file(LAST)
    selection = _file(SELECTION)
    refit = _file(REFIT)
    diverged = _file(DIVERGED)
    curves = _file(CURVES)
    confusion = _file(CONFUSION)
    templates = _file(TEMPLATES)
    lr_search = _file(LR_SEARCH)
    report_page = _file(REPORT_PAGE)
    tensorboard = _file(TENSORBOARD)

    @classmethod
    def existing(cls, path: Path) -> RunDir:
        """A folder to read a run from (report, compare, figures); what it holds is checked as it is read."""
        run = cls(Path(path))
        if not run.path.is_dir():
            raise UserError(f"run folder {printable(run.path)} does not exist; pass the --out folder of a training run")
        return run

    def is_run(self) -> bool:
        return any((self.path / name).exists() for name in (*RUN_FILES, *REFIT_FILES, DIVERGED))

    @classmethod
    def for_new_run(cls, out: str | None, dataset: str, overwrite: bool) -> RunDir:
        """Where a new run will go; refuses a folder that holds a run, or files of someone else's. Nothing is
        written yet."""
        run = cls(Path(out) if out else _default_folder(dataset))
        if run.path.exists() and not run.path.is_dir():
            raise UserError(f"--out {run.path} is a file, not a folder; choose another --out")
        check_writable("--out", run.path)
        if not run.path.is_dir() or overwrite:
            return run
        where = printable(run.path)
        if run.diverged.is_file():
            raise UserError(f"{where} already holds a run that diverged; resuming it would diverge again: start a new "
                            f"run with a lower --lr in another --out, or pass --overwrite to replace it")
        if run.is_run():
            resume = f", --resume {where} to continue it" if run.resumable() else ""
            raise UserError(f"{where} already holds a run; pass --overwrite to replace it{resume}, or choose another "
                            f"--out")
        foreign = sorted(entry.name for entry in os.scandir(run.path) if entry.name != LOCK
                         and not entry.name.endswith(".tmp"))
        if foreign:
            shown = ", ".join(printable(name) for name in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise UserError(f"--out {where} is not empty and not a run folder (it holds {shown}); choose a new or "
                            f"empty folder, or pass --overwrite (only imgcls's own files are then replaced)")
        return run

    def resumable(self) -> bool:
        return (self.last.is_file() or self.selection.is_file()) and not self.metrics.is_file() \
            and not self.diverged.is_file()

    def start(self) -> None:
        """Create the folder, clearing a previous run's files (allowed by for_new_run's check); anything else
        in the folder stays."""
        try:
            if self.path.is_dir() and self.is_run():  # a replaced run's pictures and logs must not outlive it
                for name in OWN_FILES:
                    (self.path / name).unlink(missing_ok=True)
                for name in OWN_FOLDERS:
                    shutil.rmtree(self.path / name, ignore_errors=True)
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise _cannot_create(self.path, error) from None

    def write_config(self, config: dict) -> None:
        """Without the run's own folder (output.out): repeating the run with --config goes to a new folder."""
        config = {**config, "output": {**config.get("output", {}), "out": None}}
        write_text_atomic(self.config, yaml.safe_dump(config, sort_keys=False))

    @classmethod
    def open_for_resume(cls, path: Path) -> RunDir:
        run = cls(Path(path))
        if not run.config.is_file() or not (run.last.is_file() or run.selection.is_file()):
            raise UserError(f"--resume {path}: not a run folder with config.yaml and last.safetensors (or "
                            f"selection.json); pass the --out folder of an interrupted run")
        run.check_metrics_is_a_file()
        if run.metrics.is_file():
            raise UserError(f"--resume {path}: that run has already finished (metrics.json exists); `imgcls report "
                            f"{path} --html` draws any figures it lacks")
        if run.diverged.is_file():
            raise UserError(f"--resume {path}: that run diverged, and resuming it would diverge again the same way; "
                            f"start a new run with a lower --lr: {run.retry_command()}")
        return run

    def retry_command(self) -> str:
        """The command that repeats this run (in a new folder) with a tenth of its learning rate."""
        lr = self._saved_setting("optim", "lr")
        lower = f"{lr / 10:g}" if isinstance(lr, (int, float)) and not isinstance(lr, bool) else "LOWER"
        return f"imgcls train --config {printable(self.config)} --lr {lower}"

    def mark_diverged(self, why: str) -> None:
        write_text_atomic(self.diverged, why.rstrip() + "\n")

    def write_epochs(self, history: list[dict], k: int | None = None) -> None:
        """The whole history each time: a resumed run rewrites the file, never duplicates a line. k: the run's
        top-k, which names the records' val_top5 in the files (`val_top3` for 3 classes)."""
        if k is not None:  # val_top5 renamed in its place
            history = [{(f"val_top{k}" if key == "val_top5" else key): value for key, value in record.items()}
                       for record in history]
        write_text_atomic(self.epochs, "".join(json.dumps(record) + "\n" for record in history))
        # the table: a key first seen in a later record is a column at the end, empty in the records without it
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=list(dict.fromkeys(key for record in history for key in record)),
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        write_text_atomic(self.metrics_csv, table.getvalue())

    def write_selection(self, chosen: dict) -> None:
        write_json_atomic(self.selection, chosen)

    def read_selection(self) -> dict | None:
        """What a run chose before its refit; None before it has chosen. A damaged file is refused in one line."""
        if not self.selection.is_file():
            return None
        redo = "start the run again with --overwrite"
        chosen = _read_json(self.selection, fix=f"the run folder is damaged: {redo}")
        factors = _validated(Selection, chosen, self.selection, "the file", redo).factors
        if factors is not None and len(factors) != chosen["epochs"]:
            raise _damaged(self.selection, f"{len(factors)} rate factors for {chosen['epochs']} epochs", redo)
        return chosen

    def write_metrics(self, metrics: dict) -> None:
        write_json_atomic(self.metrics, metrics)

    def read_epochs(self) -> list[dict]:
        """epochs.jsonl's records, each checked for the keys and types a report reads."""
        if not self.epochs.exists():
            return []
        records = _read_json(self.epochs, lines=True)
        for line, record in enumerate(records, 1):
            _validated(EpochRecord, record, self.epochs, f"line {line}")
            k, topk = epoch_topk(record)
            _check_topk(topk, f"val_top{k}", f"line {line}", self.epochs)
        return records

    def read_metrics(self, class_names: Path | None = None) -> dict | None:
        """metrics.json, checked for the shape train writes (None: the run did not finish); class_names: a names
        file (classnames.py) its classes are shown by."""
        if not self.metrics.exists():
            return None
        self.check_metrics_is_a_file()
        metrics = _read_json(self.metrics)
        _check_metrics(metrics, self.metrics)
        if class_names is not None:
            metrics["classes"] = named_classes(metrics["classes"], class_names)
        return metrics

    def check_metrics_is_a_file(self) -> None:
        if self.metrics.exists() and not self.metrics.is_file():
            raise UserError(f"{printable(self.metrics)} is a folder, not a file: the run folder is damaged; remove it, "
                            f"then `imgcls train --resume {printable(self.path)}` writes it again")

    def read_config(self) -> dict:
        """config.yaml as the run saved it, read by the config's own bounded loader ({} if it holds no mapping)."""
        if not self.config.is_file():
            raise UserError(f"{printable(self.path)} is not a run folder (no config.yaml); pass the --out folder of "
                            f"a training run")
        config = read_yaml(self.config, printable(self.config), "the run folder is damaged")
        return config if isinstance(config, dict) else {}

    def read_diverged(self) -> str | None:
        """Why training diverged (diverged.txt), or None."""
        return self.diverged.read_text(errors="replace").strip() if self.diverged.is_file() else None

    @contextmanager
    def locked(self) -> Iterator[RunDir]:
        """Hold the folder for this process (creating it) while a run writes it; a second run on it is refused,
        naming this process. Temporary files of killed writers are removed. Folders made here that the run
        left empty are removed again: a refused or interrupted run leaves nothing."""
        created, lock = _create_folders(self.path), None
        try:
            lock = _lock(self.path / LOCK)
            self._before = {name: _identity(self.path / name) for name in RUN_FILES}
            remove_stale_temporaries(self.path)
            yield self
        finally:
            if lock is not None:
                with suppress(OSError):
                    (self.path / LOCK).unlink()  # while still held: a waiting run locks a new file
                lock.release()
            _remove_empty(created)

    def written_here(self) -> set[str]:
        """The run files this process wrote (or replaced) since it locked the folder."""
        return {name for name, before in self._before.items() if _identity(self.path / name) not in (None, before)}

    def interrupted_state(self, resumed: bool) -> str:
        """After a Ctrl-C: what the folder now holds, and the command that goes on from there."""
        written, path = self.written_here(), printable(self.path)
        if METRICS in written:
            return (f"the run is finished; interrupted while drawing figures or writing report.html: `imgcls report "
                    f"{path} --html` draws them and writes it")
        if self.resumable() and (resumed or LAST in written):
            try:
                done = len(self.read_epochs())
            except UserError:
                done = 0
            planned = self._saved_setting("train", "epochs")
            if isinstance(planned, int) and done >= planned:
                return (f"training finished and checkpoints are whole; interrupted during the final test evaluation: "
                        f"`imgcls train --resume {path}` finishes it")
            return (f"interrupted after {done} finished epoch(s), whose checkpoints are whole: "
                    f"`imgcls train --resume {path}` continues")
        if CONFIG in written:
            return ("interrupted in the first epoch, before any checkpoint: only config.yaml was written; run the "
                    "same command again with --overwrite")
        return ("interrupted before training began (loading the data, or the --lr auto search): nothing was written; "
                "run the same command again")

    def _saved_setting(self, section: str, key: str):
        """One value of config.yaml; None if it cannot be read."""
        try:
            return self.read_config().get(section, {}).get(key)
        except (UserError, AttributeError):
            return None


def _default_folder(dataset: str) -> Path:
    """runs/<dataset>-<date>-<time>, with -2, -3, ... when that folder exists (two runs in one second)."""
    base = Path("runs") / f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, number = base, 1
    while path.exists():
        number += 1
        path = base.with_name(f"{base.name}-{number}")
    return path


def _identity(path: Path):
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns


def _create_folders(path: Path) -> list[Path]:
    """mkdir -p, returning the folders it made, deepest first."""
    missing = [folder for folder in (path.absolute(), *path.absolute().parents) if not folder.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _cannot_create(path, error) from None
    return missing


def _cannot_create(path: Path, error: OSError) -> UserError:
    return UserError(f"cannot create the run folder {printable(path)} ({error.strerror or error}); choose another "
                     f"--out")


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty: the run wrote something, and the folders above hold it


def _lock(path: Path) -> FileLock:
    """An exclusive lock on `path`, which notes this process's id; a UserError naming the holder if it is taken."""
    lock = FileLock(path, timeout=0, on_acquired=_note_pid)
    try:
        lock.acquire()
    except Timeout:
        holder = ""
        with suppress(OSError):
            holder = path.read_text(errors="replace").strip()[:32]
        raise UserError(f"{printable(path.parent)} is in use by another imgcls process (pid {holder or 'unknown'}); "
                        f"wait for it to end, or choose another --out") from None
    except OSError as error:
        raise UserError(f"cannot lock the run folder {printable(path.parent)} ({error.strerror or error}); choose "
                        f"another --out") from None
    return lock


def _note_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


# --- the shapes of the JSON files a report reads (older runs lack the keys that default to None) ------------

Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Fraction = Annotated[float, Strict(), Field(ge=0, le=1)]  # an accuracy
# at most 10**12: an epoch or image count a run can hold, and small enough that a float, a C long and a sum over a
# confusion matrix of one take it (10**400 made report and compare end in an OverflowError)
Count = Annotated[int, Strict(), Field(ge=0, le=10 ** 12)]
Classes = Annotated[list[Annotated[str, Strict()]], Field(min_length=1)]  # a model's class names
Factor = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
REDO = "train the run again or restore the file"
OPEN = ConfigDict(extra="allow")  # keys a later imgcls adds are passed over; val_top{k} and top{k} are checked apart
EpochRecord = create_model("EpochRecord", __config__=OPEN, epoch=Count, train_loss=Number, train_top1=Fraction,
                           val_loss=Number, val_top1=Fraction, lr=Number, seconds=Number,
                           lr_last=(Number | None, None), images_per_s=(Number | None, None))
SplitMetrics = create_model("SplitMetrics", __config__=OPEN, loss=Number, top1=Fraction, k=Count, count=Count,
                            superclass_top1=(Fraction | None, None))
Detail = create_model("Detail", __config__=OPEN, per_class=(list[Fraction], []), confusion=(list[list[Count]], []))
MetricsFile = create_model("MetricsFile", __config__=OPEN, best_epoch=Count, val=SplitMetrics, test=SplitMetrics,
                           classes=Classes, test_detail=(Detail, Detail()))
ChosenVal = create_model("ChosenVal", __config__=OPEN, loss=Number, top1=Fraction)  # what the refit reports as val
Selection = create_model("Selection", __config__=OPEN, epochs=Annotated[Count, Field(ge=1)],
                         val=ChosenVal,
                         how=Annotated[str, Strict()], factors=list[Factor] | None)  # factors: the refit's rates


def topk_of(split: dict) -> float | None:
    """A split's top-k in metrics.json, named by its k (`top3` for 3 classes); runs of older imgcls wrote `top5`
    whatever k was."""
    return split.get(f"top{split.get('k', 5)}", split.get("top5"))


def epoch_topk(record: dict) -> tuple[int, float | None]:
    """(k, validation top-k) of an epochs.jsonl record: `val_top{k}` (older runs: `val_top5`, whatever k was)."""
    for key, value in record.items():
        found = re.fullmatch(r"val_top(\d+)", key)
        if found and key != "val_top1":
            return int(found.group(1)), value
    return 5, None


def _read_json(path: Path, lines: bool = False, fix: str = "the run folder is damaged"):
    """The file's JSON value (lines: a list, one value a line), or one line that names the file. ValueError: also an
    integer too long to convert; OSError: a folder in the file's place; RecursionError: nesting too deep."""
    try:
        text = path.read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()] if lines else json.loads(text)
    except (OSError, ValueError, RecursionError) as error:
        shape = "one JSON object a line" if lines else "valid JSON"
        raise UserError(f"{printable(path)} is not {shape} ({error}); {fix}") from None


def _validated(model: type[BaseModel], value, path: Path, where: str, fix: str = REDO):
    """`value` checked as `model`; pydantic's first objection as one line that names the file."""
    try:
        return model.model_validate(value)
    except ValidationError as error:
        raise _damaged(path, validation_problem(error, where), fix) from None


def _damaged(path: Path, what: str, fix: str = REDO) -> UserError:
    return UserError(f"{printable(path)} is damaged: {what}; {fix}")


def _check_topk(value, key: str, where: str, path: Path) -> None:
    if value is None:
        raise _damaged(path, f"{where} lacks '{key}'")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise _damaged(path, f"{where}: '{key}' is {shown(value)}, not an accuracy from 0 to 1")


def _check_metrics(metrics, path: Path) -> None:
    checked = _validated(MetricsFile, metrics, path, "the file")
    for split in ("val", "test"):
        _check_topk(topk_of(metrics[split]), f"top{metrics[split]['k']}", f"'{split}'", path)
    k, detail = len(checked.classes), checked.test_detail
    if len(detail.per_class) not in (0, k):
        raise _damaged(path, f"'test_detail': 'per_class' is not a list of {k} numbers (one per class)")
    if len(detail.confusion) not in (0, k) or any(len(row) != k for row in detail.confusion):
        raise _damaged(path, f"'test_detail': 'confusion' is not a {k}x{k} matrix of counts")
