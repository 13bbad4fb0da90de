"""The run folder: what a run leaves behind, where, and written so that none of it is ever half a file.

    config.yaml        the resolved config; `imgcls train --config RUN/config.yaml` repeats the run
    epochs.jsonl       one JSON object per epoch (train loss and top-1, validation metrics, rate, time)
    metrics.json       {"val": {...}, "test": {...}} for the best epoch, fractions in [0, 1]
    best.safetensors   the checkpoint with the best validation top-1
    last.safetensors   the checkpoint after the last epoch
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from imgcls.errors import UserError
from imgcls.figures import FIGURE_FILES
from imgcls.files import write_json_atomic, write_text_atomic

RUN_FILES = ("config.yaml", "epochs.jsonl", "metrics.json", "best.safetensors", "last.safetensors")


@dataclass
class RunDir:
    path: Path

    config = property(lambda self: self.path / "config.yaml")
    epochs = property(lambda self: self.path / "epochs.jsonl")
    metrics = property(lambda self: self.path / "metrics.json")
    best = property(lambda self: self.path / "best.safetensors")
    last = property(lambda self: self.path / "last.safetensors")

    @classmethod
    def for_new_run(cls, out: str | None, dataset: str, overwrite: bool) -> RunDir:
        """Where a new run will go; refuses a folder that holds a run. Nothing is written yet."""
        path = Path(out) if out else Path("runs") / f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path} is a file, not a folder; choose another --out")
        existing = next((folder for folder in (path, *path.absolute().parents) if folder.exists()), None)
        if existing is not None and not existing.is_dir():
            raise UserError(f"--out {path}: {existing} is a file, not a folder; choose another --out")
        if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"--out {path}: {existing} is not writable; choose another --out")
        held = {name for name in RUN_FILES if (path / name).exists()}
        if held and not overwrite:
            resumable = "last.safetensors" in held and "metrics.json" not in held
            resume = f", --resume {path} to continue it" if resumable else ""
            raise UserError(f"{path} already holds a run; pass --overwrite to replace it{resume}, or choose another "
                            f"--out")
        return cls(path)

    def start(self) -> None:
        """Create the folder, clearing a previous run's files (allowed by for_new_run's check)."""
        try:
            for name in (*RUN_FILES, *FIGURE_FILES):  # a replaced run's pictures must not outlive it
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(self.path / "templates", ignore_errors=True)
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the run folder {self.path} ({error.strerror or error}); choose another "
                            f"--out") from None

    def write_config(self, config: dict) -> None:
        write_text_atomic(self.config, yaml.safe_dump(config, sort_keys=False))

    @classmethod
    def open_for_resume(cls, path: Path) -> RunDir:
        run = cls(Path(path))
        if not run.config.is_file() or not run.last.is_file():
            raise UserError(f"--resume {path}: not a run folder with config.yaml and last.safetensors; pass the --out "
                            f"folder of an interrupted run")
        if run.metrics.is_file():
            raise UserError(f"--resume {path}: that run has already finished (metrics.json exists); start a new run")
        return run

    def write_epochs(self, history: list[dict]) -> None:
        """The whole history each time: a resumed run rewrites the file, never duplicates a line."""
        write_text_atomic(self.epochs, "".join(json.dumps(record) + "\n" for record in history))

    def write_metrics(self, metrics: dict) -> None:
        write_json_atomic(self.metrics, metrics)

    def read_epochs(self) -> list[dict]:
        if not self.epochs.exists():
            return []
        return [json.loads(line) for line in self.epochs.read_text().splitlines() if line.strip()]
