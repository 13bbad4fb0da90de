"""imgcls's DEFAULTS against scikit-learn on image sets imgcls was never tuned on (docs/selection-benchmark.md).

    python scripts/compare_sklearn.py                      # build the sets, fit scikit-learn (cached), run imgcls
    python scripts/compare_sklearn.py --only imgcls --label after --table after.md
    python scripts/compare_sklearn.py --timing             # the 60,000-image cost bound (long; resumable)

The protocol is fixed here, before any result was seen: the sets and their seed, scikit-learn's grid, the
validation rows (imgcls's own held-out split). Every set is a features file of uint8 pixels, so imgcls and
scikit-learn read the same numbers; the test split is scored once, after everything is chosen.
imgcls runs as a user runs it (`python -m imgcls train`, no tuning flag), from --src (default: this repo's src).
scikit-learn runs in this process, with its numpy's BLAS threads (run nothing else beside it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("IMGCLS_TEST_DATA") or "/work/shared/datasets")
SEED = 0  # every set is drawn by its own numpy Generator(SEED), so building one never changes another
GRID = [10.0 ** k for k in range(-5, 3)]  # C: 1e-5 ... 1e2, 8 decades, smallest first (warm starts go up the path)
MAX_ITER = 1000  # lbfgs's default 100 stops short on most sets here; the comparison is about C, not iterations
VAL_SPLIT = 0.1  # imgcls's default --val-split
TIMING_SET = "cifar200-64"
SETS = {  # name: (source, per-class train count or total train count, test, side of the image)
    "cifar10-5": ("cifar10", {"per_class": 5}, "all", 32),
    "cifar10-50": ("cifar10", {"per_class": 50}, "all", 32),
    "fmnist-5": ("fashion-mnist", {"per_class": 5}, "all", 28),
    "fmnist-50": ("fashion-mnist", {"per_class": 50}, "all", 28),
    "mnist-8x8": ("mnist", {"total": 1400}, "all", 8),
    "mnist-16x16": ("mnist", {"total": 7300}, "all", 16),
    "cifar200-64-10k": ("cifar200", {"per_class": 50}, {"per_class": 10}, 64),
    TIMING_SET: ("cifar200", "all", "all", 64),
}


# ---------------------------------------------------------------------------------------------------------------
# Sets: read the real datasets, draw the training images, write SETDIR/<name>.npz
# ---------------------------------------------------------------------------------------------------------------

def read_grey(name: str, train: bool):
    """MNIST / Fashion-MNIST from their IDX files: uint8 (N, 1, 28, 28), labels, class names."""
    from torchvision.datasets import MNIST, FashionMNIST

    data = (MNIST if name == "mnist" else FashionMNIST)(root=str(DATA), train=train, download=False)
    return data.data.unsqueeze(1), data.targets.numpy(), list(data.classes)


def cifar_files(split: str) -> tuple[list[Path], np.ndarray, list[str]]:
    """The JPEG copy's files and labels, class folders sorted (airplane ... truck: CIFAR-10's own order)."""
    root = DATA / "cifar10-jpeg" / split
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [(path, k) for k, name in enumerate(classes) for path in sorted((root / name).glob("*.jpg"))]
    return [f for f, _ in files], np.array([k for _, k in files]), classes


def decode(files: list[Path], rows: np.ndarray):
    import torch
    from torchvision.io import ImageReadMode, decode_image, read_file

    return torch.stack([decode_image(read_file(str(files[i])), mode=ImageReadMode.RGB) for i in rows])


def per_class(labels: np.ndarray, count: int, rng) -> np.ndarray:
    """`count` rows of each class drawn at random (classes in order, one Generator), ascending."""
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == k))[:count] for k in np.unique(labels)]))


def proportional(labels: np.ndarray, total: int, rng) -> np.ndarray:
    """`total` rows drawn at random, each class's share as in the split (largest remainders), ascending."""
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * total / counts.sum()
    take = np.floor(quota).astype(int)
    take[np.argsort(take - quota, kind="stable")[:total - take.sum()]] += 1
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == k))[:n] for k, n in zip(classes, take)]))


