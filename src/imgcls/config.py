"""The one typed configuration of a run, each option declared once, beside its default: help, panel in
`imgcls train --help`, choices, checks and parser. Defaults < a YAML file (nested by section, as config.yaml) <
flags; field names are unique across sections, so `--lr` is `optim.lr`. A message names where a value came from.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgcls.data.augment import augment_problem, canonical_augmentation
from imgcls.data.registry import DATASET_NAMES, SPECS
from imgcls.errors import UserError, choice_problem, did_you_mean, shown
from imgcls.runs.yamlfile import read_yaml

# A check: (value, where it came from: `--lr` or `optim.lr in x.yaml`) -> what is wrong, or None.
Check = Callable[[Any, str], "str | None"]

# the panels of `imgcls train --help`, in the order they are shown
DATA, MODEL, OPTIMIZATION, RUN = "Data", "Model and loss", "Optimization", "Run"


@dataclass(frozen=True)
class Option:
    help: str  # "{default}" marks where --help shows the default, else it follows the help
    panel: str
    choices: Sequence[str] | None = None
    what: str | None = None  # the name in "unknown <what> 'x'"; the field's name unless given
    checks: tuple[Check, ...] = ()
    parse: Callable[[str], Any] | None = None  # the flag's text to the value (the flag is then a string)
    shown_default: str | None = None  # the default as --help says it, where the value itself would not say it


def option(default: Any, help: str, panel: str, *, check: Check | tuple[Check, ...] = (), **declared: Any) -> Any:
    """A dataclass field carrying its option's declaration (the other fields of Option) in its metadata."""
    checks = check if isinstance(check, tuple) else (check,)
    return field(default=default, metadata={"option": Option(help, panel, checks=checks, **declared)})


def must(test: Callable[[Any], bool], phrase: str) -> Check:
    """A check whose message is '<name> must be <phrase>, not <value>'."""
    return lambda value, name: None if test(value) else f"{name} must be {phrase}, not {shown(value)}"


def or_auto(*checks: Check, what: str = "a number") -> Check:
    """`checks` for a number, in order; of words, 'auto' alone passes."""
    def problem(value: Any, name: str) -> str | None:
        if isinstance(value, str):
            return None if value == "auto" else f"{name} must be {what} or 'auto', not {shown(value)}"
        return next(filter(None, (check(value, name) for check in checks)), None)
    return problem


def number_or_word(kind: type) -> Callable[[str], Any]:
    """A flag's text as a `kind` of number, or as a word: 'auto', 'full', or a mistake that validation names."""
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            return text.strip()
    return parse


def kinds(annotation: Any) -> tuple:
    """The types a field takes: `int | None` -> (int, NoneType)."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return typing.get_args(annotation) if union else (annotation,)


def or_list(names: Sequence[str]) -> str:
    """'a, b or c'."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)


@dataclass(frozen=True)
class Setting:
    """One declared field: where it is in the config, and its option."""

    section: str
    name: str
    default: Any
    annotation: Any
    option: Option

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    def choices(self) -> Sequence[str] | None:
        return self.option.choices

    def problem(self, value: Any, name: str | None = None) -> str | None:
        """What is wrong with this value (None, 'not set', never is), named by `name` (the flag by default); a
        message that names no one (unknown loss 'x') gets `name: ` before it, to say which line to fix."""
        name = name or self.flag
        if value is None:
            return None
        choices = self.choices()
        message = None if choices is None else choice_problem(self.option.what or self.name, value, choices)
        for check in self.option.checks:
            message = message or check(value, name)
        if message and name != self.flag and name not in message:
            message = f"{name}: {message}"
        return message

    def cli_type(self) -> type:
        """The type of the flag's value: text where the field parses it, else the field's type without None."""
        if self.option.parse is not None:
            return str
        (kind,) = [k for k in kinds(self.annotation) if k is not type(None)]
        return kind

    def help_text(self) -> str:
        """The help with its default, escaped for rich ('\\[' is a bracket, not a style tag)."""
        default = f"\\[default: {self.option.shown_default or self.default}]"
        if "{default}" in self.option.help:
            return self.option.help.replace("{default}", " " + default)
        return f"{self.option.help} {default}"


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
AUTO_EPOCHS, AUTO_UPDATES = 100, 10_000  # epochs auto: 100, or more where an epoch is a few updates

