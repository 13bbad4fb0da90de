"""Benchmark imgcls's data path and training loop against a tutorial pipeline, the hardware floor and scikit-learn.

One run, one dataset (a CIFAR-10 JPEG image folder), these measurements in order:

1. tutorial: torchvision ImageFolder + ToTensor + Normalize, a DataLoader, nn.Linear(3072, 10), SGD;
   whole epochs over the 50,000 training images, timed as a user sees them (worker start-up included).
2. imgcls load: prepare() from an empty decoded cache (cold), then again (warm).
3. imgcls epochs and two floors, in turn: one epoch of imgcls's real training step (train_one_epoch
   over Batches, warm data), then the floors: one full-batch forward, loss, backward and SGD step over
   the same training images, (a) preloaded as one normalized float32 tensor on the device (the
   arithmetic alone), (b) starting from the decoded uint8 images, converted and normalized in the
   step (as the issue's own floor was measured). Several rounds; medians, and the median of each
   round's epoch/floor ratio (all met the same load).
4. end to end: imgcls.training.train.train() with the shipped CIFAR-10 config (warm cache), against
   scikit-learn's LogisticRegression on the same per-pixel standardized pixels.
5. decoding: all 60,000 JPEGs by imgcls's decoder (worker processes), in images/s per core, against a
   one-thread loop of torchvision's read_file + decode_jpeg on a sample, in the same run.
6. a whole process: `imgcls train --config configs/cifar10.yaml --data-dir DIR`, cold (empty cache) then
   warm, timed from its start to its first training step and to its end.
7. under load: imgcls epochs, each run's thread count chosen as train() chooses it, with and without a
   process this benchmark starts to keep one core busy (stopped and continued in turn, SIGSTOP/SIGCONT).

Then a table of times and of ratios against their targets, and the figures as JSON.

    python scripts/bench.py --device cpu [--data-dir DIR] [--json bench.json] [--skip-sklearn]
    python scripts/bench.py --device cuda --synthetic     # no data files: the tutorial, epochs and floors only

With --synthetic (CIFAR-10-shaped random pixels, for a machine the data cannot reach, such as a lent GPU)
the tutorial reads uint8 arrays through PIL as torchvision's CIFAR10 class does, without the JPEG decoding
of the image-folder tutorial, so its ratio to imgcls is smaller; loads, end to end and scikit-learn are
skipped.

The decoded cache lives in a fresh temporary folder (IMGCLS_CACHE, set in main()), removed at exit; your own
cache is neither read nor touched. A benchmark to run by hand, never a test.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from imgcls.config import Config, DataConfig, OptimConfig, ScheduleConfig, build_config, default_cache_dir
from imgcls.data.batches import make_batches
from imgcls.data.normalize import fit_normalization
from imgcls.data.prepare import prepare
from imgcls.data.types import LabelledImages, PreparedData
from imgcls.device import step_threads
from imgcls.training.engine import Engine, Quiet, new_model
from imgcls.training.interrupt import StopRequest
from imgcls.linear.model import LinearClassifier
from imgcls.training.train import train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # as tutorials hard-code them
ONE_THREAD_SAMPLE = 5_000  # images the one-thread decode_jpeg loop decodes, for its rate


@dataclass
class TutorialEpochs:
    epoch_s: float  # median
    epochs_s: list[float]
    images: int
    num_workers: int
    batch_size: int
    source: str


@dataclass
class LoadTimes:
    cold_s: float  # prepare() from an empty decoded cache: decode both splits and write them
    warm_s: float
    train: int
    val: int
    test: int


@dataclass
class ImgclsEpochs:
    epoch_s: float  # median
    epochs_s: list[float]
    min_s: float
    images: int
    steps: int
    batch_size: int
    threads: int | None  # as train() would choose them
    last_train_top1: float = 0.0


@dataclass
class FloorSteps:
    step_s: float  # median
    steps_s: list[float]
    min_s: float
    ratio_per_round: list[float]  # imgcls epoch / this floor, round by round
    median_ratio: float
    images: int


@dataclass
class EndToEnd:
    wall_s: float
    top1: float
    top5: float
    best_epoch: int
    epochs_run: int
    train_s: float
    config: str | None
    config_note: str
    settings: dict


@dataclass
class SklearnFit:
    fit_s: float | None = None
    scale_s: float | None = None
    top1: float | None = None
    top5: float | None = None
    iterations: int | None = None
    missing: str | None = None  # why it did not run


@dataclass
class DecodeRate:
    images: int
    seconds: float  # imgcls's decoder, every image of both splits
    processes: int  # that decoded them (this one included)
    one_thread_images: int
    one_thread_s: float  # torchvision.io.read_file + decode_jpeg, one image at a time, one thread

    @property
    def per_core(self) -> float:
        return self.images / self.seconds / self.processes

    @property
    def one_thread(self) -> float:
        return self.one_thread_images / self.one_thread_s


@dataclass
class WholeProcess:
    """`imgcls train` as a user runs it, from before its process starts."""

    first_step_s: float | None  # to its first training step
    total_s: float  # to its end
    returncode: int


@dataclass
class UnderLoad:
    idle_epoch_s: float  # median over the rounds
    loaded_epoch_s: float  # with a process keeping one core busy
    idle_threads: list[int | None]  # each round's choice, as train() makes it
    loaded_threads: list[int | None]

    @property
    def ratio(self) -> float:
        return self.loaded_epoch_s / self.idle_epoch_s


@dataclass
class BenchResults:
    device: str
    device_name: str
    torch: str
    data_dir: str | None
    batch_size: int
    busy_cpus_at_start: float | None
    tutorial: TutorialEpochs | None = None
    load: LoadTimes | None = None
    imgcls_epoch: ImgclsEpochs | None = None
    floor: FloorSteps | None = None
    floor_uint8: FloorSteps | None = None
    end_to_end: EndToEnd | None = None
    sklearn: SklearnFit | None = None
    decode: DecodeRate | None = None
    process_cold: WholeProcess | None = None
    process_warm: WholeProcess | None = None
    under_load: UnderLoad | None = None
    stacked_epoch: ImgclsEpochs | None = None  # 16 models stacked
    stacked_floor: FloorSteps | None = None
    targets: dict = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        """Per image, since the tutorial trains on all 50,000 images and imgcls on 45,000 (10% held out)."""
        return (self.tutorial.epoch_s / self.tutorial.images) / (self.imgcls_epoch.epoch_s / self.imgcls_epoch.images)


@dataclass(frozen=True)
class Target:
    name: str
    threshold: float
    at_least: bool
    value: Callable[[BenchResults], float | None]
    cuda_only: bool = False

    def wanted(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.threshold:g}"

    def met(self, value: float | None) -> bool | None:
        return None if value is None else bool(value >= self.threshold if self.at_least else value <= self.threshold)


def _if(part, value: Callable):
    """value(part), or None where that measurement did not run."""
    return None if part is None else value(part)


TARGETS = (
    Target("speedup: tutorial / imgcls epoch (per image)", 25.0, True, lambda r: r.speedup),
    Target("imgcls epoch / floor (median of the rounds)", 1.0, False, lambda r: r.floor.median_ratio),
    Target("16 stacked models' epoch / their floor (median of the rounds)", 1.0, False,
           lambda r: _if(r.stacked_floor, lambda f: f.median_ratio)),
    Target("imgcls epoch / floor from uint8 (median of the rounds)", 1.3, False, lambda r: r.floor_uint8.median_ratio),
    Target("imgcls end to end / sklearn fit", 1 / 8, False,
           lambda r: r.end_to_end.wall_s / r.sklearn.fit_s if r.end_to_end and r.sklearn and r.sklearn.fit_s else None),
    Target("warm load (s)", 1.0, False, lambda r: _if(r.load, lambda load: load.warm_s)),
    Target("imgcls end-to-end test top-1", 0.41, True, lambda r: _if(r.end_to_end, lambda e2e: e2e.top1)),
    Target("cold load: decode and cache the 60,000 JPEGs (s)", 3.0, False, lambda r: _if(r.load, lambda l: l.cold_s)),
    Target("decode rate per core / one-thread decode_jpeg loop", 1.0, True,
           lambda r: _if(r.decode, lambda d: d.per_core / d.one_thread)),
    Target("warm process: time to first step (s)", 1.5, False, lambda r: _if(r.process_warm, lambda p: p.first_step_s)),
    Target("warm process: whole run of configs/cifar10.yaml (s)", 6.0, False,
           lambda r: _if(r.process_warm, lambda p: p.total_s)),
    Target("cold process: whole run of configs/cifar10.yaml (s)", 9.0, False,
           lambda r: _if(r.process_cold, lambda p: p.total_s)),
    Target("epoch with one core busy / idle (median of the rounds)", 1.5, False,
           lambda r: _if(r.under_load, lambda u: u.ratio)),
    Target("GPU epoch at batch 128 (s)", 0.020, False, lambda r: r.imgcls_epoch.epoch_s, cuda_only=True),
    Target("GPU 10-epoch training time (s)", 0.3, False, lambda r: sum(r.imgcls_epoch.epochs_s[:10]), cuda_only=True),
)


def clock(device: torch.device) -> float:
    """perf_counter once the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model or platform.machine()} ({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads)"


def busy_cpus() -> float | None:
    """How many CPUs something else kept busy over the last second (Linux /proc/stat): timings are noisy if > 0.3."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait

    try:
        total, idle = sample()
        time.sleep(1.0)
        total2, idle2 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (os.cpu_count() or 1) * (1 - (idle2 - idle) / max(total2 - total, 1))


def bench_tutorial(dataset, source: str, device: torch.device, batch_size: int, epochs: int) -> TutorialEpochs:
    """The PyTorch CIFAR-10 tutorial's data path, with the linear model: seconds per whole epoch."""
    from torch import nn
    from torch.utils.data import DataLoader

    # The tutorial's num_workers=2 on CPU; on a GPU box, the common min(8, CPUs) with pinned memory.
    workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 2
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda")
    model = nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)).to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    seconds = []
    for _ in range(epochs):
        start = clock(device)
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
        seconds.append(clock(device) - start)
    return TutorialEpochs(statistics.median(seconds), seconds, len(dataset), workers, batch_size, source)


