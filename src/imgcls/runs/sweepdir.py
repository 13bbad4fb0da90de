"""The sweep folder (docs/guide.md describes each file): sweep.yaml, a run folder per point under points/, each
group's resumable state under resume/, sweep.json and .csv, sweep.png, best (a link to the chosen point) and refit/.
Each file is written whole; the folder is locked as a run folder is."""

from __future__ import annotations

import csv
import io
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from imgcls.errors import UserError
from imgcls.files import move, printable, write_json_atomic, write_text_atomic
from imgcls.runs.rundir import RunDir
from imgcls.runs.yamlfile import read_yaml

SPEC, RESULTS, TABLE, FIGURE, POINTS, BEST = "sweep.yaml", "sweep.json", "sweep.csv", "sweep.png", "points", "best"
RESUME, REFIT = "resume", "refit"
OWN = (SPEC, RESULTS, TABLE, FIGURE, POINTS, BEST, RESUME, REFIT)
CSV_COLUMNS = ("point", "group", "best_epoch", "epochs_run", "val_top1", "val_top5", "val_loss", "test_top1",
               "test_top5", "test_loss", "diverged", "seconds")


@dataclass
class SweepDir:
    path: Path

    spec = property(lambda self: self.path / SPEC)
    results = property(lambda self: self.path / RESULTS)
    table = property(lambda self: self.path / TABLE)
    figure = property(lambda self: self.path / FIGURE)
    best = property(lambda self: self.path / BEST)
    refit = property(lambda self: RunDir(self.path / REFIT))

    @classmethod
    def for_new_sweep(cls, out: str | None, dataset: str, overwrite: bool, check: bool = True) -> SweepDir:
        path = Path(out) if out else Path("runs") / f"sweep-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        sweep = cls(path)
        if not check:
            return sweep
        RunDir.for_new_run(str(path), dataset, overwrite=True)  # its checks of where a folder may go
        if path.is_dir():
            others = sorted(entry.name for entry in os.scandir(path) if entry.name not in OWN
                            and not entry.name.startswith(".imgcls") and not entry.name.endswith(".tmp"))
            if others:
                raise UserError(f"--out {printable(path)} holds files that are not a sweep's ({', '.join(others[:3])})"
                                f"; choose a new or empty folder")
            if any(os.path.lexists(path / name) for name in OWN) and not overwrite:
                raise UserError(f"{printable(path)} already holds a sweep; pass --overwrite to replace it, "
                                f"--resume {printable(path)} to continue it, or choose another --out")
        return sweep

    @classmethod
    def for_resume(cls, path: Path) -> SweepDir:
        sweep = cls(Path(path))
        if not sweep.spec.is_file():
            raise UserError(f"--resume {printable(path)}: not a sweep folder (no {SPEC}); pass the --out folder of "
                            f"an interrupted sweep")
        if sweep.results.is_file():
            raise UserError(f"--resume {printable(path)}: that sweep has already finished ({RESULTS} exists)")
        return sweep

    def start(self, spec: dict) -> None:
        """A fresh sweep: a replaced sweep's files go (points and all), then the spec is written."""
        for name in (RESULTS, TABLE, FIGURE, BEST, POINTS, RESUME):
            _remove_folder(self.path / name)
            (self.path / name).unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.spec, yaml.safe_dump(spec, sort_keys=False))

    def remove_if_untrained(self) -> None:
        """A sweep refused before any point trained leaves no files: the corrected command may use the folder."""
        if any((self.path / POINTS).glob("*")) or any((self.path / RESUME).glob("*.safetensors")):
            return
        self.spec.unlink(missing_ok=True)
        for name in (POINTS, RESUME):
            shutil.rmtree(self.path / name, ignore_errors=True)

    def read_spec(self) -> dict:
        spec = read_yaml(self.spec, f"{self.spec}", "start a new sweep")
        if not isinstance(spec, dict) or not isinstance(spec.get("base"), dict) or \
                not isinstance(spec.get("grid"), dict):
            raise UserError(f"{printable(self.spec)} is damaged (it needs 'base' and 'grid' mappings); start a new "
                            f"sweep")
        return spec

    def point(self, index: int) -> RunDir:
        return RunDir(self.path / POINTS / f"{index:03d}")

    def group_state(self, group: int) -> Path:
        """The resumable state of a group's stacked points, one file (its folder made when first needed)."""
        (self.path / RESUME).mkdir(exist_ok=True)
        return self.path / RESUME / f"group-{group:03d}.safetensors"

    def write_results(self, records: list[dict], summary: dict) -> None:
        """sweep.csv, then sweep.json: written last, it marks the sweep finished."""
        write_text_atomic(self.table, _csv(records))
        write_json_atomic(self.results, {**summary, "points": records})

    def link_best(self, index: int) -> None:
        temporary = self.path / f"{BEST}.tmp"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(Path(POINTS) / f"{index:03d}")
        _remove_folder(self.best)  # a link or a file is replaced below in one step
        move(temporary, self.best)

    @contextmanager
    def locked(self) -> Iterator[SweepDir]:
        with RunDir(self.path).locked():
            yield self


def _csv(records: list[dict]) -> str:
    options = sorted({name for record in records for name in record["options"]})
    topk = next((key[len("val_"):] for key in records[0] if key.startswith("val_top") and key != "val_top1"), "top5") \
        if records else "top5"  # the data's k: top3 for 3 classes
    columns = [column.replace("top5", topk) for column in CSV_COLUMNS[2:]]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS[:2], *options, *columns])
    for record in records:
        shown = [record["options"].get(name, "") for name in options]
        writer.writerow([record["point"], record["group"], *shown, *(record.get(c) for c in columns)])
    return out.getvalue()


def _remove_folder(entry: Path) -> None:
    """Removes `entry` if it is a real folder (points/, or `best` copied as one: cp -rL, a file system without
    links); a link to one stays."""
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
