"""The one typed configuration of a run, each option declared once.

Each field is declared with `option(...)` (options.py): its default, help, panel in `imgcls train --help`,
choices and checks. Defaults live in the dataclasses below; a YAML file (nested by section, as the run
folder's config.yaml is written) overrides them, and command-line flags override the file. Every field
name is unique across sections, so the flag `--lr` is the key `optim.lr` without ambiguity. The result is
validated once, then passed around whole; nothing reads flags after that. A message about a value names
where it came from: `--lr` for a flag, `optim.lr in cifar10.yaml` for a file.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgcls.data.augment import augment_problem, canonical_augmentation
from imgcls.errors import UserError, choice_problem, did_you_mean, shown
from imgcls.options import (
    DATA,
    FINITE,
    MODEL,
    OPTIMIZATION,
    RUN,
    Check,
    Setting,
    declared,
    is_union,
    must,
    option,
    or_list,
)
from imgcls.runs.yamlfile import read_yaml

# the choices of the options that name a thing; every user of the names reads them here
LOSSES = ("ce", "nll", "mse")
INITS = ("default", "zeros", "normal")
SCHEDULES = ("plateau", "constant", "step", "cosine", "onecycle")
NORMALIZATIONS = ("pixel", "channel", "none")
PRECISIONS = ("fp32", "tf32", "bf16")
GRADIENTS = ("analytic", "autograd")
BATCH_SIZE_WORDS = ("full", "auto")

MAX_THREADS = 1024  # far above any CPU's cores; 100,000 OpenMP threads crashed the process
MAX_EPOCHS = 1_000_000  # bounds the warmup: 1e308 epochs overflowed counting its steps


def dataset_names() -> Sequence[str]:
    from imgcls.data.registry import (
        DATASET_NAMES,  # the registry is read only when a value is checked
    )

    return DATASET_NAMES


def features_dataset(name: str) -> bool:
    from imgcls.data.registry import SPECS

    return SPECS[name].features_file


def parse_batch_size(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text.strip()  # 'full', 'auto', or a mistake that validation names


def parse_optional_count(text: str) -> int | None | str:
    if text.strip().lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--patience takes a whole number of epochs or 'none', not {shown(text)}") from None


def parse_class_weights(text: str) -> str | list[float]:
    if text == "balanced":
        return text
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"--class-weights must be 'balanced' or numbers separated by commas, not '{text}'") from None


_AT_LEAST_ONE_IMAGE = must(lambda size: size >= 1, "at least 1 (or 'full' or 'auto')")


def batch_size_problem(value: int | str, name: str) -> str | None:
    if isinstance(value, str):
        return choice_problem("batch size", value, BATCH_SIZE_WORDS)
    return _AT_LEAST_ONE_IMAGE(value, name)


def class_weights_problem(value: str | list[float], name: str) -> str | None:
    if isinstance(value, str):
        return choice_problem("class weights", value, ("balanced",))
    if all(0 <= w < math.inf for w in value) and any(w > 0 for w in value):
        return None
    return f"{name} must be finite non-negative numbers, at least one above 0"


def device_problem(device: str, name: str) -> str | None:
    if device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()):
        return None
    return f"unknown device {shown(device)}; choose auto, cpu, cuda or cuda:N"


def number_or_word(kind: type) -> Callable[[str], Any]:
    """A flag's text as a `kind` of number, or as a word: 'auto', or a mistake that validation names."""
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            return text.strip()
    return parse


def or_auto(check: Check, what: str = "a number") -> Check:
    """`check` for a number; of words, 'auto' alone passes."""
    def problem(value: Any, name: str) -> str | None:
        if isinstance(value, str):
            return None if value == "auto" else f"{name} must be {what} or 'auto', not {shown(value)}"
        return check(value, name)
    return problem


AUTO_EPOCHS, AUTO_UPDATES = 100, 10_000  # epochs auto: 100, or more where an epoch is a few updates


SEED_RANGE = must(lambda seed: 0 <= seed < 2 ** 32, "in [0, 2^32)")  # torch refuses seeds past 2^64 with a traceback
POSITIVE = must(lambda value: value > 0, "greater than 0")
NOT_NEGATIVE = must(lambda value: value >= 0, "0 or more")