def tutorial_transform():
    from torchvision import transforms

    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])


def jpeg_folder(data_dir: Path):
    """The image folder's training JPEGs, each decoded by PIL when the DataLoader asks for it."""
    from torchvision import datasets

    return datasets.ImageFolder(str(data_dir / "train"), transform=tutorial_transform())


class ArrayImages(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: an HWC uint8 array row to a PIL image, then the transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = labels.tolist()
        self.transform = tutorial_transform()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def synthetic_data(seed: int = 0) -> PreparedData:
    """CIFAR-10-shaped random pixels and labels (45,000 train, 5,000 val, 10,000 test), for a machine without the
    data (a lent GPU can take only 64 MB along): the timings hold, accuracies mean nothing."""
    generator = torch.Generator().manual_seed(seed)

    def split(count: int) -> LabelledImages:
        return LabelledImages(torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator),
                              torch.randint(0, 10, (count,), generator=generator))

    train, val, test = split(45_000), split(5_000), split(10_000)
    return PreparedData("synthetic", [f"class{i}" for i in range(10)], (3, 32, 32), train, val, test,
                        fit_normalization(train.images, DataConfig().normalize), None, 0, False)


def bench_load(data_dir: Path) -> tuple[LoadTimes, PreparedData]:
    """prepare() from an empty cache (decode both splits and write them), then from the warm cache."""
    config = DataConfig(dataset="cifar10", data_dir=str(data_dir), val_split=0.1)
    start = time.perf_counter()
    cold = prepare(config, seed=0)
    cold_s = time.perf_counter() - start
    assert not cold.from_cache, f"the cache at {default_cache_dir()} was not empty"
    start = time.perf_counter()
    warm = prepare(config, seed=0)
    warm_s = time.perf_counter() - start
    assert warm.from_cache, "the second prepare() did not read the cache"
    return LoadTimes(cold_s, warm_s, len(warm.train), len(warm.val), len(warm.test)), warm


