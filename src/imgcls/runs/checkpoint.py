"""Checkpoints: one safetensors file, never unpickled, that carries all a model needs: its weights and normalization
(resumable: also the momentum and the epoch's running sums; a sweep's stacked models may share one file), and as
metadata one JSON string with dataset, classes, input shape, config, seed, epoch."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
from pydantic import ConfigDict, Field, Strict, ValidationError, create_model
from safetensors import SafetensorError
from safetensors.torch import load as deserialize, save as serialize

from imgcls.config import Config
from imgcls.data.registry import DATASET_NAMES
from imgcls.errors import UserError, shown, validation_problem
from imgcls.files import write_atomic
from imgcls.linear.model import LinearClassifier
from imgcls.runs.rundir import Classes, Count, RunDir

FORMAT_VERSION = 2  # 2: a resumable checkpoint holds imgcls's own update rule's state (no torch optimizer's)
MODEL_FORMAT = 1  # a checkpoint of the model alone is read by every imgcls since the first
FORMAT_KEY = "imgcls_format"
FLOAT_TYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)  # what the model can be loaded from
# A resumable checkpoint's state tensors: the epoch's running sums (Progress's) and the momentum of W and b; its
# meta["resume"]: the plateau schedule's state and these Progress fields. No RNG state: nothing after the start of
# a run draws from torch's global generator (the data order has its own, seeded by the seed and the epoch).
RUNNING_SUMS = ("loss_sum", "weight_sum", "correct")
VELOCITIES = ("velocity.weight", "velocity.bias")
SAVED_PROGRESS = ("seen", "seconds", "history", "best_epoch", "best_val", "lr_first")
STACK_KEY = "models"  # a file of several models (a sweep's stack): how many; each one's tensors under "<i>/"
Side = Annotated[int, Strict(), Field(ge=1)]
Meta = create_model("Meta", __config__=ConfigDict(extra="allow"), dataset=str, config=dict, epoch=Count, seed=Count,
                    classes=Classes, input_shape=tuple[Side, Side, Side], superclass_of=(list[Count] | None, None))


@dataclass
class ResumeState:
    """What a resumable checkpoint holds beyond the model, as saved; resume.py checks every piece before using any."""
    schedule: dict  # the plateau schedule's state
    velocities: list[torch.Tensor]  # VELOCITIES, in that order
    sums: list[torch.Tensor]  # RUNNING_SUMS, in that order
    progress: dict  # SAVED_PROGRESS, and the epoch and step under way
    diverged: str | None  # why this model diverged (a sweep's model stops alone), else None


@dataclass
class Checkpoint:
    weight: torch.Tensor  # (K, C*H*W)
    bias: torch.Tensor  # (K,)
    mean: torch.Tensor  # (C, H, W), 0..1 scale
    std: torch.Tensor
    meta: dict  # dataset, classes, input_shape, config, seed, epoch, ...
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # optimizer buffers and running sums, for resuming

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["input_shape"])

    def templates(self) -> torch.Tensor:
        """Each class's row of W as an image, in float32: (K, C, H, W)."""
        return self.weight.float().reshape(-1, *self.input_shape)

    @property
    def resumable(self) -> bool:
        return "resume" in self.meta

    def add_resume_state(self, velocities: tuple[torch.Tensor, torch.Tensor], schedule: dict, progress,
                         diverged: str | None = None) -> None:
        """Make the checkpoint resumable: the momentum, the plateau schedule's state and the run's Progress."""
        self.meta["resume"] = {"schedule": schedule, **{key: getattr(progress, key) for key in SAVED_PROGRESS},
                               "diverged": diverged}
        self.state.update({name: getattr(progress, name) for name in RUNNING_SUMS})
        self.state.update(zip(VELOCITIES, velocities))

    def resume_state(self) -> ResumeState:
        """add_resume_state's pieces read back; a KeyError, TypeError or IndexError where the file lacks one."""
        saved = self.meta["resume"]
        if "scheduler" in saved and "schedule" not in saved:
            raise UserError("it was written by an older imgcls, whose resume state this one does not read; the run's "
                            "best.safetensors is usable as it is: start a new run (or sweep) to train further")
        progress = {key: saved[key] for key in SAVED_PROGRESS}
        progress.update(epoch=self.meta["epoch"], step=self.meta["step"])
        return ResumeState(saved["schedule"], [self.state[name] for name in VELOCITIES],
                           [self.state[name] for name in RUNNING_SUMS], progress, saved["diverged"])

    def model(self):
        model = LinearClassifier(self.input_shape, len(self.classes))
        model.linear.weight.data.copy_(self.weight)
        model.linear.bias.data.copy_(self.bias)
        return model