FINITE = must(math.isfinite, "a finite number")  # first: the range checks of a NaN would say something odd
POSITIVE = must(lambda value: value > 0, "greater than 0")
NOT_NEGATIVE = must(lambda value: value >= 0, "0 or more")
AT_LEAST_ONE = must(lambda value: value >= 1, "at least 1")
SEED_RANGE = must(lambda seed: 0 <= seed < 2 ** 32, "in [0, 2^32)")  # torch refuses seeds past 2^64 with a traceback
_AT_LEAST_ONE_IMAGE = must(lambda size: size >= 1, "at least 1 (or 'full' or 'auto')")
parse_batch_size = number_or_word(int)


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


@dataclass
class DataConfig:
    dataset: str = option("cifar10-sample", "Dataset name.", DATA, choices=DATASET_NAMES)
    data_dir: str | None = option(
        None, "Folder holding the dataset{default}; for --dataset features a FILE.npz (e.g. --dataset features "
              "--data-dir emb.npz).", DATA, shown_default="$IMGCLS_DATA, else ~/.cache/imgcls/data")
    download: bool = option(False, "Fetch a missing dataset.", DATA)
    val_split: float = option(0.1, "Share of train held out for validation.", DATA,  # stratified by class
                              check=must(lambda share: 0 < share < 1, "between 0 and 1 (exclusive)"))
    image_size: int | None = option(None, "Resize images to NxN.", DATA, shown_default="the images' own size",
                                    check=AT_LEAST_ONE)  # needed for mixed sizes
    normalize: str = option("pixel", "Standardize per pixel, per channel, or none.", DATA, choices=NORMALIZATIONS,
                            what="normalization")
    augment: str | None = option(
        None, "Augment training batches: flip, translate:N (shift up to N pixels, zero border; translate:N:reflect "
              "mirrors it), or both as flip,translate:4; none for off.", DATA, shown_default="none",
        check=augment_problem)
    limit: int | None = option(None, "Use at most N training images (stratified).", DATA, shown_default="all",
                               check=must(lambda count: count >= 2, "at least 2 images"))
    skip_bad_images: bool = option(False, "Skip unreadable images instead of stopping.", DATA)
    stream: bool = option(
        False, "Decode batches from the files in worker processes (image folders too large for memory).", DATA)


@dataclass
class ModelConfig:
    init: str = option(
        "zeros", "Weight init: zeros (smooth templates; the loss is convex), default (nn.Linear's uniform) or normal.",
        MODEL, choices=INITS)
    init_std: float = option(0.01, "Std of the normal init.", MODEL, check=(FINITE, POSITIVE))


@dataclass
class LossConfig:
    loss: str = option("ce", "ce, nll (LogSoftmax+NLL) or mse (to one-hot).", MODEL, choices=LOSSES)
    class_weights: str | list[float] | None = option(
        None, "'balanced' or one weight per class, comma separated.", MODEL, check=class_weights_problem,
        parse=parse_class_weights, shown_default="none, every class weighs 1")


@dataclass
class OptimConfig:
    lr: float | str = option(
        "auto", "Learning rate, or 'auto': the lowest held-out loss of a stacked search (5-fold cross-validation on "
        "small data; imgcls lr-find shows it); the chosen rate is written to config.yaml.", OPTIMIZATION,
        check=or_auto(FINITE, POSITIVE), parse=number_or_word(float))
    batch_size: int | str = option(128, "N, 1 (online SGD), 'full' (gradient descent) or 'auto'.", OPTIMIZATION,
                                   check=batch_size_problem, parse=parse_batch_size)
    momentum: float = option(0.9, "SGD momentum.", OPTIMIZATION, check=must(lambda m: 0 <= m < 1, "in [0, 1)"))
    nesterov: bool = option(False, "Nesterov momentum.", OPTIMIZATION)
    weight_decay: float | str = option(
        "auto", "L2 penalty on W, or 'auto': searched with the rate (see --lr); the chosen value is written to "
        "config.yaml.", OPTIMIZATION, check=or_auto(FINITE, NOT_NEGATIVE), parse=number_or_word(float))