def imgcls_epochs(data: PreparedData, device: torch.device, batch_size: int, epochs: int, models: int = 1):
    """imgcls's own training loop (Engine.train_epoch: the default ce loss, SGD momentum 0.9, constant schedule;
    `models` stacked, at rates 0.01, 0.009, ...), on the thread count train() would choose now: each call runs the
    next epoch and returns its seconds."""
    batches = make_batches(data, "train", batch_size, device, seed=0)
    every_core = torch.get_num_threads()
    threads = step_threads(None, batches.batch_size, math.prod(data.shape), len(data.classes) * models, device)
    torch.set_num_threads(every_core)  # step_threads set torch's count: the floors keep every core
    configs = [Config(optim=OptimConfig(lr=0.01 * (1 - index / (2 * models)), batch_size=batch_size),
                      schedule=ScheduleConfig(schedule="constant")) for index in range(models)]
    engine = Engine([new_model(config, data, None, len(batches), device) for config in configs], data, batches,
                    None, device, None, StopRequest(), Quiet())
    info = ImgclsEpochs(0.0, [], 0.0, batches.num_images, len(batches), batches.batch_size, threads)

    def next_epoch(epoch: int) -> float:
        for model in engine.models:
            model.progress.epoch = epoch
            model.progress.start_epoch(batches.device)
        torch.set_num_threads(threads or every_core)
        start = clock(device)
        engine.train_epoch(epoch, 0)
        seconds = clock(device) - start
        torch.set_num_threads(every_core)
        progress = engine.models[0].progress
        info.last_train_top1 = float(progress.correct) / max(progress.seen, 1)
        return seconds

    return next_epoch, info