def draw(labels: np.ndarray, rule, rng) -> np.ndarray:
    if rule == "all":
        return np.arange(len(labels))
    return per_class(labels, rule["per_class"], rng) if "per_class" in rule else \
        proportional(labels, rule["total"], rng)


def split_into_200(labels: np.ndarray, rng) -> np.ndarray:
    """Each CIFAR-10 class's images dealt at random into 20 labels of equal size: 200 labels, 10 tellable apart."""
    fine = np.empty_like(labels)
    for k in range(10):
        members = np.flatnonzero(labels == k)
        fine[members[rng.permutation(len(members))]] = k * 20 + np.arange(len(members)) % 20
    return fine


def resize(images, side: int):
    """uint8 images to side x side (bilinear, antialiased when shrinking), uint8, in chunks to bound memory."""
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resize as tv_resize

    return images if images.shape[-1] == side else torch.cat(
        [tv_resize(chunk, [side, side], interpolation=InterpolationMode.BILINEAR, antialias=True)
         for chunk in images.split(2048)])


def build(name: str, setdir: Path) -> Path:
    """Write SETDIR/NAME.npz (uint8 x (N, D), int64 y, class names) unless it is there already."""
    path = setdir / f"{name}.npz"
    if path.exists():
        return path
    source, train_rule, test_rule, side = SETS[name]
    rng = np.random.default_rng(SEED)
    split = {}
    if source == "cifar200":
        (train_files, train_y, names), (test_files, test_y, _) = cifar_files("train"), cifar_files("test")
        train_y, test_y = split_into_200(train_y, rng), split_into_200(test_y, rng)  # train's deal, then test's
        classes = [f"{names[k // 20]}-{k % 20:02d}" for k in range(200)]
        for part, files, y, rule in (("train", train_files, train_y, train_rule),
                                     ("test", test_files, test_y, test_rule)):
            rows = draw(y, rule, rng)
            split[part] = (resize(decode(files, rows), side), y[rows])
    elif source == "cifar10":
        for part, rule in (("train", train_rule), ("test", test_rule)):
            files, y, classes = cifar_files(part)
            rows = draw(y, rule, rng)
            split[part] = (decode(files, rows), y[rows])
    else:  # mnist, fashion-mnist: downscaled, antialiased, after the draw (resizing is per image)
        for part, rule in (("train", train_rule), ("test", test_rule)):
            images, y, classes = read_grey(source, part == "train")
            rows = draw(y, rule, rng)
            split[part] = (resize(images[rows], side), y[rows])
    arrays = {f"{a}_{part}": v for part, (x, y) in split.items() for a, v in
              (("x", x.reshape(len(x), -1).numpy().astype(np.uint8)), ("y", y.astype(np.int64)))}
    setdir.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".tmp.npz"), **arrays, classes=np.array(classes))
    path.with_suffix(".tmp.npz").rename(path)  # a build cut short leaves no half file under the real name
    return path


def describe(path: Path) -> dict:
    """The set's sizes, and a hash of its four arrays (a set rebuilt differently must not meet cached results)."""
    digest = hashlib.sha256()
    with np.load(path) as f:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            digest.update(np.ascontiguousarray(f[key]).tobytes())
        return {"train": len(f["y_train"]), "test": len(f["y_test"]), "D": int(f["x_train"].shape[1]),
                "classes": len(f["classes"]), "fingerprint": digest.hexdigest()[:16]}


# ---------------------------------------------------------------------------------------------------------------
# scikit-learn: LogisticRegression() and C chosen on imgcls's validation rows; cached (imgcls changes do not touch it)
# ---------------------------------------------------------------------------------------------------------------

def standardize(x_fit: np.ndarray):
    """StandardScaler's per-feature mean and population std, with imgcls's rule for a constant feature
    (data/features.py fit_feature_normalization: std 0, or <= 1e-6 |mean|, is left unscaled: std 1)."""
    mean = x_fit.mean(0, dtype=np.float64)
    std = x_fit.std(0, dtype=np.float64)
    std = np.where((std <= 1e-6 * np.abs(mean)) | (std == 0), 1.0, std)
    return lambda x: (x - mean) / std