@dataclass
class DataConfig:
    dataset: str = option("cifar10-sample", "Dataset name.", DATA, choices=dataset_names)
    data_dir: str | None = option(
        None, "Folder holding the dataset{default}; for --dataset features a FILE.npz (e.g. --dataset features "
              "--data-dir emb.npz).", DATA, shown_default="$IMGCLS_DATA, else ~/.cache/imgcls/data")
    download: bool = option(False, "Fetch a missing dataset.", DATA)
    # held out stratified by class
    val_split: float = option(0.1, "Share of train held out for validation.", DATA,
                              check=must(lambda share: 0 < share < 1, "between 0 and 1 (exclusive)"))
    image_size: int | None = option(None, "Resize images to NxN.", DATA, shown_default="the images' own size",
                                    check=must(lambda side: side >= 1, "at least 1"))  # needed for mixed sizes
    normalize: str = option("pixel", "Standardize per pixel, per channel, or none.", DATA, choices=NORMALIZATIONS,
                            what="normalization")
    augment: str | None = option(
        None, "Augment training batches: flip, translate:N (shift up to N pixels, zero border; translate:N:reflect "
              "mirrors it), or both as flip,translate:4; none for off.", DATA, shown_default="none",
        check=augment_problem)
    limit: int | None = option(None, "Use at most N training images (stratified).", DATA, shown_default="all",
                               check=must(lambda count: count >= 2, "at least 2 images"))
    skip_bad_images: bool = option(False, "Skip unreadable images instead of stopping.", DATA)
    stream: bool = option(False, "Decode batches from the files in worker processes (image folders too large for "
                                 "memory).", DATA)


@dataclass
class ModelConfig:
    init: str = option("zeros", "Weight init: zeros (smooth templates; the loss is convex), default "
                                "(nn.Linear's uniform) or normal.", MODEL, choices=INITS)
    init_std: float = option(0.01, "Std of the normal init.", MODEL, check=(FINITE, POSITIVE))


@dataclass
class LossConfig:
    loss: str = option("ce", "ce, nll (LogSoftmax+NLL) or mse (to one-hot).", MODEL, choices=LOSSES)
    class_weights: str | list[float] | None = option(
        None, "'balanced' or one weight per class, comma separated.", MODEL, check=class_weights_problem,
        parse=parse_class_weights, shown_default="none, every class weighs 1")


@dataclass
class OptimConfig:
    lr: float | str = option("auto", "Learning rate, or 'auto': the lowest held-out loss of a stacked search (5-fold "
                                     "cross-validation on small data; imgcls lr-find shows it); the chosen rate is "
                                     "written to config.yaml.",
                             OPTIMIZATION, check=or_auto(lambda lr, name: FINITE(lr, name) or POSITIVE(lr, name)),
                             parse=number_or_word(float))
    batch_size: int | str = option(128, "N, 1 (online SGD), 'full' (gradient descent) or 'auto'.", OPTIMIZATION,
                                   check=batch_size_problem, parse=parse_batch_size)
    momentum: float = option(0.9, "SGD momentum.", OPTIMIZATION, check=must(lambda m: 0 <= m < 1, "in [0, 1)"))
    nesterov: bool = option(False, "Nesterov momentum.", OPTIMIZATION)
    weight_decay: float | str = option("auto", "L2 penalty on W, or 'auto': searched with the rate (see --lr); "
                                               "the chosen value is written to config.yaml.", OPTIMIZATION,
                                       check=or_auto(lambda wd, name: FINITE(wd, name) or NOT_NEGATIVE(wd, name)),
                                       parse=number_or_word(float))


@dataclass
class ScheduleConfig:
    schedule: str = option("plateau", f"{or_list(SCHEDULES)}; plateau: the rate times --step-gamma after --patience "
                                      "epochs without a lower validation loss, twice, then stop.", OPTIMIZATION,
                           choices=SCHEDULES)
    warmup_epochs: float = option(0.0, "Linear warmup length in epochs.", OPTIMIZATION,
                                  check=(FINITE, must(lambda epochs: 0 <= epochs <= MAX_EPOCHS,
                                                      f"between 0 and {MAX_EPOCHS:,}")))
    step_epochs: int = option(10, "Step schedule: decay every N epochs.", OPTIMIZATION,
                              check=must(lambda epochs: epochs >= 1, "at least 1"))
    step_gamma: float = option(0.1, "Step and plateau schedules: decay factor.", OPTIMIZATION,
                               check=must(lambda gamma: 0 < gamma <= 1, "in (0, 1]"))