def floor_steps(data: PreparedData, device: torch.device, from_uint8: bool, models: int = 1):
    """One full-batch forward, loss, backward and SGD step over the training set (of `models` linear models, as
    one layer of models x K outputs); each call returns its seconds. from_uint8=False: the pixels wait in memory
    already normalized in float32 (the arithmetic alone, the stricter floor); True: the step starts from the
    decoded uint8 images imgcls keeps, so it also converts and normalizes them, as the issue's own 0.39 s floor
    did."""
    scale, shift = (t.flatten().to(device) for t in data.normalization.scale_and_shift())
    images = data.train.images.flatten(1).to(device)
    normalized = None if from_uint8 else torch.addcmul(-shift, images.float(), scale)
    labels = data.train.labels.to(device)
    classes = len(data.classes)
    model = LinearClassifier(data.shape, classes * models).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    targets = labels.unsqueeze(1).expand(-1, models)

    def step() -> float:
        start = clock(device)
        pixels = torch.addcmul(-shift, images.float(), scale) if from_uint8 else normalized
        optimizer.zero_grad(set_to_none=True)
        scores = model(pixels).view(len(labels), models, classes).transpose(1, 2)  # (n, K, models)
        torch.nn.functional.cross_entropy(scores, targets).backward()
        optimizer.step()
        return clock(device) - start

    return step


def bench_stacked(data: PreparedData, device: torch.device, batch_size: int, rounds: int,
                  models: int = 16) -> tuple[ImgclsEpochs, FloorSteps]:
    """An epoch of `models` stacked models against the full-batch floor of as many (models x K outputs), in turn."""
    next_epoch, epochs = imgcls_epochs(data, device, batch_size, rounds, models)
    floor = floor_steps(data, device, from_uint8=False, models=models)
    floor()
    times = []
    for epoch in range(rounds):
        epochs.epochs_s.append(next_epoch(epoch))
        times.append(floor())
    epochs.epoch_s, epochs.min_s = statistics.median(epochs.epochs_s), min(epochs.epochs_s)
    ratios = [e / f for e, f in zip(epochs.epochs_s, times)]
    return epochs, FloorSteps(statistics.median(times), times, min(times), ratios, statistics.median(ratios),
                              epochs.images)


def bench_epoch_and_floors(data: PreparedData, device: torch.device, batch_size: int,
                           rounds: int) -> tuple[ImgclsEpochs, FloorSteps, FloorSteps]:
    """imgcls epochs and the two floors taken in turn, one of each per round, so that all meet the same machine:
    on a shared machine the load changes from one second to the next. Medians over the rounds, and the
    median of the rounds' own ratios. Returns the epochs, the floor and the floor from uint8."""
    next_epoch, epochs = imgcls_epochs(data, device, batch_size, rounds)
    floors = {"floor": floor_steps(data, device, from_uint8=False),
              "floor_uint8": floor_steps(data, device, from_uint8=True)}
    for step in floors.values():
        step()  # warmup: the first touches the pages of the float copy
    times = {"floor": [], "floor_uint8": []}
    for epoch in range(rounds):
        epochs.epochs_s.append(next_epoch(epoch))
        for name, step in floors.items():
            times[name].append(step())
    epochs.epoch_s, epochs.min_s = statistics.median(epochs.epochs_s), min(epochs.epochs_s)
    results = []
    for name in floors:
        ratios = [e / f for e, f in zip(epochs.epochs_s, times[name])]
        results.append(FloorSteps(statistics.median(times[name]), times[name], min(times[name]), ratios,
                                  statistics.median(ratios), epochs.images))
    return epochs, *results