@dataclass
class ScheduleConfig:
    schedule: str = option(
        "plateau", f"{or_list(SCHEDULES)}; plateau: the rate times --step-gamma after --patience epochs without a "
        "lower validation loss, twice, then stop.", OPTIMIZATION, choices=SCHEDULES)
    warmup_epochs: float = option(0.0, "Linear warmup length in epochs.", OPTIMIZATION, check=(
        FINITE, must(lambda epochs: 0 <= epochs <= MAX_EPOCHS, f"between 0 and {MAX_EPOCHS:,}")))
    step_epochs: int = option(10, "Step schedule: decay every N epochs.", OPTIMIZATION, check=AT_LEAST_ONE)
    step_gamma: float = option(0.1, "Step and plateau schedules: decay factor.", OPTIMIZATION,
                               check=must(lambda gamma: 0 < gamma <= 1, "in (0, 1]"))


@dataclass
class TrainConfig:
    epochs: int | str = option(
        "auto", f"Epochs to train (at most, with --patience); auto: {AUTO_EPOCHS}, or enough for {AUTO_UPDATES:,} "
        "updates on small data.", OPTIMIZATION, check=or_auto(AT_LEAST_ONE, what="a whole number"),
        parse=number_or_word(int))
    patience: int | None = option(
        5, "Stop after N epochs without a lower validation loss (plateau: decay first); 'none': never.", OPTIMIZATION,
        check=must(lambda epochs: epochs >= 1, "at least 1 epoch"), parse=parse_optional_count)
    refit: bool = option(
        True, "After choosing (settings, epochs), train again on all training images, validation part included, as "
        "scikit-learn's LogisticRegressionCV(refit=True).", OPTIMIZATION)
    seed: int = option(0, "Seed for init, split and order.", RUN, check=SEED_RANGE)
    device: str = option("auto", "auto, cpu, cuda or cuda:N.", RUN, check=device_problem)
    precision: str = option("fp32", f"{or_list(PRECISIONS)} (CUDA).", RUN, choices=PRECISIONS)
    gradient: str = option("analytic", "analytic (the lecture's formula) or autograd.", RUN,  # DDP: always autograd
                           choices=GRADIENTS)
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
    def from_dict(cls, mapping: Any, source: str, strict: bool = True,
                  flags: Mapping[str, Any] | None = None) -> Config:
        """A config from sections of keys (config.yaml, a checkpoint) then `flags`, type-checked and validated;
        `strict=False` passes over unknown names (a config written by a later imgcls)."""
        config, names = cls(), {}
        apply_mapping(config, mapping, source, strict, names)
        apply_flags(config, flags or {}, names)
        validate(config, names)
        return config


def sections() -> dict[str, type]:
    """Section name -> its dataclass, in the order of Config."""
    return typing.get_type_hints(Config)


@functools.cache
def settings() -> dict[str, Setting]:
    """Field name -> its declaration, in the order of Config (and of `imgcls train --help`)."""
    index = {}
    for section, cls in sections().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            assert f.name not in index, f"config key {f.name} is in two sections"
            index[f.name] = Setting(section, f.name, f.default, hints[f.name], f.metadata["option"])
    return index


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """A YAML value as the field's type: an int is taken where a float is wanted, and so is a number YAML 1.1
    read as text (1e-3, without a dot)."""
    for kind in kinds(annotation):
        if value is None and kind is type(None) or type(value) is kind and kind in (str, bool, int):
            return value  # type(), not isinstance(): a bool is no int
        if kind is float and (type(value) in (int, float) or type(value) is str and is_number(value)):
            try:
                return float(value)
            except OverflowError:  # an int beyond float's range (about 10^308)
                raise UserError(f"config key '{key}' is too large a number ({shown(value)}); use a number below "
                                f"1e308") from None
        if typing.get_origin(kind) is list and type(value) is list:
            return [_coerce(item, typing.get_args(kind)[0], key) for item in value]
    wanted = " or ".join(_type_name(k) for k in kinds(annotation))
    raise UserError(f"config key '{key}' must be {wanted}, not {type(value).__name__} {shown(value)}")


