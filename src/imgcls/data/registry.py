"""The named datasets: every fact about each in one plain table that imports nothing heavy. Code reads these
fields, never a dataset's name, to decide what to do with it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from imgcls.data.formats import check_idx, check_imagenet, check_mat, check_pickle, check_stl

EMBEDDED_ZIP = Path(__file__).parent / "embedded" / "cifar10-sample.zip"  # the cifar10-sample dataset's JPEGs
FEATURES_SUFFIXES = (".npz", ".safetensors")  # the files --dataset features reads
DIGITS = tuple(str(i) for i in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")

# CIFAR-100's 20 superclasses and their 5 fine classes each, as in the dataset's meta file.
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
CIFAR100_CLASSES = tuple(sorted(c for fine in CIFAR100_SUPERCLASSES.values() for c in fine))


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    classes: tuple[str, ...] | None  # None: read from the data (ImageNet, image folders)
    shape: tuple[int, int, int] | None  # (C, H, W); None: depends on the data / --image-size
    torchvision_class: str | None
    files: tuple[str, ...] = ()  # under the data dir, what torchvision's class reads (both splits)
    check_format: Callable[[list[Path]], None] | None = None  # the cheap check of `files` (formats.py)
    train_split: str | bool = True
    test_split: str | bool = False
    split_keyword: str = "train"  # torchvision's keyword: train=True/False, or split="..."
    superclasses: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # An archive torchvision unpacks on first use -> what it leaves (either will do from then on).
    unpacked_as: dict[str, str] = field(default_factory=dict)
    downloadable: bool = True  # torchvision's class takes download=...
    lists_files: bool = False  # torchvision's class lists image files (an ImageFolder) instead of arrays
    names_in_files: bool = False  # the class reads `classes` from the dataset's own files: checked against ours
    needs_module: str = ""  # a module torchvision's class imports that torchvision does not depend on
    sizes: tuple[int, int] | None = None  # (train, test) images as published; test is ImageNet's validation set
    class_count: int | None = None  # how many classes the data has where `classes` is read from it
    embedded: Path | None = None  # the archive inside the package that holds the whole dataset
    features_file: bool = False  # --data-dir names one file of precomputed features (FEATURES_SUFFIXES)

    @property
    def num_classes(self) -> int | None:
        """None: as many as the data has."""
        return len(self.classes) if self.classes is not None else self.class_count

    def superclass_names(self) -> list[str] | None:
        """The superclasses in the order of superclass_of's indices."""
        return list(self.superclasses) or None

    def superclass_of(self) -> list[int] | None:
        """Fine class index -> superclass index, when the dataset has superclasses."""
        if not self.superclasses or self.classes is None:
            return None
        coarse = {fine: i for i, fines in enumerate(self.superclasses.values()) for fine in fines}
        return [coarse[name] for name in self.classes]


def _mnist_files(folder: str) -> tuple[str, ...]:
    # torchvision checks the four unpacked idx files under FOLDER/raw (the .gz it downloads are unpacked there)
    return tuple(f"{folder}/raw/{split}-{kind}" for split in ("train", "t10k")
                 for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))


IMAGENET_ARCHIVES = ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")

SPECS = {
    spec.name: spec
    for spec in (
        DatasetSpec("cifar10-sample", "CIFAR-10 sample shipped inside imgcls (3,000 train, 1,000 test)",
                    CIFAR10_CLASSES, (3, 32, 32), None, sizes=(3000, 1000), embedded=EMBEDDED_ZIP),
        DatasetSpec("mnist", "handwritten digits", DIGITS, (1, 28, 28), "MNIST", _mnist_files("MNIST"), check_idx,
                    sizes=(60000, 10000)),
        DatasetSpec("fashion-mnist", "Zalando's clothing images", FASHION_CLASSES, (1, 28, 28), "FashionMNIST",
                    _mnist_files("FashionMNIST"), check_idx, sizes=(60000, 10000)),
        DatasetSpec("cifar10", "tiny colour images, 10 classes", CIFAR10_CLASSES, (3, 32, 32), "CIFAR10",
                    tuple(f"cifar-10-batches-py/{name}" for name in (*(f"data_batch_{i}" for i in range(1, 6)),
                                                                     "test_batch", "batches.meta")),
                    check_pickle, names_in_files=True, sizes=(50000, 10000)),
        DatasetSpec("cifar100", "tiny colour images, 100 classes in 20 superclasses", CIFAR100_CLASSES, (3, 32, 32),
                    "CIFAR100", ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
                    check_pickle, superclasses=CIFAR100_SUPERCLASSES, names_in_files=True, sizes=(50000, 10000)),
        DatasetSpec("svhn", "street view house numbers", DIGITS, (3, 32, 32), "SVHN",
                    ("train_32x32.mat", "test_32x32.mat"), check_mat, "train", "test", "split", needs_module="scipy",
                    sizes=(73257, 26032)),
        DatasetSpec("stl10", "STL-10 labelled images, 96x96", STL10_CLASSES, (3, 96, 96), "STL10",
                    tuple(f"stl10_binary/{name}" for name in ("train_X.bin", "train_y.bin", "test_X.bin",
                                                              "test_y.bin", "unlabeled_X.bin")),
                    check_stl, "train", "test", "split", names_in_files=True, sizes=(5000, 8000)),
        DatasetSpec("imagenet", "ILSVRC-2012 from the official archives (needs --image-size)", None, None,
                    "ImageNet", IMAGENET_ARCHIVES, check_imagenet, "train", "val", "split",
                    unpacked_as=dict(zip(IMAGENET_ARCHIVES, ("meta.bin", "train", "val"))), downloadable=False,
                    lists_files=True, needs_module="scipy", sizes=(1281167, 50000), class_count=1000),
        DatasetSpec("imagefolder", "any ROOT/train/<class>/* with ROOT/test/<class>/* or ROOT/val/<class>/*", None,
                    None, None),
        DatasetSpec("features", "precomputed features (embeddings): --data-dir FILE.npz or .safetensors with "
                    "x_train, y_train, x_test, y_test", None, None, None, downloadable=False, features_file=True),
    )
}
DATASET_NAMES = tuple(SPECS)


def loose_names(names) -> list[str]:
    """Folder names cannot hold '/', and copies differ in case: class names compare loosely."""
    return ["".join(ch for ch in name.lower() if ch.isalnum()) for name in names]