def val_rows(y: np.ndarray, num_classes: int, src: Path) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) exactly as `imgcls train --dataset features` holds them out (no x_val in the
    file, no --limit, --seed 0): the same function, called as data/features.py prepare_features calls it."""
    import torch

    sys.path.insert(0, str(src))
    from imgcls.data.split import split_train_val

    train, val = split_train_val(torch.from_numpy(y).long(), num_classes, VAL_SPLIT, None, 0, name="features",
                                 unit="rows", more="add rows, or give x_val and y_val")
    return train.numpy(), val.numpy()


def scores(model, x: np.ndarray, y: np.ndarray) -> dict:
    s = model.decision_function(x)
    top = np.argsort(-s, axis=1)[:, :5]
    return {"top1": float((model.classes_[top[:, 0]] == y).mean()),
            "top5": float((model.classes_[top] == y[:, None]).any(1).mean())}


def fit(model, x: np.ndarray, y: np.ndarray) -> dict:
    """Fit; iterations used and whether lbfgs converged (stopped before MAX_ITER) rather than a warning."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    n_iter = int(np.max(model.n_iter_))
    return {"n_iter": n_iter, "converged": n_iter < MAX_ITER}


def sklearn_set(path: Path, src: Path) -> dict:
    """LogisticRegression() (C=1) on all training rows; then C from GRID by validation top-1 (train part fitted,
    warm-started up the path as LogisticRegressionCV does), refit on all rows with that C. Test scored last."""
    from sklearn.linear_model import LogisticRegression

    with np.load(path) as f:
        x, y, classes = f["x_train"].astype(np.float64), f["y_train"], f["classes"]
    out = {"fingerprint": describe(path)["fingerprint"], "max_iter": MAX_ITER, "grid": GRID,
           "load_before": os.getloadavg()[0]}  # a shared machine: say how busy it was

    started = time.perf_counter()
    default = LogisticRegression(max_iter=MAX_ITER)
    scale_all = standardize(x)
    out["default"] = fit(default, scale_all(x), y)
    out["default"]["seconds"] = time.perf_counter() - started

    started = time.perf_counter()
    train, val = val_rows(y, len(classes), src)
    scale = standardize(x[train])  # fitted on the training part only, as imgcls fits its normalization
    x_train, x_val = scale(x[train]), scale(x[val])
    model, search, solutions = LogisticRegression(max_iter=MAX_ITER, warm_start=True), [], []
    for c in GRID:
        model.set_params(C=c)
        tick = time.perf_counter()
        search.append({"C": c, **fit(model, x_train, y[train]), "seconds": time.perf_counter() - tick,
                       "val_top1": scores(model, x_val, y[val])["top1"]})
        solutions.append((model.coef_.copy(), model.intercept_.copy()))
        print(f"  C={c:g}: val top-1 {search[-1]['val_top1']:.4f}, {search[-1]['n_iter']} iterations", flush=True)
    best = max(range(len(GRID)), key=lambda i: (search[i]["val_top1"], -i))  # ties: the smaller C, as np.argmax
    model.set_params(C=GRID[best])  # refit on all rows, warm-started from the chosen C's solution
    model.coef_, model.intercept_ = solutions[best]
    refit = fit(model, scale_all(x), y)
    out["tuned"] = {"C": GRID[best], "search": search, "refit": refit, "val_rows": len(val),
                    "seconds": time.perf_counter() - started}

    with np.load(path) as f:  # the test split, read once, at the end
        x_test, y_test = scale_all(f["x_test"].astype(np.float64)), f["y_test"]
    out["default"].update(scores(default, x_test, y_test))
    out["tuned"].update(scores(model, x_test, y_test))
    return out


# ---------------------------------------------------------------------------------------------------------------
# imgcls: `python -m imgcls train` as a user runs it, timed whole; resumable (RUN/bench.json)
# ---------------------------------------------------------------------------------------------------------------