@dataclass
class TrainConfig:
    epochs: int | str = option("auto", f"Epochs to train (at most, with --patience); auto: {AUTO_EPOCHS}, or "
                                       f"enough for {AUTO_UPDATES:,} updates on small data.", OPTIMIZATION,
                               check=or_auto(must(lambda epochs: epochs >= 1, "at least 1"), "a whole number"),
                               parse=number_or_word(int))
    patience: int | None = option(5, "Stop after N epochs without a lower validation loss (plateau: decay first); "
                                     "'none': never.",
                                  OPTIMIZATION, check=must(lambda epochs: epochs >= 1, "at least 1 epoch"),
                                  parse=parse_optional_count)
    refit: bool = option(True, "After choosing (settings, epochs), train again on all training images, validation "
                               "part included, as scikit-learn's LogisticRegressionCV(refit=True).", OPTIMIZATION)
    seed: int = option(0, "Seed for init, split and order.", RUN, check=SEED_RANGE)
    device: str = option("auto", "auto, cpu, cuda or cuda:N.", RUN, check=device_problem)
    precision: str = option("fp32", f"{or_list(PRECISIONS)} (CUDA).", RUN, choices=PRECISIONS)
    # DDP always uses autograd
    gradient: str = option("analytic", "analytic (the lecture's formula) or autograd.", RUN, choices=GRADIENTS)
    threads: int | None = option(
        None, "CPU threads{default}; 1 is faster while other programs keep the cores busy.", RUN,
        shown_default="all cores", check=must(lambda count: 1 <= count <= MAX_THREADS, f"between 1 and {MAX_THREADS}"))


@dataclass
class OutputConfig:
    out: str | None = option(None, "Run folder{default}.", RUN, shown_default="runs/<dataset>-<date>-<time>")
    tensorboard: bool = option(False, "Also log to RUN_DIR/tensorboard/ (needs the tensorboard extra).", RUN)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, mapping: Any, source: str, strict: bool = True) -> Config:
        """A config from sections of keys, as config.yaml and a checkpoint hold them, type-checked and validated
        (messages name `section.key in <source>`). `strict=False` passes over unknown names (a config written by
        a later imgcls) but still checks every known key."""
        if not isinstance(mapping, dict):
            raise UserError(f"{source} must be a mapping of sections (data:, optim:, ...)")
        config, names = cls(), {}
        apply_mapping(config, mapping, source, strict, names)
        validate(config, names)
        return config


def sections() -> dict[str, type]:
    """Section name -> its dataclass, in the order of Config."""
    return typing.get_type_hints(Config)


@functools.cache
def settings() -> dict[str, Setting]:
    """Field name -> its declaration, in the order of Config (and of `imgcls train --help`)."""
    index = {}
    for setting in declared(sections()):
        assert setting.name not in index, f"config key {setting.name} is in two sections"
        index[setting.name] = setting
    return index


def key_index() -> dict[str, str]:
    """Field name -> section name, for flags (which are flat)."""
    return {name: setting.section for name, setting in settings().items()}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check a YAML value against a field's type; ints are accepted where floats are expected."""
    kinds = typing.get_args(annotation) if is_union(annotation) else (annotation,)
    for kind in kinds:
        if kind is type(None) and value is None:
            return None
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return _as_float(value, key)
        if kind is float and isinstance(value, str) and _is_number(value):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if kind is str and isinstance(value, str):
            return value
        if typing.get_origin(kind) is list and isinstance(value, list):
            return [_coerce(item, typing.get_args(kind)[0], key) for item in value]
    wanted = " or ".join(_type_name(k) for k in kinds)
    raise UserError(f"config key '{key}' must be {wanted}, not {type(value).__name__} {shown(value)}")


def _as_float(value: int | float, key: str) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond float's range (about 10^308)
        raise UserError(f"config key '{key}' is too large a number ({shown(value)}); use a number below 1e308") \
            from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity")


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    if typing.get_origin(annotation) is list:
        return f"a list of {_type_name(typing.get_args(annotation)[0])}"
    return annotation.__name__



def _apply(config: Config, section: str, key: str, value: Any) -> None:
    setattr(getattr(config, section), key, _coerce(value, settings()[key].annotation, f"{section}.{key}"))


def apply_file(config: Config, path: Path, names: dict[str, str] | None = None) -> None:
    if not path.is_file():
        state = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise UserError(f"config file {path} {state}; pass the path of a YAML file such as configs/cifar10.yaml")
    loaded = read_yaml(path, f"config file {path}", "fix the file or start from configs/") or {}
    if not isinstance(loaded, dict):
        raise UserError(f"config file {path} must be a mapping of sections (data:, optim:, ...)")
    apply_mapping(config, loaded, str(path), names=names)