def bench_under_load(data: PreparedData, device: torch.device, batch_size: int, rounds: int) -> UnderLoad:
    """imgcls epochs with and without a process that keeps one core busy, in turn (the busy process is stopped
    and continued), each with the thread count a run started at that moment would choose."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    times: dict[bool, list[float]] = {False: [], True: []}
    threads: dict[bool, list] = {False: [], True: []}
    try:
        for epoch in range(2 * rounds):
            loaded = bool(epoch % 2)
            busy.send_signal(signal.SIGCONT if loaded else signal.SIGSTOP)
            time.sleep(0.2)
            next_epoch, info = imgcls_epochs(data, device, batch_size, 1)
            times[loaded].append(next_epoch(0))
            threads[loaded].append(info.threads)
    finally:
        busy.kill()
        busy.wait()
        torch.set_num_threads(os.cpu_count() or 1)
    return UnderLoad(statistics.median(times[False]), statistics.median(times[True]), threads[False], threads[True])


def bench_decode(data_dir: Path) -> DecodeRate:
    """imgcls's decoder on every JPEG of both splits, and torchvision's one-thread read_file + decode_jpeg on a
    sample of them, in this run: images per second per core against one thread."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    from imgcls.data.decode import decode_images, usable_cores
    from imgcls.data.readers import FileReader, walk_files

    files = [path for split in ("train", "test") for path in walk_files(data_dir / split)]
    start = time.perf_counter()  # one worker per core, as `imgcls` takes
    decoded = decode_images(files, FileReader(files), None, False, workers=usable_cores())
    seconds = time.perf_counter() - start
    sample = files[::max(1, len(files) // ONE_THREAD_SAMPLE)][:ONE_THREAD_SAMPLE]
    torch.set_num_threads(1)
    start = time.perf_counter()
    for path in sample:
        decode_jpeg(read_file(path), mode=ImageReadMode.RGB)
    one_thread_s = time.perf_counter() - start
    torch.set_num_threads(os.cpu_count() or 1)
    return DecodeRate(len(files), seconds, len(decoded.decoded_by), len(sample), one_thread_s)


# Run in the child: note when the first training step starts (train_one_epoch makes its step first), then imgcls.
FIRST_STEP_PROBE = """
import sys, time
from imgcls.training.engine import Engine
step = Engine.step
def probe(*args, **kwargs):
    if not getattr(probe, "seen", False):
        probe.seen = True
        print(f"FIRST_STEP {time.time()!r}", file=sys.stderr, flush=True)
    return step(*args, **kwargs)
Engine.step = probe
from imgcls.cli.app import main
sys.argv = ["imgcls", *sys.argv[1:]]
main()
"""


def bench_process(config_path: Path, data_dir: Path, device_arg: str, cold: bool) -> WholeProcess:
    """`imgcls train --config ... --data-dir ...` in a new process, timed from just before it starts; cold: with
    a new empty decoded cache, else with the benchmark's (filled by bench_load)."""
    out = tempfile.mkdtemp(prefix="imgcls-bench-run-")
    command = [sys.executable, "-c", FIRST_STEP_PROBE, "train", "--config", str(config_path), "--data-dir",
               str(data_dir), "--device", device_arg, "--out", str(Path(out) / "run")]
    environment = {**os.environ, **({"IMGCLS_CACHE": str(Path(out) / "cache")} if cold else {})}
    try:
        start = time.time()
        finished = subprocess.run(command, capture_output=True, text=True, env=environment)
        total_s = time.time() - start
    finally:
        shutil.rmtree(out, ignore_errors=True)
    marks = [float(line.split()[1]) for line in finished.stderr.splitlines() if line.startswith("FIRST_STEP ")]
    if finished.returncode:
        print(finished.stderr[-2000:], file=sys.stderr)
    return WholeProcess(marks[0] - start if marks else None, total_s, finished.returncode)


def bench_end_to_end(config_path: Path, data_dir: Path, device_arg: str) -> EndToEnd:
    """imgcls.training.train.train() with the shipped config, wall time from prepare() (warm cache) to the test metrics."""
    out = tempfile.mkdtemp(prefix="imgcls-bench-run-")
    flags = {"dataset": "cifar10", "data_dir": str(data_dir), "device": device_arg, "out": out}
    found = config_path.is_file()
    config = build_config(config_path if found else None, flags)
    try:
        start = time.perf_counter()
        result = train(config, Reporter(quiet=True), overwrite=True)
        wall_s = time.perf_counter() - start
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return EndToEnd(wall_s, result.test.top1, result.test.top5, result.best_epoch, len(result.history),
                    sum(epoch["seconds"] for epoch in result.history), str(config_path) if found else None,
                    "" if found else f"{config_path} not found: ran imgcls's built-in defaults instead",
                    {"epochs": config.train.epochs, "batch_size": config.optim.batch_size, "lr": config.optim.lr,
                     "schedule": config.schedule.schedule, "weight_decay": config.optim.weight_decay,
                     "val_split": config.data.val_split})


def bench_sklearn(data: PreparedData) -> SklearnFit:
    """LogisticRegression(C=1e-3, lbfgs) on the same training images, each pixel standardized on train."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        return SklearnFit(missing="scikit-learn is not installed (pip install imgcls[bench])")
    import numpy as np

    start = time.perf_counter()
    scaler = StandardScaler().fit(data.train.images.flatten(1).numpy())
    x_train = scaler.transform(data.train.images.flatten(1).numpy())  # float64, as a user would have it
    x_test = scaler.transform(data.test.images.flatten(1).numpy())
    scale_s = time.perf_counter() - start
    model = LogisticRegression(C=1e-3, max_iter=200, solver="lbfgs")
    start = time.perf_counter()
    model.fit(x_train, data.train.labels.numpy())
    fit_s = time.perf_counter() - start
    scores = model.decision_function(x_test)
    y = data.test.labels.numpy()
    top5 = np.argsort(-scores, axis=1)[:, :5]
    return SklearnFit(fit_s, scale_s, float((model.classes_[top5[:, 0]] == y).mean()),
                      float((model.classes_[top5] == y[:, None]).any(1).mean()), int(model.n_iter_[0]))


SKIPPED = "skipped (--synthetic: no files, no meaningful accuracy)"


def render(results: BenchResults) -> Table:
    """The measurements, then each target with its verdict."""
    table = Table(title=f"imgcls benchmark: {results.device_name}, torch {results.torch}, "
                        f"{results.busy_cpus_at_start or 0:.1f} CPUs busy elsewhere at start")
    for column in ("measurement", "value", "detail"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for row in training_rows(results) + data_path_rows(results):
        table.add_row(*row)
    table.add_section()
    for target in TARGETS:
        if target.cuda_only and results.device != "cuda":
            continue
        value = results.targets[target.name]["value"]
        verdict = {True: "[green]met[/]", False: "[red]not met[/]", None: "[dim]n/a[/]"}[target.met(value)]
        table.add_row(target.name, "-" if value is None else f"{value:.3g}", f"target {target.wanted()}: {verdict}")
    return table


def judge(results: BenchResults) -> dict:
    """Each target's value, wanted value and verdict, for the JSON and the table."""
    judged = {}
    for target in TARGETS:
        if target.cuda_only and results.device != "cuda":
            continue
        value = target.value(results)
        judged[target.name] = {"value": value, "target": target.wanted(), "met": target.met(value)}
    return judged


def training_rows(r: BenchResults) -> list[tuple[str, str, str]]:
    tut, ep, floor, floor8 = r.tutorial, r.imgcls_epoch, r.floor, r.floor_uint8
    rows = [("tutorial epoch (DataLoader)", f"{tut.epoch_s:.2f} s",
             f"{tut.images} images from {tut.source}, batch {tut.batch_size}, num_workers={tut.num_workers}, "
             f"median of {len(tut.epochs_s)}"),
            ("imgcls epoch (warm)", f"{ep.epoch_s * 1e3:.1f} ms",
             f"{ep.images} images, {ep.steps} steps of {ep.batch_size}, {ep.threads} threads, median of "
             f"{len(ep.epochs_s)} (fastest {ep.min_s * 1e3:.1f} ms)")]
    if r.device == "cuda":
        rows.append(("imgcls 10-epoch training", f"{sum(ep.epochs_s[:10]):.3f} s",
                     "sum of the first 10 epoch times above"))
    rows += [("floor: full-batch step", f"{floor.step_s * 1e3:.1f} ms",
              f"{floor.images} images, normalized float32 on the device, median of {len(floor.steps_s)} "
              f"(fastest {floor.min_s * 1e3:.1f} ms), one after each imgcls epoch"),
             ("floor from uint8: full-batch step", f"{floor8.step_s * 1e3:.1f} ms",
              f"the same step starting from the decoded uint8 images (convert and normalize too), median of "
              f"{len(floor8.steps_s)} (fastest {floor8.min_s * 1e3:.1f} ms)")]
    if r.stacked_epoch:
        stacked, sfloor = r.stacked_epoch, r.stacked_floor
        rows += [("16 stacked models' epoch", f"{stacked.epoch_s * 1e3:.1f} ms",
                  f"{stacked.steps} steps of {stacked.batch_size}, {stacked.threads} threads, median of "
                  f"{len(stacked.epochs_s)}"),
                 ("floor of 16 models: full-batch step", f"{sfloor.step_s * 1e3:.1f} ms",
                  f"one layer of 16 x K outputs, normalized float32, median of {len(sfloor.steps_s)}, in turn")]
    if r.under_load:
        load = r.under_load
        rows.append(("imgcls epoch, one core kept busy", f"{load.loaded_epoch_s * 1e3:.1f} ms",
                     f"against {load.idle_epoch_s * 1e3:.1f} ms without (medians, in turn); threads chosen "
                     f"{load.loaded_threads} busy, {load.idle_threads} not"))
    if r.end_to_end:
        e2e, s = r.end_to_end, r.end_to_end.settings
        rows.append(("imgcls end to end (train())", f"{e2e.wall_s:.2f} s",
                     f"test top-1 {e2e.top1:.2%} top-5 {e2e.top5:.2%}; {e2e.epochs_run} epochs, batch "
                     f"{s['batch_size']}, lr {s['lr']}, weight decay {s['weight_decay']}, {s['schedule']}, "
                     f"val split {s['val_split']}; {e2e.config or e2e.config_note}"))
    else:
        rows.append(("imgcls end to end (train())", "-", SKIPPED))
    sk = r.sklearn
    if sk and sk.fit_s is not None:
        rows.append(("sklearn LogisticRegression fit", f"{sk.fit_s:.2f} s",
                     f"test top-1 {sk.top1:.2%} top-5 {sk.top5:.2%}; {sk.iterations} lbfgs iterations "
                     f"(+{sk.scale_s:.1f} s StandardScaler)"))
    else:
        rows.append(("sklearn LogisticRegression fit", "-", sk.missing if sk else "skipped (--skip-sklearn)"))
    return rows


def data_path_rows(r: BenchResults) -> list[tuple[str, str, str]]:
    if not r.load:
        return [("imgcls load", "-", SKIPPED)]
    rows = [("imgcls cold load", f"{r.load.cold_s:.2f} s",
             "prepare(): decode train + test JPEGs into an empty cache (the files are in the OS page cache by now)"),
            ("imgcls warm load", f"{r.load.warm_s:.3f} s", f"{r.load.train} train / {r.load.val} val / "
                                                            f"{r.load.test} test")]
    if r.decode:
        d = r.decode
        rows += [("imgcls decoding", f"{d.images / d.seconds:,.0f} img/s",
                  f"{d.images} JPEGs in {d.seconds:.2f} s by {d.processes} processes: {d.per_core:,.0f} img/s per "
                  f"core"),
                 ("one-thread read_file + decode_jpeg", f"{d.one_thread:,.0f} img/s",
                  f"{d.one_thread_images} of the same JPEGs, one at a time, in {d.one_thread_s:.2f} s")]
    for name, run in (("cold", r.process_cold), ("warm", r.process_warm)):
        if run:
            first = "-" if run.first_step_s is None else f"{run.first_step_s:.2f} s"
            rows.append((f"imgcls train process, {name} cache", f"{run.total_s:.2f} s",
                         f"first training step at {first}; configs/cifar10.yaml, exit code {run.returncode}"))
    return rows


def main() -> None:
    args = parse_args()
    # imgcls reads IMGCLS_CACHE when it looks for the cache: an empty folder of the benchmark's own.
    cache_dir = tempfile.mkdtemp(prefix="imgcls-bench-cache-")
    os.environ["IMGCLS_CACHE"] = cache_dir
    atexit.register(shutil.rmtree, cache_dir, ignore_errors=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no usable CUDA GPU here; use --device cpu")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    rounds = args.epochs_imgcls or 7
    if device.type == "cuda":
        rounds = max(rounds, 10)  # the GPU target is about a 10-epoch run
    console = Console(stderr=True)
    results = BenchResults(device.type, device_name(device), torch.__version__, str(args.data_dir), args.batch_size,
                           busy_cpus())
    if (results.busy_cpus_at_start or 0) > 0.3:
        console.print(f"[yellow]warning: other processes keep {results.busy_cpus_at_start:.1f} of {os.cpu_count()} "
                      f"CPUs busy: the timings will be slower and noisier (imgcls's many small steps suffer most)[/]")
    if args.synthetic:
        run_synthetic(results, args, device, rounds, console)
    else:
        run_all(results, args, device, rounds, console)
    results.targets = judge(results)
    Console(width=max(Console().width, 130)).print(render(results))
    args.json.write_text(json.dumps(asdict(results), indent=2) + "\n")
    console.print(f"wrote {args.json}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="CIFAR-10 image folder (train/, test/)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    parser.add_argument("--json", type=Path, default=Path("bench.json"), help="where to write the figures")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs-tutorial", type=int, default=1, help="tutorial epochs to time (slow)")
    parser.add_argument("--epochs-imgcls", type=int, default=None,
                        help="rounds of one imgcls epoch and each floor (default 7; at least 10 on CUDA)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "cifar10.yaml",
                        help="the CIFAR-10 config for the end-to-end run")
    parser.add_argument("--skip-sklearn", action="store_true")
    parser.add_argument("--synthetic", action="store_true",
                        help="CIFAR-10-shaped random data instead of --data-dir: the tutorial, epochs and floors only")
    return parser.parse_args()


def bench_training(results: BenchResults, data: PreparedData, device: torch.device, batch_size: int, rounds: int,
                   say: Callable[[str], None]) -> None:
    """imgcls epochs and the floors in turn, then (on the CPU) epochs with and without one core kept busy."""
    say("imgcls epochs and the floors, in turn ...")
    results.imgcls_epoch, results.floor, results.floor_uint8 = bench_epoch_and_floors(data, device, batch_size, rounds)
    say("16 stacked models' epochs and their floor, in turn ...")
    results.stacked_epoch, results.stacked_floor = bench_stacked(data, device, batch_size, rounds)
    if device.type == "cpu":
        say("imgcls epochs with one core kept busy, and without ...")
        results.under_load = bench_under_load(data, device, batch_size, max(3, rounds // 2))


def run_synthetic(results: BenchResults, args, device: torch.device, rounds: int, console: Console) -> None:
    results.data_dir = None
    data = synthetic_data()
    console.print("1/3 tutorial epoch (arrays -> PIL, as torchvision's CIFAR10) ...")
    both = LabelledImages(torch.cat([data.train.images, data.val.images]),
                          torch.cat([data.train.labels, data.val.labels]))
    results.tutorial = bench_tutorial(ArrayImages(both.images, both.labels),
                                      "uint8 arrays to PIL, as torchvision's CIFAR10 class (no JPEG decoding)", device,
                                      args.batch_size, args.epochs_tutorial)
    bench_training(results, data, device, args.batch_size, rounds, lambda text: console.print(f"{text} (2-3/3)"))


def run_all(results: BenchResults, args, device: torch.device, rounds: int, console: Console) -> None:
    console.print("1/8 tutorial epoch ...")
    results.tutorial = bench_tutorial(jpeg_folder(args.data_dir), "JPEG files, ImageFolder (PIL decodes each)",
                                      device, args.batch_size, args.epochs_tutorial)
    console.print("2/8 imgcls train process, cold cache (an empty one of its own) ...")
    results.process_cold = bench_process(args.config, args.data_dir, device.type, cold=True)
    console.print("3/8 imgcls cold and warm load ...")
    results.load, data = bench_load(args.data_dir)
    console.print("4/8 imgcls train process, warm cache ...")
    results.process_warm = bench_process(args.config, args.data_dir, device.type, cold=False)
    console.print("5/8 imgcls decoding against one thread ...")
    results.decode = bench_decode(args.data_dir)
    bench_training(results, data, device, args.batch_size, rounds, lambda text: console.print(f"{text} (6-7/8)"))
    console.print("8/8 imgcls end to end, scikit-learn ...")
    results.end_to_end = bench_end_to_end(args.config, args.data_dir, device.type)
    if not args.skip_sklearn:
        results.sklearn = bench_sklearn(data)
    if results.end_to_end.config_note:
        console.print(f"[yellow]{results.end_to_end.config_note}[/]")


if __name__ == "__main__":
    main()
