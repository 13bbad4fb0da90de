"""Miniature copies of CIFAR-100, SVHN, STL-10 and ImageNet, written in each dataset's published format.

Each writer takes images in one canonical form, uint8 (N, C, H, W) RGB with labels 0..K-1 in the
dataset's class order, encodes them as the dataset's own page describes, and returns what it wrote in
that canonical form, for the tests to compare with what imgcls reads back through torchvision's class.
Nothing here imports imgcls: the class names and the CIFAR-100 mapping are written out from the datasets'
own descriptions, not taken from imgcls's registry, so that the tests check the one against the other.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# CIFAR-100 (https://www.cs.toronto.edu/~kriz/cifar.html): the meta file's fine_label_names and
# coarse_label_names (both in alphabetical order there), and each fine class's superclass as the page's table
# lists them (the coarse_labels that go with the fine_labels in the train and test files).
CIFAR100_FINE = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()
CIFAR100_COARSE = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes "
    "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals trees "
    "vehicles_1 vehicles_2").split()
CIFAR100_FINE_TO_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10,
    12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17, 10, 3, 2, 12, 12,
    16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8,
    14, 13)
# STL-10 (https://cs.stanford.edu/~acoates/stl10/): class_names.txt, one a line, labels 1..10 in this order.
STL10_NAMES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
# ImageNet: three leaf synsets as the ILSVRC-2012 devkit's meta.mat has them (ILSVRC2012_ID, WNID, words). Their
# IDs run in another order than their WNIDs, as in the devkit, so the class index torchvision gives (sorted WNIDs)
# differs from the ID the validation ground truth uses.
IMAGENET_LEAVES = ((1, "n02119789", "kit fox, Vulpes macrotis"), (2, "n02100735", "English setter"),
                   (3, "n02110185", "Siberian husky"))
IMAGENET_PARENT = (1001, "n02084071", "dog, domestic dog, Canis familiaris")  # not a class: it has children


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, C, H, W), RGB
    labels: np.ndarray  # int64 (N,), 0-based in the dataset's class order


def class_images(per_class: int, classes: int, shape: tuple[int, int, int], seed: int,
                 groups: tuple[int, ...] | None = None) -> Split:
    """Random pixels, `per_class` images of each class, classes interleaved. With `groups` (class -> group),
    each image is mostly its group's pattern plus a fainter one of its class, so that a model trained on
    them confuses classes within a group more often than across groups."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(classes), per_class)
    noise = rng.integers(0, 256, (len(labels), *shape))
    if groups is None:
        return Split(noise.astype(np.uint8), labels.astype(np.int64))
    group_pattern = rng.integers(0, 256, (max(groups) + 1, *shape))
    class_pattern = rng.integers(0, 256, (classes, *shape))
    mixed = 0.6 * group_pattern[np.asarray(groups)[labels]] + 0.25 * class_pattern[labels] + 0.15 * noise
    return Split(mixed.round().astype(np.uint8), labels.astype(np.int64))