def save(path: Path, checkpoint: Checkpoint) -> None:
    save_stack(path, [checkpoint])


def save_stack(path: Path, checkpoints: list[Checkpoint]) -> None:
    """Several models' checkpoints as one file, written whole or not at all: a stack's state is never half old,
    half new. One model's is the plain checkpoint format."""
    if len(checkpoints) == 1:
        [checkpoint] = checkpoints
        version = FORMAT_VERSION if checkpoint.resumable else MODEL_FORMAT
        tensors, metadata = _tensors(checkpoint), {FORMAT_KEY: str(version), "meta": json.dumps(checkpoint.meta)}
    else:
        tensors = {f"{index}/{name}": value for index, checkpoint in enumerate(checkpoints)
                   for name, value in _tensors(checkpoint).items()}
        metadata = {FORMAT_KEY: str(FORMAT_VERSION), STACK_KEY: str(len(checkpoints)),
                    **{f"{index}/meta": json.dumps(checkpoint.meta) for index, checkpoint in enumerate(checkpoints)}}
    # each tensor in its own memory (never a shared view), serialized here and written by Python: a full disk is
    # then an OSError that write_atomic reports (safetensors' own writer hides the errno)
    content = serialize({name: value.detach().cpu().clone(memory_format=torch.contiguous_format)
                         for name, value in tensors.items()}, metadata=metadata)
    write_atomic(path, lambda temporary: temporary.write_bytes(content))


def load_stack(path: Path) -> list[Checkpoint]:
    """The models of a file save_stack wrote, each checked as load() checks one."""
    path = Path(path)
    metadata, tensors = _read_checked(path)
    count = metadata.get(STACK_KEY)
    if count is None:
        return [_checkpoint(path, metadata, tensors)]
    if not (count.isascii() and count.isdigit() and len(count) <= 6 and 1 < int(count) <= 100_000):
        raise UserError(f"{path} is a damaged imgcls checkpoint (it holds {count[:20]!r} models)")
    return [_checkpoint(path, {FORMAT_KEY: metadata[FORMAT_KEY], "meta": metadata.get(f"{index}/meta", "")},
                        {name.partition("/")[2]: value for name, value in tensors.items()
                         if name.partition("/")[0] == str(index)})
            for index in range(int(count))]


