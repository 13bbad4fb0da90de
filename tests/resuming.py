"""What the resume tests share: a small MNIST run's size, a real signal at a chosen step, a resume, and the
comparison of two run folders (weights, epochs.jsonl, metrics.json)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from imgcls.config import build_config
from imgcls.report.report import Reporter
from imgcls.runs import checkpoint as ckpt
from imgcls.runs.rundir import RunDir
from imgcls.training.engine import Engine
from imgcls.training.train import train

LIMIT, BATCH, EPOCHS = 600, 32, 3  # 540 training images: 17 steps an epoch, the last one of 28 images
STEPS = 17


class InterruptAt:
    """Sends this process a real signal during the SGD update that makes training's (epoch, step): epochs from 0,
    steps from 1, counted in this run (`start` is where a resumed run begins). It wraps the engine's training step
    (Engine.step, analytic or autograd), not the Reporter, whose progress updates are throttled in time."""

    def __init__(self, epoch: int, step: int, signum: int = signal.SIGINT, start: tuple[int, int] = (0, 0),
                 twice: bool = False):
        self.target = epoch * STEPS + step - (start[0] * STEPS + start[1])
        self.signum, self.twice, self.count, self.sent = signum, twice, 0, False

    def __enter__(self):
        self.patch = pytest.MonkeyPatch()
        step = Engine.step

        def counted(*args, **kwargs):
            stats = step(*args, **kwargs)
            self.after_step()
            return stats

        self.patch.setattr(Engine, "step", counted)
        return self

    def __exit__(self, *exc):
        self.patch.undo()

    def after_step(self) -> None:
        self.count += 1
        if self.count == self.target and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)
            if self.twice:  # the second Ctrl-C, once the first has been handled
                deadline = time.monotonic() + 5
                while signal.getsignal(signal.SIGINT) is not signal.default_int_handler and time.monotonic() < deadline:
                    pass
                os.kill(os.getpid(), signal.SIGINT)


def resume(run: Path):
    return train(build_config(run / "config.yaml", {}), Reporter(quiet=True), resume=RunDir.open_for_resume(run))


def without_timing(path: Path) -> list[dict]:
    if not (path / "epochs.jsonl").exists():
        return []
    return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}
            for line in (path / "epochs.jsonl").read_text().splitlines()]


def assert_same_run(expected: Path, got: Path) -> None:
    for name in ("best.safetensors", "last.safetensors"):
        a, b = ckpt.load(expected / name), ckpt.load(got / name)
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias), name
        assert a.meta["epoch"] == b.meta["epoch"], name
    assert without_timing(expected) == without_timing(got)
    metrics_a, metrics_b = (json.loads((path / "metrics.json").read_text()) for path in (expected, got))
    for key in ("best_epoch", "val", "test", "test_detail", "classes"):
        assert metrics_a[key] == metrics_b[key], key
