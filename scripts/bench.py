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
4. end to end: imgcls.train.train() with the shipped CIFAR-10 config (warm cache), against
   scikit-learn's LogisticRegression on the same per-pixel standardized pixels.

Then a table of times and of ratios against their targets, and the figures as JSON.

    python scripts/bench.py --device cpu [--data-dir DIR] [--json bench.json] [--skip-sklearn]
    python scripts/bench.py --device cuda --synthetic     # no data files: the tutorial, epochs and floors only

With --synthetic (CIFAR-10-shaped random pixels, for a machine the data cannot reach, such as a lent GPU)
the tutorial reads uint8 arrays through PIL as torchvision's CIFAR10 class does, without the JPEG decoding
of the image-folder tutorial, so its ratio to imgcls is smaller; loads, end to end and scikit-learn are
skipped.

The decoded cache lives in a fresh temporary folder (IMGCLS_CACHE), removed at exit; your own
cache is neither read nor touched. A benchmark to run by hand, never a test.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# imgcls reads IMGCLS_CACHE when it looks for the cache: point it at an empty folder before anything else.
CACHE_DIR = tempfile.mkdtemp(prefix="imgcls-bench-cache-")
os.environ["IMGCLS_CACHE"] = CACHE_DIR
atexit.register(shutil.rmtree, CACHE_DIR, ignore_errors=True)

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from imgcls.config import DataConfig, OptimConfig, ScheduleConfig, build_config  # noqa: E402
from imgcls.data.batches import Batches  # noqa: E402
from imgcls.data.prepare import LabelledImages, PreparedData, fit_normalization, prepare  # noqa: E402
from imgcls.interrupt import StopRequest  # noqa: E402
from imgcls.losses import Loss  # noqa: E402
from imgcls.model import LinearClassifier  # noqa: E402
from imgcls.optim import build_optimizer, build_scheduler  # noqa: E402
from imgcls.report import Reporter  # noqa: E402
from imgcls.train import Progress, train, train_one_epoch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # as tutorials hard-code them


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


def bench_tutorial(dataset, source: str, device: torch.device, batch_size: int, epochs: int) -> dict:
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
    return {"epoch_s": statistics.median(seconds), "epochs_s": seconds, "images": len(dataset),
            "num_workers": workers, "batch_size": batch_size, "source": source}


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


def bench_load(data_dir: Path) -> tuple[dict, PreparedData]:
    """prepare() from an empty cache (decode both splits and write them), then from the warm cache."""
    config = DataConfig(dataset="cifar10", data_dir=str(data_dir), val_split=0.1)
    start = time.perf_counter()
    cold = prepare(config, seed=0)
    cold_s = time.perf_counter() - start
    assert not cold.from_cache, f"the cache at {CACHE_DIR} was not empty"
    start = time.perf_counter()
    warm = prepare(config, seed=0)
    warm_s = time.perf_counter() - start
    assert warm.from_cache, "the second prepare() did not read the cache"
    return {"cold_s": cold_s, "warm_s": warm_s, "train": len(warm.train), "val": len(warm.val),
            "test": len(warm.test)}, warm


def imgcls_epochs(data: PreparedData, device: torch.device, batch_size: int, epochs: int):
    """imgcls's own training step (the default ce loss, SGD lr 0.01 momentum 0.9, constant schedule), as
    train() runs it: each call runs the next epoch of train_one_epoch and returns its seconds."""
    batches = Batches(data.train, data.normalization, batch_size, device, seed=0)
    model = LinearClassifier(data.shape, len(data.classes)).to(device)
    loss = Loss("ce")
    optimizer = build_optimizer(model, OptimConfig(lr=0.01, batch_size=batch_size), device)
    scheduler = build_scheduler(optimizer, ScheduleConfig(), len(batches), epochs)
    info = {"images": batches.num_images, "steps": len(batches), "batch_size": batches.batch_size}

    def next_epoch(epoch: int) -> float:
        progress = Progress(epoch=epoch)
        progress.start_epoch(batches.device)
        start = clock(device)
        train_one_epoch(model, batches, loss, optimizer, scheduler, progress, Reporter(quiet=True), None,
                        StopRequest())
        seconds = clock(device) - start
        info["last_train_top1"] = float(progress.correct) / max(progress.seen, 1)
        return seconds

    return next_epoch, info