def _tensors(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    tensors = {"weight": checkpoint.weight, "bias": checkpoint.bias, "norm.mean": checkpoint.mean,
               "norm.std": checkpoint.std}
    tensors.update({f"state.{name}": value for name, value in checkpoint.state.items()})
    return tensors


def load(path: Path) -> Checkpoint:
    path = Path(path)
    if path.is_dir():  # a run folder: its best checkpoint
        path = RunDir(path).best
    metadata, tensors = _read_checked(path)
    if STACK_KEY in metadata:
        raise UserError(f"{path} holds the state of a sweep's {metadata[STACK_KEY][:20]} stacked models, not one "
                        f"model; pass a point's run folder (SWEEP/points/NNN or SWEEP/best)")
    return _checkpoint(path, metadata, tensors)


def _read_checked(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The file's metadata and tensors, once it is known to be an imgcls checkpoint this imgcls can read. The file is
    read whole by Python: safetensors' reader takes only UTF-8 paths."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass a .safetensors file from a run folder "
                        f"(runs/<run>/best.safetensors) or the run folder itself")
    try:
        content = path.read_bytes()
        tensors = deserialize(content)  # checks the header and every tensor's place in the file
        header = json.loads(content[8:8 + int.from_bytes(content[:8], "little")])
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise UserError(f"{path} is not a readable imgcls checkpoint ({str(error).splitlines()[0][:120]}); it may be "
                        f"truncated or another kind of file") from None
    metadata = {key: value for key, value in (header.get("__metadata__") or {}).items() if isinstance(value, str)}
    if FORMAT_KEY not in metadata:
        raise UserError(f"{path} is a safetensors file but not an imgcls checkpoint (no '{FORMAT_KEY}' metadata)")
    text = metadata[FORMAT_KEY]  # at most 9 digits: int() of thousands of digits is refused
    if not (text.isascii() and text.isdigit() and len(text) <= 9 and int(text) >= 1):
        raise UserError(f"{path} is a damaged imgcls checkpoint (format version {text[:20]!r}); use another "
                        f"checkpoint")
    if (version := int(text)) > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer imgcls (checkpoint format {version}, this one reads up to "
                        f"{FORMAT_VERSION}); upgrade imgcls")
    # fresh, aligned memory: BLAS rounds by a buffer's alignment, and resume is bit-exact (docs/development.md)
    return metadata, {name: tensor.clone() for name, tensor in tensors.items()}


def _checkpoint(path: Path, metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> Checkpoint:
    try:
        meta = json.loads(metadata["meta"])
        checkpoint = Checkpoint(tensors.pop("weight"), tensors.pop("bias"), tensors.pop("norm.mean"),
                                tensors.pop("norm.std"), meta,
                                {name[len("state."):]: value for name, value in tensors.items()})
        _check_consistent(checkpoint)
    except (KeyError, ValueError, TypeError, RecursionError) as error:
        reason = f"it lacks {error}" if isinstance(error, KeyError) else str(error)
        raise UserError(f"{path} is a damaged imgcls checkpoint ({reason}); use another checkpoint") from None
    return checkpoint


def _check_consistent(checkpoint: Checkpoint) -> None:
    """Everything eval, export-templates and resume read from a checkpoint is what it should be: a damaged file is
    refused here rather than failing somewhere later."""
    meta = checkpoint.meta
    try:
        checked = Meta.model_validate(meta)
    except ValidationError as error:
        raise ValueError(validation_problem(error, "its metadata")) from None
    classes, shape = checked.classes, checked.input_shape
    if shape[0] not in (1, 3):
        raise ValueError(f"'input_shape' has {shape[0]} channels; imgcls models see grey (1) or colour (3) images")
    if meta["dataset"] not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {shown(meta['dataset'])}")
    if checked.superclass_of is not None and len(checked.superclass_of) != len(classes):
        raise ValueError("'superclass_of' is not one superclass index per class")
    meta["config"] = _checked_config(meta["config"], len(classes))
    expected = (len(classes), shape[0] * shape[1] * shape[2])
    tensors = {"weight": (checkpoint.weight, expected), "bias": (checkpoint.bias, (len(classes),)),
               "norm.mean": (checkpoint.mean, shape), "norm.std": (checkpoint.std, shape)}
    for name, (tensor, wanted) in tensors.items():
        if tuple(tensor.shape) != wanted:
            raise ValueError(f"{name} {tuple(tensor.shape)} does not match {len(classes)} classes of {shape}")
        if tensor.dtype not in FLOAT_TYPES or not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} is not all finite numbers of a floating-point type "
                             f"({', '.join(map(str, FLOAT_TYPES))})")
    if not bool((checkpoint.std > 0).all()):
        raise ValueError("norm.std is not positive")


def _checked_config(saved, num_classes: int) -> dict:
    """The saved config, whole, if imgcls could have run it (keys of a later imgcls are passed over)."""
    try:
        config = Config.from_dict(saved, "the checkpoint", strict=False)
    except UserError as error:
        raise ValueError(f"its config is not valid: {error}") from None
    weights = config.loss.class_weights
    if isinstance(weights, list) and len(weights) != num_classes:
        raise ValueError(f"its config has {len(weights)} class weights for {num_classes} classes")
    return config.to_dict()