def is_number(text: str) -> bool:
    """Text that float() reads as a number, but not the words nan and inf (YAML 1.1 reads 1e-3 as text)."""
    try:
        float(text)
    except ValueError:
        return False
    return text.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity")


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is list:
        return f"a list of {_type_name(typing.get_args(kind)[0])}"
    return "null" if kind is type(None) else kind.__name__


def apply_mapping(config: Config, loaded: Any, source: str, strict: bool, names: dict[str, str]) -> None:
    """Sections of keys, as config.yaml holds them; `strict=False` passes over unknown names, not bad values.
    `names` records where each value came from (`optim.lr in <source>`), for validation's messages."""
    if not isinstance(loaded, dict):
        raise UserError(f"{source} must be a mapping of sections (data:, optim:, ...)")
    known = sections()
    for section, values in loaded.items():
        if section not in known:
            if strict:
                raise UserError(f"unknown config section {shown(str(section))} in {source}"
                                f"{did_you_mean(str(section), known)}")
            continue
        if not isinstance(values, dict):
            raise UserError(f"config section '{section}' in {source} must be a mapping of keys")
        keys = [f.name for f in dataclasses.fields(known[section])]
        for key, value in values.items():
            if key in keys:
                setattr(getattr(config, section), key, _coerce(value, settings()[key].annotation, f"{section}.{key}"))
                names[key] = f"{section}.{key} in {source}"
            elif strict:
                raise UserError(f"unknown config key {shown(f'{section}.{key}')} in {source}"
                                f"{did_you_mean(str(key), keys)}")


GIVEN_NONE = object()  # a flag given as 'none' (--patience none): None itself means 'not given'


def apply_flags(config: Config, flags: Mapping[str, Any], names: dict[str, str]) -> None:
    """Flags given on the command line (None means 'not given', GIVEN_NONE 'set to none') override the file."""
    for key, value in flags.items():
        if value is not None:
            setting = settings()[key]
            value = None if value is GIVEN_NONE else value
            setattr(getattr(config, setting.section), key, _coerce(value, setting.annotation, setting.key))
            names[key] = setting.flag


def parse_flags(given: Mapping[str, Any]) -> dict[str, Any]:
    """The train command's flag values as config values: text parsed where its field declares a parser."""
    parsed = dict(given)
    for key, value in given.items():
        parse = settings()[key].option.parse
        if parse is not None and value is not None:
            parsed[key] = GIVEN_NONE if (value := parse(value)) is None else value
    return parsed


def build_config(config_file: Path | None, flags: Mapping[str, Any]) -> Config:
    """The defaults, then the YAML file (`--config`), then the flags given; validated."""
    if config_file is not None and not config_file.is_file():
        state = "is a folder, not a file" if config_file.is_dir() else "does not exist"
        raise UserError(f"config file {config_file} {state}; pass the path of a YAML file such as configs/cifar10.yaml")
    loaded = {} if config_file is None else read_yaml(config_file, f"config file {config_file}",
                                                      "fix the file or start from configs/")
    return Config.from_dict(loaded or {}, str(config_file), flags=flags)


def validate(config: Config, names: Mapping[str, str] | None = None) -> None:
    """Every field's choices and checks, then the rules across fields; `names`: where each value came from (a
    flag by default). The augmentation is written back in its one spelling (None for none)."""
    names = names or {}
    for key, setting in settings().items():
        if problem := setting.problem(getattr(getattr(config, setting.section), key), names.get(key)):
            raise UserError(problem)

    def name(key: str) -> str:
        return names.get(key) or settings()[key].flag

    config.data.augment = canonical_augmentation(config.data.augment)
    if config.data.augment is not None and SPECS[config.data.dataset].features_file:
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


def check(key: str, value: Any) -> None:
    """A field's checks, for a value that another command takes (gradcheck's --seed, eval's --device)."""
    if problem := settings()[key].problem(value):
        raise UserError(problem)


check_seed, check_device_name = functools.partial(check, "seed"), functools.partial(check, "device")


def default_data_dir() -> Path:
    return Path(os.environ.get("IMGCLS_DATA") or _user_cache() / "data")


def default_cache_dir() -> Path:
    return Path(os.environ.get("IMGCLS_CACHE") or _user_cache() / "decoded")


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgcls"
