"""--dataset features: precomputed embeddings from an .npz or .safetensors file (x_train, y_train, x_test,
y_test, optionally x_val, y_val and classes), held once as float32 and shaped as (1, 1, D) "images"."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from imgcls.config import DataConfig
from imgcls.data.readers import resolve_data_dir
from imgcls.data.registry import FEATURES_SUFFIXES
from imgcls.data.split import check_class_names, check_labels, limited_rows, split_train_val
from imgcls.data.types import LabelledImages, Normalization, PreparedData
from imgcls.errors import UserError, shown

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
SAVE = "numpy.savez(FILE.npz, x_train=..., y_train=..., x_test=..., y_test=...)"
CHUNK_VALUES = 1 << 22  # numbers handled at a time (32 MB in float64) where a whole-array temporary would
#                        double the memory or more


def chunk_rows(width: int) -> int:
    return max(1, CHUNK_VALUES // width)


def read_arrays(path: Path, names: tuple[str, ...]) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """The named arrays that are in the file (each read once), and its class names if it has them."""
    if path.is_dir() or not path.exists():
        state = "a folder" if path.is_dir() else "not there"
        raise UserError(f"--dataset features reads one file, and {path} is {state}; pass --data-dir FILE.npz (or "
                        f".safetensors) holding {', '.join(REQUIRED)}")
    if path.suffix.lower() not in FEATURES_SUFFIXES:
        raise UserError(f"{path} is not an .npz or .safetensors file; save the features with {SAVE}")
    try:
        return (_read_npz if path.suffix.lower() == ".npz" else _read_safetensors)(path, names)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, SafetensorError) as error:
        reason = str(error).partition("\n")[0][:120]
        raise UserError(f"cannot read features file {path} ({reason}); it may be truncated or another kind of "
                        f"file") from None


def _read_npz(path: Path, names):
    with open(path, "rb") as file:
        if file.read(6) == b"\x93NUMPY":  # np.load would read the one array, not an archive of them
            raise UserError(f"features file {path} is a single numpy array (.npy), not an .npz archive of arrays; "
                            f"save the features with {SAVE}")
    with np.load(path, allow_pickle=False) as npz:  # never unpickle: a features file cannot run code
        arrays = {name: npz[name] for name in names if name in npz.files}
        return arrays, npz["classes"].tolist() if "classes" in npz.files else None


def _read_safetensors(path: Path, names):
    with safe_open(str(path), framework="numpy") as file:
        arrays = {name: file.get_tensor(name) for name in names if name in file.keys()}
        text = (file.metadata() or {}).get("classes")
    try:
        classes = None if text is None else json.loads(text)
        why = "" if text is None or isinstance(classes, list) else f"it is {shown(classes)}"
    except ValueError as error:
        why = str(error)
    if why:
        raise UserError(f"features file {path}: its metadata's 'classes' is not a JSON list of class names ({why}); "
                        f"save it as json.dumps([name, ...])")
    return arrays, classes


def load_features(path: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[str]]:
    """{split: (float32 features (N, D), int64 labels (N,))} for train, test and val when the file has it,
    and the class names; every mistake in the file is a UserError that names the array."""
    arrays, classes = read_arrays(path, REQUIRED + ("x_val", "y_val"))
    wanted = REQUIRED + (("x_val", "y_val") if "x_val" in arrays or "y_val" in arrays else ())
    missing = [name for name in wanted if name not in arrays]
    if missing:
        raise UserError(f"features file {path} has no {', '.join(missing)} (it has: "
                        f"{', '.join(sorted(arrays)) or 'none of them'}); it needs {', '.join(REQUIRED)}, and x_val "
                        f"with y_val")
    splits = {split: (_features(path, f"x_{split}", arrays.pop(f"x_{split}")),
                      _labels(path, split, arrays.pop(f"y_{split}")))
              for split in ("train", "val", "test") if f"x_{split}" in arrays}
    classes = _class_names(path, classes, {split: y for split, (_, y) in splits.items()})
    width = splits["train"][0].shape[1]
    for split, (x, y) in splits.items():
        if x.shape[1] != width:
            raise UserError(f"features file {path}: the splits have different widths (x_train {width}, x_{split} "
                            f"{x.shape[1]}); every x array needs the same number of features per row")
        if len(x) != len(y):
            raise UserError(f"features file {path}: x_{split} has {len(x)} rows but y_{split} {len(y)} labels; "
                            f"give one label per row")
    splits = {split: (x, torch.from_numpy(y.astype(np.int64))) for split, (x, y) in splits.items()}
    check_labels("features", classes, {split: y for split, (_, y) in splits.items()}, f"features file {path}",
                 unit="rows")
    return splits, classes


def _features(path: Path, name: str, x: np.ndarray) -> torch.Tensor:
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise UserError(f"features file {path}: {name} has shape {x.shape}; it must be (N, D), one non-empty row of "
                        f"features per example")
    if x.dtype.kind not in "fiu":
        raise UserError(f"features file {path}: {name} holds {x.dtype} values; features must be floats or integers")
    # One writeable float32 copy (rows are moved in place for the validation split), none when x is one already;
    # integers above 2**24 lose their last digits
    features = torch.from_numpy(np.require(x, np.float32, ["C", "W"]))
    step = chunk_rows(features.shape[1])
    for start in range(0, len(features), step):  # in chunks: a mask of the whole array would be a quarter more
        bad = (~torch.isfinite(features[start:start + step]).all(1)).nonzero()
        if len(bad):
            raise UserError(f"features file {path}: {name} row {start + int(bad[0])} is not all finite numbers (NaN "
                            f"or infinity, or beyond float32's range); drop or fix such rows")
    return features


def _labels(path: Path, split: str, y: np.ndarray) -> np.ndarray:
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise UserError(f"features file {path}: y_{split} is {y.dtype} of shape {y.shape}; labels must be one whole "
                        f"class index per row, (N,) of integers")
    if len(y) and y.min() < 0:
        raise UserError(f"features file {path}: y_{split} has the label {y.min()}; class indices start at 0")
    return y


def _class_names(path: Path, classes, labels: dict[str, np.ndarray]) -> list[str]:
    """The class names; without a `classes` array, "0".."K-1" for the labels 0..K-1 of the training rows, each of
    which must have one (K is bounded by the rows before any list of K is made). Labels are compared as read, so
    that a huge one cannot wrap round when made int64."""
    given = classes is not None
    fix = "without a 'classes' array the labels must be 0..K-1, each on some training row: renumber them, or add " \
          "classes"
    if given and not isinstance(classes, list):  # an npz's 0-d array of one name
        raise UserError(f"features file {path}: 'classes' is {shown(classes)}, not a list of class names")
    if given:
        check_class_names("features", classes, f"features file {path}", "save 'classes' as distinct names, one a class")
    else:
        train = labels["train"]
        largest = train.max() if len(train) else 0
        if largest >= len(train):
            raise UserError(f"features file {path}: y_train has the label {largest}, but {len(train)} rows cannot hold "
                            f"every class 0..{largest}; {fix}")
        classes = [str(i) for i in range(int(largest) + 1)]
        absent = np.flatnonzero(np.bincount(train.astype(np.int64), minlength=len(classes)) == 0)
        if len(absent):
            raise UserError(f"features file {path}: no training row has the label {absent[0]} (y_train's labels run to "
                            f"{largest}); {fix}")
    for split, y in labels.items():
        if not len(y) or y.max() < len(classes):
            continue
        if given:
            raise UserError(f"features file {path}: a label is {y.max()} in y_{split} but there are {len(classes)} "
                            f"class names; labels index 'classes', 0 to {len(classes) - 1}")
        raise UserError(f"features file {path}: y_{split} has the label {y.max()}, which no training row has "
                        f"(y_train's labels are 0..{len(classes) - 1}); a model cannot learn a class it has no "
                        f"examples of: drop those rows, or add training rows of it")
    return classes


def fit_feature_normalization(features: torch.Tensor, kind: str) -> Normalization:
    """Per-feature ("pixel"), one for all features ("channel") or none, fitted in the features' units (two
    passes in float64, chunked: features need not be small numbers the way pixels are), stored on the 0..1 scale."""
    width = features.shape[1]
    shape = (1, 1, width)
    if kind == "none":
        return Normalization(torch.zeros(shape), torch.full(shape, 1 / 255))
    axes = (0,) if kind == "pixel" else (0, 1)
    count = len(features) * (1 if kind == "pixel" else width)
    chunks = features.split(chunk_rows(width))
    mean = sum(chunk.double().sum(axes) for chunk in chunks) / count
    std = (sum(((chunk.double() - mean) ** 2).sum(axes) for chunk in chunks) / count).sqrt()
    # A constant feature (std 0, or float noise around its mean) carries no information: leave it unscaled.
    std = torch.where((std > 0) & (std > 1e-6 * mean.abs()), std, torch.ones_like(std))
    mean, std = ((value / 255).expand(shape).float().contiguous() for value in (mean, std))
    return Normalization(mean, std)


def keep_rows_in_place(features: torch.Tensor, labels: torch.Tensor, index: torch.Tensor):
    """The rows `index` (ascending) moved to the front, in place, as views: no second copy of the features.
    Safe front to back: row index[i] >= i, so no row still to be read is overwritten."""
    step = chunk_rows(features.shape[1])
    for start in range(0, len(index), step):
        part = index[start:start + step]
        features[start:start + len(part)] = features[part]
        labels[start:start + len(part)] = labels[part]
    return features[:len(index)], labels[:len(index)]


def split_in_place(features: torch.Tensor, labels: torch.Tensor, train_index: torch.Tensor,
                   val_index: torch.Tensor):
    """(train, val) as two views of the one array: val's rows copied aside (the smaller part), train's (ascending)
    moved to the front, val's put after them. Rows in neither (left out by --limit) are overwritten."""
    val_x, val_y = features[val_index], labels[val_index]
    train_x, train_y = keep_rows_in_place(features, labels, train_index)
    val = slice(len(train_y), len(train_y) + len(val_y))
    features[val], labels[val] = val_x, val_y
    return (train_x, train_y), (features[val], labels[val])


