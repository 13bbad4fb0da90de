"""Build the CIFAR-10 sample that ships inside the package (src/imgcls/data/embedded/).

A stratified, seeded sample of the CIFAR-10 JPEG copy in ../shared/datasets: the same
number of images from every class, stored unchanged (the JPEG bytes are copied, never
re-encoded) in one zip laid out as an image folder: train/<class>/NNNN.jpg, test/<class>/NNNN.jpg.

    python scripts/make_embedded_sample.py [--source DIR] [--train-per-class 300] [--test-per-class 100]
"""

import argparse
import random
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"
TARGET = ROOT / "src" / "imgcls" / "data" / "embedded" / "cifar10-sample.zip"


def sample_split(source: Path, split: str, per_class: int, rng: random.Random) -> list[Path]:
    chosen = []
    for class_dir in sorted(p for p in (source / split).iterdir() if p.is_dir()):
        files = sorted(class_dir.glob("*.jpg"))
        chosen += sorted(rng.sample(files, per_class))
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(TARGET, "w", compression=zipfile.ZIP_STORED) as archive:
        for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
            for path in sample_split(args.source, split, per_class, rng):
                # A fixed timestamp keeps the archive byte-identical from run to run.
                info = zipfile.ZipInfo(str(path.relative_to(args.source)), date_time=(2009, 4, 8, 0, 0, 0))
                archive.writestr(info, path.read_bytes())
    print(f"wrote {TARGET} ({TARGET.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