def floor_steps(data: PreparedData, device: torch.device, from_uint8: bool):
    """One full-batch forward, loss, backward and SGD step over the training set; each call returns its seconds.
    from_uint8=False: the pixels wait in memory already normalized in float32 (the arithmetic alone, the stricter
    floor); True: the step starts from the decoded uint8 images imgcls keeps, so it also converts and normalizes
    them, as the issue's own 0.39 s floor did."""
    scale, shift = (t.flatten().to(device) for t in data.normalization.scale_and_shift())
    images = data.train.images.flatten(1).to(device)
    normalized = None if from_uint8 else torch.addcmul(-shift, images.float(), scale)
    labels = data.train.labels.to(device)
    model = LinearClassifier(data.shape, len(data.classes)).to(device)
    loss = Loss("ce")
    optimizer = build_optimizer(model, OptimConfig(lr=0.01), device)

    def step() -> float:
        start = clock(device)
        pixels = torch.addcmul(-shift, images.float(), scale) if from_uint8 else normalized
        optimizer.zero_grad(set_to_none=True)
        loss(model(pixels), labels).backward()
        optimizer.step()
        return clock(device) - start

    return step


def bench_epoch_and_floors(data: PreparedData, device: torch.device, batch_size: int, rounds: int) -> dict:
    """imgcls epochs and the two floors taken in turn, one of each per round, so that all meet the same machine:
    on a shared machine the load changes from one second to the next. Medians over the rounds, and the
    median of the rounds' own ratios."""
    next_epoch, epoch_info = imgcls_epochs(data, device, batch_size, rounds)
    floors = {"floor": floor_steps(data, device, from_uint8=False),
              "floor_uint8": floor_steps(data, device, from_uint8=True)}
    for step in floors.values():
        step()  # warmup: the first touches the pages of the float copy
    times = {"imgcls_epoch": [], "floor": [], "floor_uint8": []}
    for epoch in range(rounds):
        times["imgcls_epoch"].append(next_epoch(epoch))
        for name, step in floors.items():
            times[name].append(step())
    epochs = times["imgcls_epoch"]
    result = {"imgcls_epoch": {"epoch_s": statistics.median(epochs), "epochs_s": epochs, "min_s": min(epochs),
                               **epoch_info}}
    for name in floors:
        ratios = [e / f for e, f in zip(epochs, times[name])]
        result[name] = {"step_s": statistics.median(times[name]), "steps_s": times[name], "min_s": min(times[name]),
                        "ratio_per_round": ratios, "median_ratio": statistics.median(ratios),
                        "images": epoch_info["images"]}
    return result


def bench_end_to_end(config_path: Path, data_dir: Path, device_arg: str) -> dict:
    """imgcls.train.train() with the shipped config, wall time from prepare() (warm cache) to the test metrics."""
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
    return {"wall_s": wall_s, "top1": result.test.top1, "top5": result.test.top5, "best_epoch": result.best_epoch,
            "epochs_run": len(result.history), "train_s": sum(r["seconds"] for r in result.history),
            "config": str(config_path) if found else None,
            "config_note": "" if found else f"{config_path} not found: ran imgcls's built-in defaults instead",
            "settings": {"epochs": config.train.epochs, "batch_size": config.optim.batch_size, "lr": config.optim.lr,
                         "schedule": config.schedule.schedule, "weight_decay": config.optim.weight_decay,
                         "val_split": config.data.val_split}}