def run_imgcls(path: Path, run: Path, src: Path, *flags: str) -> dict:
    """Run (or reuse a finished run of) `imgcls train --dataset features --data-dir PATH FLAGS`; its figures."""
    record = run / "bench.json"
    if not (record.exists() and (run / "metrics.json").exists()):
        command = [sys.executable, "-m", "imgcls", "train", "--dataset", "features", "--data-dir", str(path),
                   "--out", str(run), "--overwrite", "-q", *flags]
        started, load, cpu = time.perf_counter(), os.getloadavg()[0], _child_cpu()  # a shared machine: say how busy
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(src)})
        seconds, cpu = time.perf_counter() - started, _child_cpu() - cpu
        if done.returncode != 0:
            sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        record.write_text(json.dumps({"command": command[1:], "seconds": seconds, "cpu_seconds": cpu,
                                      "load_before": load}))
    import yaml

    metrics = json.loads((run / "metrics.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    lines = (run / "epochs.jsonl").read_text().splitlines() if (run / "epochs.jsonl").exists() else []
    logged, refit, phases = len([x for x in lines if x.strip()]), metrics.get("refit"), metrics.get("seconds") or {}
    # With a refit, epochs.jsonl holds the fit's epochs; where cross-validation chose (no fit phase), its history
    fit_epochs = logged if refit is None or "fit" in phases else refit["epochs"]
    timed = json.loads(record.read_text())
    return {"seconds": timed["seconds"], "cpu_seconds": timed.get("cpu_seconds"),
            "load_before": timed.get("load_before"), "top1": metrics["test"]["top1"],
            "top5": metrics["test"].get("top5"), "phases": phases or None, "refit": refit, "logged_epochs": logged,
            "fit_epochs": fit_epochs, "val_count": metrics.get("val", {}).get("count"),
            "lr": config["optim"]["lr"], "weight_decay": config["optim"]["weight_decay"], "run": str(run)}


def timing(setdir: Path, src: Path, label: str) -> dict:
    """(a) defaults on the 60,000-image set, against (b) one train at (a)'s chosen rate and decay for (a)'s fit
    epochs: what choosing the hyperparameters costs."""
    path = build(TIMING_SET, setdir)
    a = run_imgcls(path, setdir / "runs" / label / "timing-defaults", src)
    help_text = subprocess.run([sys.executable, "-m", "imgcls", "train", "--help"], capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(src), "COLUMNS": "200"}).stdout
    fixed = ["--lr", str(a["lr"]), "--weight-decay", str(a["weight_decay"]), "--epochs", str(a["fit_epochs"]),
             "--patience", "none"] + (["--no-refit"] if "--no-refit" in help_text else [])
    b = run_imgcls(path, setdir / "runs" / label / "timing-fixed", src, *fixed)
    return {"defaults": a, "fixed": b, "fixed_flags": fixed, "ratio": a["seconds"] / b["seconds"],
            "cpu_ratio": a["cpu_seconds"] / b["cpu_seconds"]}


def _child_cpu() -> float:
    """User + system seconds of this process's finished children: a cost that another job beside it barely moves
    (run with OMP_NUM_THREADS=1, so no thread spins while it waits for a core)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------------------

def se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def table(names: list[str], sizes: dict, sk: dict, ours: dict, label: str) -> str:
    """One row a set; '-' where a side has no result yet. Top-5 is shown for sets of more than 10 classes."""
    lines = [f"| set | train / test | D | classes | imgcls defaults ({label}) top-1 ± SE | s | LogisticRegression() "
             f"top-1 | s | tuned sklearn top-1 (C) | s | imgcls >= tuned - 1 SE |", "|" + " --- |" * 11]
    for name in names:
        size, s, m, n = sizes[name], sk.get(name), ours.get(name), sizes[name]["test"]
        five = lambda r: f" (top-5 {100 * r['top5']:.1f})" if size["classes"] > 10 and r.get("top5") else ""  # noqa
        cells = [name, f"{size['train']:,} / {n:,}", f"{size['D']:,}", str(size["classes"])] + ["-"] * 7
        if m:
            cells[4:6] = f"{100 * m['top1']:.2f} ± {100 * se(m['top1'], n):.2f}{five(m)}", f"{m['seconds']:.0f}"
        if s:
            d, t = s["default"], s["tuned"]
            cells[6:10] = (f"{100 * d['top1']:.2f}{five(d)}{'' if d['converged'] else ' †'}", f"{d['seconds']:.0f}",
                           f"{100 * t['top1']:.2f}{five(t)} ({t['C']:g})", f"{t['seconds']:.0f}")
        if m and s:  # within one SE of imgcls's own accuracy, or above
            cells[10] = "yes" if m["top1"] >= s["tuned"]["top1"] - se(m["top1"], n) else "no"
        lines.append("| " + " | ".join(cells) + " |")
    notes = (f"\nSE = sqrt(p(1-p)/n_test). scikit-learn: lbfgs, at most {MAX_ITER} iterations († "
             f"LogisticRegression() stopped there, not converged); C from {GRID[0]:g} to {GRID[-1]:g} chosen on "
             f"imgcls's validation rows, refit on all training rows. Seconds: imgcls the whole command (reading, "
             f"search, training, test, figures); scikit-learn standardization + fit (+ search and refit), test scoring "
             f"excluded.")
    return "\n".join(lines) + "\n" + notes + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(n for n in SETS if n != TIMING_SET), help="comma-separated names")
    parser.add_argument("--setdir", type=Path, default=Path("/work/bench-sets"), help="sets, runs and results")
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the imgcls to measure (its src folder)")
    parser.add_argument("--only", choices=("imgcls", "sklearn"), help="run one side (the other is read if cached)")
    parser.add_argument("--label", default="current", help="names imgcls's results: SETDIR/imgcls-LABEL.json")
    parser.add_argument("--table", type=Path, help="also write the markdown table here")
    parser.add_argument("--timing", action="store_true", help="only the 60,000-image timing (long; resumable)")
    args = parser.parse_args()
    setdir, src = args.setdir.resolve(), args.src.resolve()

    if args.timing:
        result = timing(setdir, src, args.label)
        (setdir / f"timing-{args.label}.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return
    names = args.sets.split(",")
    unknown = [n for n in names if n not in SETS or n == TIMING_SET]
    if unknown:
        sys.exit(f"unknown (or timing-only) sets: {', '.join(unknown)}; known: {', '.join(SETS)}")
    sk_file, our_file = setdir / "sklearn.json", setdir / f"imgcls-{args.label}.json"
    sk = json.loads(sk_file.read_text()) if sk_file.exists() else {}
    ours = json.loads(our_file.read_text()) if our_file.exists() else {}
    sizes = {}
    for name in names:
        started = time.perf_counter()
        path = build(name, setdir)
        sizes[name] = describe(path)
        print(f"{name}: {sizes[name]} ({time.perf_counter() - started:.0f} s to build or find)", flush=True)
        if name in sk and sk[name]["fingerprint"] != sizes[name]["fingerprint"]:
            sys.exit(f"{path} is not the set {sk_file} was fitted on; move one of them away")
        if args.only != "imgcls" and name not in sk:  # cached: the sets and the grid are fixed
            sk[name] = sklearn_set(path, src)
            sk_file.write_text(json.dumps(sk, indent=1))
            print(f"  sklearn: {json.dumps({k: sk[name][k] for k in ('default', 'tuned')})[:400]}", flush=True)
        if args.only != "sklearn":
            ours[name] = run_imgcls(path, setdir / "runs" / args.label / name, src)
            our_file.write_text(json.dumps(ours, indent=1))
            print(f"  imgcls: {ours[name]}", flush=True)
    text = table(names, sizes, sk, ours, args.label)
    print(text)
    if args.table:
        args.table.write_text(text)


if __name__ == "__main__":
    main()
