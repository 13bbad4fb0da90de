"""Model-selection benchmarks (issue: sweep, --lr auto, shipped configs). Figures to report, not timed tests.

    python scripts/bench_selection.py sweep      # a 16-point (and 64-point) sweep against one train of one point
    python scripts/bench_selection.py defaults   # imgcls with no tuning flags against LogisticRegression() defaults
    python scripts/bench_selection.py configs    # the shipped configs' test top-1/top-5 against their targets

Every imgcls figure comes from the `imgcls` command in a process of its own (what a user runs, imports and data
loading included), on a warm decoded cache (each dataset is loaded once first). scikit-learn fits the very pixels
imgcls trains on: the same training images (imgcls's validation images held out), normalized the same way, and is
scored on the same test images. Run it on an otherwise idle machine; it writes bench_selection.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("IMGCLS_TEST_DATA") or ROOT.parent / "shared" / "datasets")
DATASETS = {  # name: (imgcls flags, shipped config, targets: top-1, top-5)
    "mnist": (["--dataset", "mnist", "--data-dir", str(DATA)], "mnist.yaml", (0.926, None)),
    "fashion-mnist": (["--dataset", "fashion-mnist", "--data-dir", str(DATA)], "fashion-mnist.yaml", (0.845, None)),
    "cifar10": (["--dataset", "imagefolder", "--data-dir", str(DATA / "cifar10-jpeg")], "cifar10.yaml",
                (0.420, 0.870)),
    "cifar10-sample": (["--dataset", "cifar10-sample"], None, (None, None)),
}


def imgcls(*args: str, out: Path) -> tuple[dict, float]:
    """`imgcls ARGS --out OUT -q`: its JSON summary and its wall time."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "imgcls", *args, "--out", str(out), "-q"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"imgcls {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), seconds


def bench_sweep(work: Path) -> dict:
    """A 4x4 grid of learning rates and weight decays (configs/cifar10.yaml otherwise) against one train of one of
    its points, then 8x8; the same data, warm cache, one after the other in this run."""
    data = DATASETS["cifar10"][0]
    config = ["--config", str(ROOT / "configs" / "cifar10.yaml"), *data]
    imgcls("train", *config, "--epochs", "1", out=work / "warm")  # decodes and caches the data once
    _, one = imgcls("train", *config, "--lr", "0.002", "--weight-decay", "0.01", out=work / "one")
    figures = {"one_train_s": round(one, 2)}
    for points, lrs, decays in ((16, "0.001:0.01:4", "0.001:0.1:4"), (64, "0.0005:0.02:8", "0.0005:0.2:8")):
        summary, seconds = imgcls("sweep", *config, "--lr", lrs, "--weight-decay", decays, out=work / f"s{points}")
        best = json.loads((Path(summary["sweep_dir"]) / "sweep.json").read_text())
        figures[f"sweep_{points}_s"] = round(seconds, 2)
        figures[f"sweep_{points}_ratio"] = round(seconds / one, 2)
        figures[f"sweep_{points}_best"] = best["points"][best["best_point"]]["options"]
    return figures


def sklearn_defaults(dataset: str) -> dict:
    """LogisticRegression() with every default (lbfgs, C=1, 100 iterations) on imgcls's own prepared pixels."""
    import warnings

    import torch
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    sys.path.insert(0, str(ROOT / "src"))
    from imgcls.config import build_config
    from imgcls.data.normalize import PixelNormalizer
    from imgcls.data.prepare import prepare

    flags = DATASETS[dataset][0]
    config = build_config(None, {flags[i][2:].replace("-", "_"): flags[i + 1] for i in range(0, len(flags), 2)})
    data = prepare(config.data, config.train.seed)
    normalize = PixelNormalizer(data.normalization, torch.device("cpu"))
    x_train = normalize(data.train.images.flatten(1)).numpy()
    x_test = normalize(data.test.images.flatten(1)).numpy()
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # its default 100 iterations stop before convergence
        model = LogisticRegression().fit(x_train, data.train.labels.numpy())
    seconds = time.perf_counter() - started
    return {"top1": float((model.predict(x_test) == data.test.labels.numpy()).mean()), "fit_s": round(seconds, 1),
            "iterations": int(model.n_iter_[0])}


def bench_defaults(work: Path, names: list[str]) -> dict:
    rows = {}
    for name in names:
        flags = DATASETS[name][0]
        imgcls("train", *flags, "--epochs", "1", "--lr", "0.01", out=work / f"warm-{name}")  # the cache, once
        summary, seconds = imgcls("train", *flags, out=work / f"defaults-{name}")
        config = (Path(summary["run_dir"]) / "config.yaml").read_text()
        chosen = next(line.split(":")[1].strip() for line in config.splitlines() if line.strip().startswith("lr:"))
        epochs = len((Path(summary["run_dir"]) / "epochs.jsonl").read_text().splitlines())
        sklearn = sklearn_defaults(name)
        rows[name] = {"imgcls_top1": summary["test"]["top1"], "imgcls_s": round(seconds, 1), "imgcls_lr": chosen,
                      "imgcls_epochs": epochs, "sklearn_top1": sklearn["top1"], "sklearn_fit_s": sklearn["fit_s"],
                      "within_half_a_point": summary["test"]["top1"] >= sklearn["top1"] - 0.005}
        print(name, rows[name], flush=True)
    return rows


def bench_configs(work: Path, names: list[str]) -> dict:
    rows = {}
    for name in names:
        flags, config, (want1, want5) = DATASETS[name]
        if config is None:
            continue
        summary, seconds = imgcls("train", "--config", str(ROOT / "configs" / config), *flags[2:],
                                  out=work / f"config-{name}")
        test = summary["test"]
        rows[name] = {"top1": test["top1"], "top5": test["top5"], "seconds": round(seconds, 1), "target_top1": want1,
                      "target_top5": want5, "met": test["top1"] >= want1 and (want5 is None or test["top5"] >= want5)}
        print(name, rows[name], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("sweep", "defaults", "configs", "all"))
    parser.add_argument("--datasets", default=",".join(DATASETS), help="for defaults and configs")
    parser.add_argument("--json", type=Path, default=Path("bench_selection.json"))
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs and sweeps in this folder")
    args = parser.parse_args()
    names = args.datasets.split(",")
    results = json.loads(args.json.read_text()) if args.json.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-selection-") as folder:
        work = args.keep or Path(folder)
        if args.part in ("sweep", "all"):
            results["sweep"] = bench_sweep(work)
        if args.part in ("defaults", "all"):
            results.setdefault("defaults", {}).update(bench_defaults(work, names))
        if args.part in ("configs", "all"):
            results.setdefault("configs", {}).update(bench_configs(work, names))
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