def bench_sklearn(data: PreparedData) -> dict:
    """LogisticRegression(C=1e-3, lbfgs) on the same training images, each pixel standardized on train."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        return {"missing": "scikit-learn is not installed (pip install imgcls[bench])"}
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
    return {"fit_s": fit_s, "scale_s": scale_s, "top1": float((model.classes_[top5[:, 0]] == y).mean()),
            "top5": float((model.classes_[top5] == y[:, None]).any(1).mean()), "iterations": int(model.n_iter_[0])}


def build_report(r: dict) -> tuple[Table, dict]:
    tut, load, ep, floor, floor8, e2e, sk = (r.get(k) for k in ("tutorial", "load", "imgcls_epoch", "floor",
                                                                 "floor_uint8", "end_to_end", "sklearn"))
    # Per image, since the tutorial trains on all 50,000 images and imgcls on 45,000 (10% held out).
    speedup = (tut["epoch_s"] / tut["images"]) / (ep["epoch_s"] / ep["images"])
    ratios = {"tutorial_over_imgcls_epoch": speedup, "imgcls_epoch_over_floor": floor["median_ratio"],
              "imgcls_epoch_over_floor_uint8": floor8["median_ratio"],
              "warm_load_s": load["warm_s"] if load else None,
              "end_to_end_over_sklearn_fit": e2e["wall_s"] / sk["fit_s"] if e2e and sk and "fit_s" in sk else None}
    skipped = "skipped (--synthetic: no files, no meaningful accuracy)"
    table = Table(title=f"imgcls benchmark: {r['device_name']}, torch {r['torch']}, "
                        f"{r['busy_cpus_at_start'] or 0:.1f} CPUs busy elsewhere at start")
    for column in ("measurement", "value", "detail"):
        table.add_column(column, justify="right" if column == "value" else "left")
    table.add_row("tutorial epoch (DataLoader)", f"{tut['epoch_s']:.2f} s",
                  f"{tut['images']} images from {tut['source']}, batch {tut['batch_size']}, "
                  f"num_workers={tut['num_workers']}, median of {len(tut['epochs_s'])}")
    if load:
        table.add_row("imgcls cold load", f"{load['cold_s']:.2f} s",
                      "decode train + test JPEGs into an empty cache (the files are in the OS page cache by now)")
        table.add_row("imgcls warm load", f"{load['warm_s']:.3f} s",
                      f"{load['train']} train / {load['val']} val / {load['test']} test")
    else:
        table.add_row("imgcls load", "-", skipped)
    table.add_row("imgcls epoch (warm)", f"{ep['epoch_s'] * 1e3:.1f} ms",
                  f"{ep['images']} images, {ep['steps']} steps of {ep['batch_size']}, median of {len(ep['epochs_s'])} "
                  f"(fastest {ep['min_s'] * 1e3:.1f} ms)")
    if r["device"] == "cuda":
        table.add_row("imgcls 10-epoch training", f"{sum(ep['epochs_s'][:10]):.3f} s",
                      "sum of the first 10 epoch times above")
    table.add_row("floor: full-batch step", f"{floor['step_s'] * 1e3:.1f} ms",
                  f"{floor['images']} images, normalized float32 on the device, median of {len(floor['steps_s'])} "
                  f"(fastest {floor['min_s'] * 1e3:.1f} ms), one after each imgcls epoch")
    table.add_row("floor from uint8: full-batch step", f"{floor8['step_s'] * 1e3:.1f} ms",
                  f"the same step starting from the decoded uint8 images (convert and normalize too), median of "
                  f"{len(floor8['steps_s'])} (fastest {floor8['min_s'] * 1e3:.1f} ms)")
    if e2e:
        s = e2e["settings"]
        table.add_row("imgcls end to end (train())", f"{e2e['wall_s']:.2f} s",
                      f"test top-1 {e2e['top1']:.2%} top-5 {e2e['top5']:.2%}; {e2e['epochs_run']} epochs, batch "
                      f"{s['batch_size']}, lr {s['lr']}, weight decay {s['weight_decay']}, {s['schedule']}, "
                      f"val split {s['val_split']}; {e2e['config'] or e2e['config_note']}")
    else:
        table.add_row("imgcls end to end (train())", "-", skipped)
    if sk and "fit_s" in sk:
        table.add_row("sklearn LogisticRegression fit", f"{sk['fit_s']:.2f} s",
                      f"test top-1 {sk['top1']:.2%} top-5 {sk['top5']:.2%}; {sk['iterations']} lbfgs iterations "
                      f"(+{sk['scale_s']:.1f} s StandardScaler)")
    else:
        table.add_row("sklearn LogisticRegression fit", "-", sk["missing"] if sk else "skipped (--skip-sklearn)")
    table.add_section()
    checks = [("speedup: tutorial / imgcls epoch (per image)", speedup, 25.0, True, ">= 25x"),
              ("imgcls epoch / floor (median of the rounds)", ratios["imgcls_epoch_over_floor"], 1.3, False,
               "<= 1.3x"),
              ("imgcls epoch / floor from uint8 (median of the rounds)", ratios["imgcls_epoch_over_floor_uint8"], 1.3,
               False, "<= 1.3x"),
              ("imgcls end to end / sklearn fit", ratios["end_to_end_over_sklearn_fit"], 1 / 8, False, "< 1/8"),
              ("warm load (s)", ratios["warm_load_s"], 1.0, False, "< 1 s"),
              ("imgcls end-to-end test top-1", e2e["top1"] if e2e else None, 0.41, True, ">= 0.41")]
    if r["device"] == "cuda":
        checks += [("GPU epoch at batch 128 (s)", ep["epoch_s"], 0.020, False, "<= 0.020 s"),
                   ("GPU 10-epoch training time (s)", sum(ep["epochs_s"][:10]), 0.3, False, "<= 0.3 s")]
    targets = {}
    for name, value, target, at_least, wanted in checks:
        met = None if value is None else bool(value >= target if at_least else value <= target)
        verdict = {True: "[green]met[/]", False: "[red]not met[/]", None: "[dim]n/a[/]"}[met]
        table.add_row(name, "-" if value is None else f"{value:.3g}", f"target {wanted}: {verdict}")
        targets[name] = {"value": value, "target": wanted, "met": met}
    return table, {"ratios": ratios, "targets": targets}


def main() -> None:
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
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no usable CUDA GPU here; use --device cpu")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    epochs_imgcls = args.epochs_imgcls or 7
    if device.type == "cuda":
        epochs_imgcls = max(epochs_imgcls, 10)  # the GPU target is about a 10-epoch run
    console = Console(stderr=True)

    r = {"device": device.type, "device_name": device_name(device), "torch": torch.__version__,
         "data_dir": str(args.data_dir), "batch_size": args.batch_size, "busy_cpus_at_start": busy_cpus()}
    if (r["busy_cpus_at_start"] or 0) > 0.3:
        console.print(f"[yellow]warning: other processes keep {r['busy_cpus_at_start']:.1f} of {os.cpu_count()} CPUs "
                      f"busy: the timings will be slower and noisier (imgcls's many small steps suffer most)[/]")
    if args.synthetic:
        r["data_dir"] = None
        data = synthetic_data()
        console.print("1/2 tutorial epoch (arrays -> PIL, as torchvision's CIFAR10) ...")
        both = LabelledImages(torch.cat([data.train.images, data.val.images]),
                              torch.cat([data.train.labels, data.val.labels]))
        r["tutorial"] = bench_tutorial(ArrayImages(both.images, both.labels),
                                       "uint8 arrays to PIL, as torchvision's CIFAR10 class (no JPEG decoding)", device,
                                       args.batch_size, args.epochs_tutorial)
        console.print("2/2 imgcls epochs and the floors, in turn ...")
        r.update(bench_epoch_and_floors(data, device, args.batch_size, epochs_imgcls))
        r["load"] = r["end_to_end"] = r["sklearn"] = None
    else:
        run_all(r, args, device, epochs_imgcls, console)
    table, summary = build_report(r)
    Console(width=max(Console().width, 130)).print(table)
    r.update(summary)
    args.json.write_text(json.dumps(r, indent=2) + "\n")
    console.print(f"wrote {args.json}")


def run_all(r: dict, args, device: torch.device, epochs_imgcls: int, console: Console) -> None:
    console.print("1/5 tutorial epoch ...")
    r["tutorial"] = bench_tutorial(jpeg_folder(args.data_dir), "JPEG files, ImageFolder (PIL decodes each)", device,
                                   args.batch_size, args.epochs_tutorial)
    console.print("2/5 imgcls cold and warm load ...")
    r["load"], data = bench_load(args.data_dir)
    console.print("3/5 imgcls epochs and the floors, in turn ...")
    r.update(bench_epoch_and_floors(data, device, args.batch_size, epochs_imgcls))
    console.print("4/5 imgcls end to end ...")
    r["end_to_end"] = bench_end_to_end(args.config, args.data_dir, device.type)
    if not args.skip_sklearn:
        console.print("5/5 scikit-learn ...")
        r["sklearn"] = bench_sklearn(data)
    if r["end_to_end"]["config_note"]:
        console.print(f"[yellow]{r['end_to_end']['config_note']}[/]")


if __name__ == "__main__":
    main()
