"""The named datasets: what each is, as a plain table that imports nothing heavy.

`torchvision_class` is the name of torchvision's own dataset class; readers.py uses it.
`train_split`/`test_split` are the split names the class takes (torchvision is not uniform).
`folder` is where the class keeps its files under the data dir, for the cache's fingerprint
and for the error message when they are missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

EMBEDDED_ZIP = Path(__file__).parent / "embedded" / "cifar10-sample.zip"  # the cifar10-sample dataset's JPEGs
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
    folder: str  # under the data dir, where torchvision keeps this dataset's files
    train_split: str | bool = True
    test_split: str | bool = False
    split_keyword: str = "train"  # torchvision's keyword: train=True/False, or split="..."
    superclasses: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def superclass_of(self) -> list[int] | None:
        """Fine class index -> superclass index, when the dataset has superclasses."""
        if not self.superclasses or self.classes is None:
            return None
        coarse = {fine: i for i, fines in enumerate(self.superclasses.values()) for fine in fines}
        return [coarse[name] for name in self.classes]


SPECS = {
    spec.name: spec
    for spec in (
        DatasetSpec("cifar10-sample", "CIFAR-10 sample shipped inside imgcls (3,000 train, 1,000 test)",
                    CIFAR10_CLASSES, (3, 32, 32), None, ""),
        DatasetSpec("mnist", "handwritten digits", DIGITS, (1, 28, 28), "MNIST", "MNIST"),
        DatasetSpec("fashion-mnist", "Zalando's clothing images", FASHION_CLASSES, (1, 28, 28), "FashionMNIST",
                    "FashionMNIST"),
        DatasetSpec("cifar10", "tiny colour images, 10 classes", CIFAR10_CLASSES, (3, 32, 32), "CIFAR10",
                    "cifar-10-batches-py"),
        DatasetSpec("cifar100", "tiny colour images, 100 classes in 20 superclasses", CIFAR100_CLASSES, (3, 32, 32),
                    "CIFAR100", "cifar-100-python", superclasses=CIFAR100_SUPERCLASSES),
        DatasetSpec("svhn", "street view house numbers", DIGITS, (3, 32, 32), "SVHN", "", "train", "test", "split"),
        DatasetSpec("stl10", "STL-10 labelled images, 96x96", STL10_CLASSES, (3, 96, 96), "STL10", "stl10_binary",
                    "train", "test", "split"),
        DatasetSpec("imagenet", "ILSVRC-2012 from the official archives (needs --image-size)", None, None,
                    "ImageNet", "", "train", "val", "split"),
        DatasetSpec("imagefolder", "any ROOT/train/<class>/* with ROOT/test/<class>/* or ROOT/val/<class>/*", None,
                    None, None, ""),
        DatasetSpec("features", "precomputed features (embeddings): --data-dir FILE.npz or .safetensors with "
                    "x_train, y_train, x_test, y_test", None, None, None, ""),
    )
}
DATASET_NAMES = tuple(SPECS)


def loose_names(names) -> list[str]:
    """Folder names cannot hold '/', and copies differ in case: class names compare loosely."""
    return ["".join(ch for ch in name.lower() if ch.isalnum()) for name in names]
