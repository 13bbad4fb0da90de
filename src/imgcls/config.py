"""The one typed configuration of a run.

Defaults live in the dataclasses below; a YAML file (nested by section, as the run folder's
config.yaml is written) overrides them, and command-line flags override the file. Every field
name is unique across sections, so the flag `--lr` is the key `optim.lr` without ambiguity.
The result is validated once, then passed around whole; nothing reads flags after that.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgcls.errors import SHOWN_LENGTH, UserError, check_choice, did_you_mean, shown

LOSSES = ("ce", "nll", "mse")
INITS = ("default", "zeros", "normal")
SCHEDULES = ("constant", "step", "cosine", "onecycle")
NORMALIZATIONS = ("pixel", "channel", "none")
PRECISIONS = ("fp32", "tf32", "bf16")
GRADIENTS = ("analytic", "autograd")


@dataclass
class DataConfig:
    dataset: str = "cifar10-sample"
    data_dir: str | None = None  # None: $IMGCLS_DATA, else the per-user data folder
    download: bool = False
    val_split: float = 0.1  # fraction of the training set held out, stratified by class
    image_size: int | None = None  # resize every image to this square side (needed for mixed sizes)
    normalize: str = "pixel"  # standardize each pixel, each channel, or not at all
    limit: int | None = None  # use at most this many training images (stratified), for quick runs
    skip_bad_images: bool = False
    stream: bool = False  # decode batches from the files each epoch: for image folders larger than memory


@dataclass
class ModelConfig:
    init: str = "default"  # nn.Linear's own, all zeros, or normal(0, init_std)
    init_std: float = 0.01


@dataclass
class LossConfig:
    loss: str = "ce"
    class_weights: str | list[float] | None = None  # "balanced" or one weight per class


@dataclass
class OptimConfig:
    lr: float = 0.005
    batch_size: int | str = 128  # a number, "full" (gradient descent) or "auto"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.01


@dataclass
class ScheduleConfig:
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    step_epochs: int = 10  # the step schedule multiplies the rate by step_gamma every step_epochs
    step_gamma: float = 0.1


@dataclass
class TrainConfig:
    epochs: int = 10
    patience: int | None = None  # stop early after this many epochs without a better val top-1
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    gradient: str = "analytic"  # the lecture's formula for dL/dW, or autograd's (DDP always uses autograd)
    threads: int | None = None  # torch's CPU threads; None: torch's default (all cores)


@dataclass
class OutputConfig:
    out: str | None = None  # the run folder; None: runs/<dataset>-<date>-<time>
    tensorboard: bool = False  # also log to RUN_DIR/tensorboard/ (needs the tensorboard extra)


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


def sections() -> dict[str, type]:
    """Section name -> its dataclass, in the order of Config."""
    return typing.get_type_hints(Config)


def key_index() -> dict[str, str]:
    """Field name -> section name, for flags (which are flat)."""
    index = {}
    for section, cls in sections().items():
        for f in dataclasses.fields(cls):
            assert f.name not in index, f"config key {f.name} is in two sections"
            index[f.name] = section
    return index


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check a YAML value against a field's type; ints are accepted where floats are expected."""
    options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return _as_float(value, key)
        if option is float and isinstance(value, str) and _is_number(value):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if option is str and isinstance(value, str):
            return value
        if typing.get_origin(option) is list and isinstance(value, list):
            return [_coerce(item, typing.get_args(option)[0], key) for item in value]
    wanted = " or ".join(_type_name(o) for o in options)
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


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    if typing.get_origin(annotation) is list:
        return f"a list of {_type_name(typing.get_args(annotation)[0])}"
    return annotation.__name__


def _apply(config: Config, section: str, key: str, value: Any) -> None:
    target = getattr(config, section)
    hints = typing.get_type_hints(type(target))
    setattr(target, key, _coerce(value, hints[key], f"{section}.{key}"))


def apply_file(config: Config, path: Path) -> None:
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass the path of a YAML file such as configs/cifar10.yaml")
    loaded = read_yaml(path, f"config file {path}", "fix the file or start from configs/") or {}
    if not isinstance(loaded, dict):
        raise UserError(f"config file {path} must be a mapping of sections (data:, optim:, ...)")
    apply_mapping(config, loaded, str(path))


MAX_YAML_BYTES = 1_000_000  # a config is about a kilobyte
MAX_YAML_NODES = 10_000  # values once every alias is copied out; a config holds about 40
MAX_YAML_DEPTH = 50  # a config nests 2 or 3 levels
MAX_YAML_INT_DIGITS = 100  # far beyond any setting; Python refuses to read ints of more than 4300 digits