def apply_mapping(config: Config, loaded: dict, source: str, strict: bool = True,
                  names: dict[str, str] | None = None) -> None:
    """Sections of keys, as config.yaml holds them; `strict=False` passes over unknown names (a checkpoint's
    config written by a later imgcls) but still checks the type of every known key. `names` records where
    each value came from (`optim.lr in <source>`), for validation's messages."""
    known = sections()
    for section, values in loaded.items():
        if section not in known:
            if not strict:
                continue
            raise UserError(f"unknown config section {shown(str(section))} in {source}"
                            f"{did_you_mean(str(section), known)}")
        if not isinstance(values, dict):
            raise UserError(f"config section '{section}' in {source} must be a mapping of keys")
        keys = [f.name for f in dataclasses.fields(known[section])]
        for key, value in values.items():
            if key not in keys:
                if not strict:
                    continue
                raise UserError(f"unknown config key {shown(f'{section}.{key}')} in {source}"
                                f"{did_you_mean(str(key), keys)}")
            _apply(config, section, key, value)
            if names is not None:
                names[key] = f"{section}.{key} in {source}"


GIVEN_NONE = object()  # a flag given as 'none' (--patience none): None itself means 'not given'


def apply_flags(config: Config, flags: dict[str, Any], names: dict[str, str] | None = None) -> None:
    """Flags given on the command line (None means 'not given', GIVEN_NONE 'set to none') override the file."""
    for key, value in flags.items():
        if value is not None:
            setting = settings()[key]
            _apply(config, setting.section, key, None if value is GIVEN_NONE else value)
            if names is not None:
                names[key] = setting.flag


def parse_flags(given: Mapping[str, Any]) -> dict[str, Any]:
    """The train command's flag values as config values: text parsed where its field declares a parser."""
    parsed = dict(given)
    for key, value in given.items():
        parse = settings()[key].option.parse
        if parse is not None and value is not None:
            parsed[key] = parse(value)
            if parsed[key] is None:
                parsed[key] = GIVEN_NONE
    return parsed


def build_config(config_file: Path | None, flags: dict[str, Any]) -> Config:
    config, names = Config(), {}
    if config_file is not None:
        apply_file(config, config_file, names)
    apply_flags(config, flags, names)
    validate(config, names)
    return config


def validate(config: Config, names: Mapping[str, str] | None = None) -> None:
    """Every field's declared choices and checks, then the rules across fields. `names`: where each value came
    from (a flag or a YAML key), for the message; a value not in it is named by its flag. The augmentation is
    written back in its one spelling (None for none)."""
    names = names or {}
    for key, setting in settings().items():
        _refuse(setting.problem(getattr(getattr(config, setting.section), key), names.get(key)))

    def name(key: str) -> str:
        return names.get(key) or settings()[key].flag

    config.data.augment = canonical_augmentation(config.data.augment)  # config.yaml keeps one spelling
    if config.data.augment is not None and features_dataset(config.data.dataset):
        raise UserError(f"{name('augment')} flips and shifts images, and --dataset {config.data.dataset} holds "
                        f"feature vectors, not images; drop {name('augment')}")

    if config.schedule.schedule == "plateau" and config.schedule.warmup_epochs:
        raise UserError(f"{name('warmup_epochs')} is for the step, cosine and onecycle schedules; the plateau schedule "
                        f"has no warmup: drop it or choose {name('schedule')} cosine")
    momentum = config.optim.momentum
    if config.optim.nesterov and not momentum > 0:
        given = name("momentum")
        wanted = given if given == settings()["momentum"].flag else f"momentum ({given} is {momentum})"
        raise UserError(f"{name('nesterov')} needs a {wanted} above 0")


def check_seed(seed: int) -> None:
    _refuse(settings()["seed"].problem(seed))


def check_device_name(device: str) -> None:
    _refuse(settings()["device"].problem(device))


def _refuse(problem: str | None) -> None:
    if problem:
        raise UserError(problem)


def default_data_dir() -> Path:
    return Path(os.environ.get("IMGCLS_DATA") or _user_cache() / "data")


def default_cache_dir() -> Path:
    return Path(os.environ.get("IMGCLS_CACHE") or _user_cache() / "decoded")


def _user_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imgcls"