def prepare_features(config: DataConfig, seed: int, normalization: Normalization | None = None) -> PreparedData:
    """prepare.prepare for a features file: the same PreparedData, each feature row an "image" (1, 1, D);
    `normalization` as prepare's."""
    if config.image_size is not None:
        raise UserError("--image-size does not apply to --dataset features (they are not images); drop it")
    if config.stream:
        raise UserError("--stream does not apply to --dataset features: the features file is read into memory "
                        "once; drop --stream")
    splits, classes = load_features(resolve_data_dir(config))
    x, y = splits.pop("train")
    if "val" in splits:  # held out by whoever made the file: only --limit applies
        rows = limited_rows(y, config.limit, seed)
        x, y = (x, y) if rows is None else keep_rows_in_place(x, y, rows)
        val = splits.pop("val")
    else:
        train_index, val_index = split_train_val(y, len(classes), config.val_split, config.limit, seed, name="features",
                                                 unit="rows", more="add rows, or give x_val and y_val")
        (x, y), val = split_in_place(x, y, train_index, val_index)
    as_images = lambda data: LabelledImages(data[0].view(len(data[0]), 1, 1, -1), data[1])  # noqa: E731
    return PreparedData(dataset="features", classes=classes, shape=(1, 1, x.shape[1]), train=as_images((x, y)),
                        val=as_images(val), test=as_images(splits["test"]),
                        normalization=normalization or fit_feature_normalization(x, config.normalize),
                        superclass_of=None, skipped=0, from_cache=False)


def rows_to_predict(path: Path, width: int) -> torch.Tensor:
    """The rows `imgcls predict` scores from a features file: its `x`, else its `x_test`, checked as training
    checks its splits, and as wide as the model's input."""
    arrays, _ = read_arrays(path, ("x", "x_test"))
    key = next((key for key in ("x", "x_test") if key in arrays), None)
    if key is None:
        raise UserError(f"features file {path} holds neither x nor x_test; save the rows to classify as x")
    rows = _features(path, key, arrays[key])
    if rows.shape[1] != width:
        raise UserError(f"features file {path}: {key} rows have {rows.shape[1]} features but the model takes "
                        f"{width}; give features made the way its training features were")
    return rows


def is_features_model(checkpoint) -> bool:
    return checkpoint.meta["dataset"] == "features"


def require_image_model(checkpoint, what: str) -> None:
    """Commands about images (templates, predicting on image files) say plainly why a features model has none."""
    if is_features_model(checkpoint):
        raise UserError(f"this checkpoint is not an image model: it is a linear probe on {checkpoint.weight.shape[1]} "
                        f"precomputed features (--dataset features), so {what}")