class YamlRefused(Exception):
    """A YAML document too large to read safely; the message says what is too large."""


def read_yaml(path: Path, name: str, fix: str) -> Any:
    """The one document of a YAML file, read safely: no Python tags (yaml's safe loader), and bounded, so a
    small hostile file cannot take the memory or time that an alias bomb ("billion laughs") or deep nesting
    would. Every problem is a UserError '<name> ...; <fix>' (name: "config file x.yaml", say)."""
    import yaml

    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise YamlRefused(f"is larger than {MAX_YAML_BYTES // 1000} kB")
        return yaml.load(path.read_text(), Loader=_bounded_loader())
    except UnicodeDecodeError:
        raise UserError(f"{name} is not a text file; {fix}") from None
    except OSError as error:
        raise UserError(f"cannot read {name} ({error.strerror or error}); {fix}") from None
    except YamlRefused as error:
        raise UserError(f"{name} {error}; {fix}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{name} is not valid YAML{where}; {fix}") from None
    except ValueError as error:  # a value yaml cannot build, such as the date 2024-13-45
        raise UserError(f"{name} holds a value that cannot be read ({str(error)[:SHOWN_LENGTH]}); {fix}") from None


@functools.cache
def _bounded_loader() -> type:
    """yaml's safe loader, refusing documents past the MAX_YAML_* bounds (made on first use: yaml is
    imported only by the commands that read it)."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            # composing is recursive: without a bound, deep nesting ends in a RecursionError
            self.depth += 1
            try:
                if self.depth > MAX_YAML_DEPTH:
                    line = self.peek_event().start_mark.line + 1
                    raise YamlRefused(f"nests deeper than {MAX_YAML_DEPTH} levels (line {line})")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def construct_document(self, node):
            size = _expanded_size(node)
            if size == math.inf:
                raise YamlRefused("has an alias inside the very collection it names (a value that holds itself)")
            if size > MAX_YAML_NODES:
                raise YamlRefused(f"has aliases that expand to more than {MAX_YAML_NODES:,} values")
            return super().construct_document(node)

        def construct_yaml_int(self, node):
            if len(node.value) > MAX_YAML_INT_DIGITS:
                raise YamlRefused(f"holds a number of {len(node.value)} digits at line {node.start_mark.line + 1}")
            return super().construct_yaml_int(node)

    BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)
    return BoundedLoader


def _expanded_size(root) -> float:
    """How many nodes a composed YAML document has once every alias is copied out (aliases share one node:
    nine aliases to a list of nine aliases... are 9^n values); infinite when a collection holds itself.
    Counted without recursion, each shared node once."""
    import yaml

    def children(node) -> list:
        if isinstance(node, yaml.MappingNode):
            return [part for pair in node.value for part in pair]
        return list(node.value) if isinstance(node, yaml.SequenceNode) else []

    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the path from the root: meeting one again is a cycle
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        if finished:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children(node))
        elif id(node) in open_nodes:
            return math.inf
        elif id(node) not in sizes:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children(node))
    return sizes[id(root)]


def apply_mapping(config: Config, loaded: dict, source: str, strict: bool = True) -> None:
    """Sections of keys, as config.yaml holds them; `strict=False` passes over unknown names (a checkpoint's
    config written by a later imgcls) but still checks the type of every known key."""
    known = sections()
    for section, values in loaded.items():
        if section not in known:
            if not strict:
                continue
            raise UserError(f"unknown config section {shown(str(section))} in {source}"
                            f"{did_you_mean(str(section), known)}")
        if not isinstance(values, dict):
            raise UserError(f"config section '{section}' in {source} must be a mapping of keys")
        names = [f.name for f in dataclasses.fields(known[section])]
        for key, value in values.items():
            if key not in names:
                if not strict:
                    continue
                raise UserError(f"unknown config key {shown(f'{section}.{key}')} in {source}"
                                f"{did_you_mean(str(key), names)}")
            _apply(config, section, key, value)


def apply_flags(config: Config, flags: dict[str, Any]) -> None:
    """Flags given on the command line (None means 'not given') override the file."""
    index = key_index()
    for key, value in flags.items():
        if value is not None:
            _apply(config, index[key], key, value)


def parse_batch_size(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text.strip()  # 'full', 'auto', or a mistake that validate() names


def parse_class_weights(text: str) -> str | list[float]:
    if text == "balanced":
        return text
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"--class-weights must be 'balanced' or numbers separated by commas, not '{text}'") from None


def build_config(config_file: Path | None, flags: dict[str, Any]) -> Config:
    config = Config()
    if config_file is not None:
        apply_file(config, config_file)
    apply_flags(config, flags)
    validate(config)
    return config


MAX_THREADS = 1024  # far above any CPU's cores; 100,000 OpenMP threads crashed the process
MAX_EPOCHS = 1_000_000  # bounds the warmup: 1e308 epochs overflowed counting its steps


def validate(config: Config) -> None:
    from imgcls.data.registry import DATASET_NAMES

    d, o, s, t = config.data, config.optim, config.schedule, config.train
    check_choice("dataset", d.dataset, DATASET_NAMES)
    check_choice("loss", config.loss.loss, LOSSES)
    check_choice("init", config.model.init, INITS)
    check_choice("schedule", s.schedule, SCHEDULES)
    check_choice("normalization", d.normalize, NORMALIZATIONS)
    check_choice("precision", t.precision, PRECISIONS)
    check_choice("gradient", t.gradient, GRADIENTS)
    _require(0 < d.val_split < 1, f"--val-split must be between 0 and 1 (exclusive), not {d.val_split}")
    _require(d.image_size is None or d.image_size >= 1, f"--image-size must be at least 1, not {d.image_size}")
    _require(d.limit is None or d.limit >= 2, f"--limit must be at least 2 images, not {d.limit}")
    for flag, value in (("--lr", o.lr), ("--weight-decay", o.weight_decay), ("--init-std", config.model.init_std),
                        ("--warmup-epochs", s.warmup_epochs)):
        _require(math.isfinite(value), f"{flag} must be a finite number, not {value}")
    check_seed(t.seed)
    _require(o.lr > 0, f"--lr must be greater than 0, not {o.lr}")
    _require(0 <= o.momentum < 1, f"--momentum must be in [0, 1), not {o.momentum}")
    _require(o.weight_decay >= 0, f"--weight-decay must be 0 or more, not {o.weight_decay}")
    _require(not o.nesterov or o.momentum > 0, "--nesterov needs a --momentum above 0")
    if isinstance(o.batch_size, str):
        check_choice("batch size", o.batch_size, ("full", "auto"))
    _require(not isinstance(o.batch_size, int) or o.batch_size >= 1,
             f"--batch-size must be at least 1 (or 'full' or 'auto'), not {o.batch_size}")
    _require(t.epochs >= 1, f"--epochs must be at least 1, not {t.epochs}")
    _require(t.threads is None or 1 <= t.threads <= MAX_THREADS,
             f"--threads must be between 1 and {MAX_THREADS}, not {t.threads}")
    _require(t.patience is None or t.patience >= 1, f"--patience must be at least 1 epoch, not {t.patience}")
    _require(config.model.init_std > 0, f"--init-std must be greater than 0, not {config.model.init_std}")
    _require(0 <= s.warmup_epochs <= MAX_EPOCHS,
             f"--warmup-epochs must be between 0 and {MAX_EPOCHS:,}, not {s.warmup_epochs}")
    _require(s.step_epochs >= 1, f"--step-epochs must be at least 1, not {s.step_epochs}")
    _require(0 < s.step_gamma <= 1, f"--step-gamma must be in (0, 1], not {s.step_gamma}")
    weights = config.loss.class_weights
    if isinstance(weights, str):
        check_choice("class weights", weights, ("balanced",))
    elif weights is not None:
        _require(all(0 <= w < math.inf for w in weights) and any(w > 0 for w in weights),
                 "--class-weights must be finite non-negative numbers, at least one above 0")
    check_device_name(t.device)


def check_seed(seed: int) -> None:
    """Seeds are kept to [0, 2^32); torch refuses seeds past 2^64 with a traceback."""
    _require(0 <= seed < 2 ** 32, f"--seed must be in [0, 2^32), not {shown(seed)}")


def check_device_name(device: str) -> None:
    if device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()):
        return
    raise UserError(f"unknown device {shown(device)}; choose auto, cpu, cuda or cuda:N")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def default_data_dir() -> Path:
    return Path(os.environ.get("IMGCLS_DATA") or _user_cache() / "data")


def default_cache_dir() -> Path:
    return Path(os.environ.get("IMGCLS_CACHE") or _user_cache() / "decoded")


def _user_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imgcls"