def smooth_images(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """Colour ramps (uint8 N, 3, H, W) that JPEG keeps within a few levels, and none of them symmetric: a
    flipped or transposed copy is far from the original."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    images = []
    for _ in range(count):
        base, dx, dy = rng.uniform(20, 80, 3), rng.uniform(2, 4, 3), rng.uniform(1, 3, 3)
        images.append(np.stack([base[c] + dx[c] * x * (32 / width) + dy[c] * y * (32 / height) * (c - 1)
                                + (60 if c == 1 else 0) for c in range(3)]))
    return np.clip(np.stack(images), 0, 255).round().astype(np.uint8)


# --- CIFAR-100 --------------------------------------------------------------------------------------------------

def write_cifar100(root: Path, train_per_class: int = 2, test_per_class: int = 1, seed: int = 0) -> dict[str, Split]:
    """ROOT/cifar-100-python/{train,test,meta} as in https://www.cs.toronto.edu/~kriz/cifar.html ("CIFAR-100
    python version"): each of train and test a pickled dict with 'data', a N x 3072 uint8 array whose rows hold
    the red channel's 1024 values, then green's, then blue's, each 32x32 image row-major; 'fine_labels' and
    'coarse_labels', lists of ints; 'filenames' and 'batch_label'. meta: 'fine_label_names', 'coarse_label_names'.
    The real files are Python 2 cPickle dumps at protocol 2; these are Python 3 dumps at protocol 2, which
    torchvision's pickle.load(encoding="latin1") reads the same way."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    splits = {}
    for split, per_class, offset in (("train", train_per_class, 0), ("test", test_per_class, 1)):
        data = class_images(per_class, 100, (3, 32, 32), seed + offset, CIFAR100_FINE_TO_COARSE)
        fine = data.labels.tolist()
        entry = {"filenames": [f"{CIFAR100_FINE[label]}_s_{i:06d}.png" for i, label in enumerate(fine)],
                 "batch_label": f"{'training' if split == 'train' else 'testing'} batch 1 of 1",
                 "fine_labels": fine, "coarse_labels": [CIFAR100_FINE_TO_COARSE[label] for label in fine],
                 "data": data.images.reshape(len(fine), 3 * 32 * 32)}  # (C, H, W) row-major: R, G, B planes
        (folder / split).write_bytes(pickle.dumps(entry, protocol=2))
        splits[split] = data
    meta = {"fine_label_names": list(CIFAR100_FINE), "coarse_label_names": list(CIFAR100_COARSE)}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return splits


# --- SVHN -------------------------------------------------------------------------------------------------------

def write_svhn(root: Path, per_class: int = 3, seed: int = 0) -> dict[str, Split]:
    """ROOT/{train,test}_32x32.mat as in http://ufldl.stanford.edu/housenumbers/ ("Format 2: Cropped Digits"):
    a MATLAB file with X, a 32x32x3xN uint8 array whose X(:,:,:,i) is the i-th RGB image (row, column, channel),
    and y, its N labels; digit 1 has label 1, ..., digit 9 label 9, and digit 0 label 10. Written, as the real
    files are, as MATLAB 5 files with compressed variables."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, offset in (("train", 0), ("test", 1)):
        data = class_images(per_class, 10, (3, 32, 32), seed + offset)  # label = the digit
        x = data.images.transpose(2, 3, 1, 0)  # (N, C, H, W) -> (H, W, C, N)
        y = np.where(data.labels == 0, 10, data.labels).astype(np.uint8).reshape(-1, 1)
        savemat(str(root / f"{split}_32x32.mat"), {"X": x, "y": y}, do_compression=True)
        splits[split] = data
    return splits


# --- STL-10 -----------------------------------------------------------------------------------------------------

def stl10_bytes(images: np.ndarray) -> bytes:
    """STL-10's image bytes (https://cs.stanford.edu/~acoates/stl10/, "Data format"): "The images are stored in
    column-major order, one channel at a time. That is, the first 96*96 values are the red channel, the next
    96*96 are green, and the last are blue." Column-major: for each channel, column by column."""
    return np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes()


def write_stl10(root: Path, per_class: int = 2, unlabeled: int = 3, seed: int = 0) -> dict[str, Split]:
    """ROOT/stl10_binary/ as the stl10_binary.tar.gz of https://cs.stanford.edu/~acoates/stl10/ unpacks: train_X.bin
    and test_X.bin (images, see stl10_bytes), train_y.bin and test_y.bin (one byte per image, labels 1..10),
    unlabeled_X.bin (images without labels; torchvision's integrity check wants it for every split) and
    class_names.txt (one name a line). fold_indices.txt is left out: only torchvision's folds= reads it."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    splits = {}
    for split, offset in (("train", 0), ("test", 1)):
        data = class_images(per_class, 10, (3, 96, 96), seed + offset)
        (folder / f"{split}_X.bin").write_bytes(stl10_bytes(data.images))
        (folder / f"{split}_y.bin").write_bytes((data.labels + 1).astype(np.uint8).tobytes())
        splits[split] = data
    (folder / "unlabeled_X.bin").write_bytes(stl10_bytes(class_images(unlabeled, 1, (3, 96, 96), seed + 2).images))
    (folder / "class_names.txt").write_text("".join(f"{name}\n" for name in STL10_NAMES))
    return splits


# --- ImageNet ---------------------------------------------------------------------------------------------------

def jpeg_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image.transpose(1, 2, 0)).save(buffer, "JPEG", quality=95, subsampling=0)
    return buffer.getvalue()


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def _tar(members: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in members.items():
            _add(archive, name, data)
    return buffer.getvalue()


def _meta_mat() -> bytes:
    """The devkit's data/meta.mat (its readme.txt): `synsets`, a struct array with fields ILSVRC2012_ID, WNID,
    words, gloss, num_children, children, wordnet_height, num_train_images; the 1000 classes are the synsets with
    no children (IDs 1..1000), the others are inner nodes of WordNet. Numbers are MATLAB doubles."""
    from scipy.io import savemat

    fields = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images")
    rows = [(float(i), wnid, words, f"a gloss of {wnid}", 0.0, np.zeros((1, 0)), 0.0, 4.0)
            for i, wnid, words in IMAGENET_LEAVES]
    parent_id, parent_wnid, parent_words = IMAGENET_PARENT
    rows.append((float(parent_id), parent_wnid, parent_words, "a parent", 2.0, np.array([[2.0, 3.0]]), 1.0, 8.0))
    synsets = np.empty((len(rows), 1), dtype=[(name, object) for name in fields])
    for i, row in enumerate(rows):
        synsets[i, 0] = row
    buffer = io.BytesIO()
    savemat(buffer, {"synsets": synsets})
    return buffer.getvalue()


@dataclass
class ImageNetCopy:
    train: Split  # labels: the class index torchvision gives, i.e. by sorted WNID
    val: Split
    classes: list[str]  # each class's first name, in that order


def write_imagenet(root: Path, train_per_class: int = 4, val_per_class: int = 2, seed: int = 0) -> ImageNetCopy:
    """ROOT/ILSVRC2012_devkit_t12.tar.gz, ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar, the three archives of
    https://image-net.org/challenges/LSVRC/2012/2012-downloads.php, laid out as torchvision's imagenet.py reads them
    (its parse_devkit_archive, parse_train_archive, parse_val_archive): the devkit holds
    ILSVRC2012_devkit_t12/data/meta.mat and data/ILSVRC2012_validation_ground_truth.txt (one ILSVRC2012_ID a line,
    for the validation images in file-name order); the train tar holds one WNID.tar per class, of WNID_K.JPEG
    files; the val tar holds ILSVRC2012_val_00000001.JPEG, ... with no folders. Train images are 24 high and 32
    wide, validation images 32 high and 24 wide, so that --image-size is needed, as with the real ones."""
    root.mkdir(parents=True, exist_ok=True)
    by_wnid = sorted(IMAGENET_LEAVES, key=lambda leaf: leaf[1])
    train_images = smooth_images(train_per_class * len(by_wnid), 24, 32, seed)
    train_labels = np.repeat(np.arange(len(by_wnid)), train_per_class)
    inner = {f"{wnid}.tar": _tar({f"{wnid}_{k}.JPEG": jpeg_bytes(image)
                                  for k, image in enumerate(train_images[train_labels == label])})
             for label, (_, wnid, _) in enumerate(by_wnid)}
    (root / "ILSVRC2012_img_train.tar").write_bytes(_tar(inner))
    val_images = smooth_images(val_per_class * len(by_wnid), 32, 24, seed + 1)
    val_labels = np.random.default_rng(seed).permutation(np.tile(np.arange(len(by_wnid)), val_per_class))
    (root / "ILSVRC2012_img_val.tar").write_bytes(_tar({f"ILSVRC2012_val_{i + 1:08d}.JPEG": jpeg_bytes(image)
                                                        for i, image in enumerate(val_images)}))
    truth = "".join(f"{by_wnid[label][0]}\n" for label in val_labels)  # the ILSVRC2012_ID, not the class index
    devkit = {"ILSVRC2012_devkit_t12/data/meta.mat": _meta_mat(),
              "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": truth.encode()}
    (root / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(_tar(devkit, mode="w:gz"))
    return ImageNetCopy(Split(train_images, train_labels.astype(np.int64)),
                        Split(val_images, val_labels.astype(np.int64)), [words.split(", ")[0] for _, _, words in by_wnid])
