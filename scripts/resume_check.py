"""Ctrl-C at random moments, then --resume: does every resumed run end bit-identical to an uninterrupted one?

    python scripts/resume_check.py --data-dir ../shared/datasets/cifar10-jpeg --stops 10 [--stream]

Copies a small image folder (--per-class images of each class from the given folder), trains it once
without interruption, then for each stop: starts the same `imgcls train` as a real process, sends it
SIGINT at a random moment of its training (after its first epoch is written), resumes it to the end
(again and again if a resume is itself stopped before the end), and compares best/last weights and epochs.jsonl with the uninterrupted run, bit for bit.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from imgcls.runs import checkpoint as ckpt


def small_folder(source: Path, target: Path, per_class: int) -> Path:
    for split, count in (("train", per_class), ("test", max(per_class // 2, 1))):
        for class_dir in sorted((source / split).iterdir()):
            (target / split / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:count]:
                shutil.copy2(image, target / split / class_dir.name / image.name)
    return target


def train_command(data: Path, out: Path, args) -> list[str]:
    command = [sys.executable, "-m", "imgcls", "train", "--dataset", "imagefolder", "--data-dir", str(data),
               "--epochs", str(args.epochs), "--batch-size", "8", "--threads", "1", "--momentum", "0.9",
               "--lr", "0.01", "--device", "cpu", "--out", str(out), "--quiet", "--no-tensorboard"]
    return command + (["--stream"] if args.stream else [])


def same_run(a: Path, b: Path) -> bool:
    for name in ("best.safetensors", "last.safetensors"):
        x, y = ckpt.load(a / name), ckpt.load(b / name)
        if not (torch.equal(x.weight, y.weight) and torch.equal(x.bias, y.bias)):
            return False
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}  # noqa
                          for line in (path / "epochs.jsonl").read_text().splitlines()]
    return strip(a) == strip(b)


def interrupted_then_resumed(data: Path, out: Path, delay: float, args) -> tuple[str, int]:
    """Stop the run after `delay` seconds, then resume until it finishes; returns where it stopped and how many
    resumes it took."""
    process = subprocess.Popen(train_command(data, out, args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    while not (out / "epochs.jsonl").exists() and process.poll() is None:  # training is under way
        time.sleep(0.005)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate()
    where = next((line.split(";")[0] for line in stderr.splitlines() if "interrupted" in line),
                 "finished before the signal" if process.returncode == 0 else stderr.strip()[-200:])
    resumes = 0
    if not where.startswith("interrupted at epoch"):
        return where, resumes  # before training's first step, or after its last: nothing to resume
    while not (out / "metrics.json").exists():
        resumes += 1
        done = subprocess.run([sys.executable, "-m", "imgcls", "train", "--resume", str(out), "--quiet"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"resume failed ({done.returncode}): {done.stderr[-1000:]}")
    return where, resumes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="an image folder with train/ and test/")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--stops", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args()
    # A shell starts background jobs with SIGINT ignored, and the runs would inherit that: give them Ctrl-C back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="imgcls-resume-check-"))
    try:
        data = small_folder(args.data_dir, work / "data", args.per_class)
        subprocess.run(train_command(data, work / "whole", args), check=True, stdout=subprocess.DEVNULL)
        # the signal comes after the first epoch is written, at a random moment of the training that follows
        length = sum(json.loads(line)["seconds"] for line in (work / "whole" / "epochs.jsonl").read_text().splitlines())
        rng = random.Random(args.seed)
        identical = stopped = attempts = 0
        while stopped < args.stops and attempts < 3 * args.stops:  # a signal after the last step stops nothing
            attempts += 1
            delay = rng.uniform(0.1, length)
            out = work / f"stopped-{attempts}"
            where, resumes = interrupted_then_resumed(data, out, delay, args)
            if not where.startswith("interrupted at epoch"):
                print(f"SIGINT {delay:.2f} s after epoch 1 of {length:.2f} s training landed outside the training loop "
                      f"({where.splitlines()[0] if where else 'no message'})", flush=True)
                continue
            stopped += 1
            same = same_run(work / "whole", out)
            identical += same
            print(f"stop {stopped}: SIGINT {delay:.2f} s after epoch 1 of {length:.2f} s training ({where}), "
                  f"{resumes} resume(s): {'bit-identical' if same else 'DIFFERENT'}", flush=True)
        print(f"{identical} of {stopped} stopped runs bit-identical")
        sys.exit(0 if identical == stopped == args.stops else 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
