"""Checkpoints: one safetensors file that carries everything needed to use the model alone.

Tensors: the weights and the normalization statistics (and, in a resumable checkpoint, the
optimizer's momentum buffers and the random-number states). Metadata: one JSON string with
the dataset, class names, input shape, resolved config, seed, epoch and format version.
Loading never unpickles anything, so a checkpoint cannot run code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from imgcls.errors import UserError
from imgcls.files import write_atomic

FORMAT_VERSION = 1
FORMAT_KEY = "imgcls_format"


@dataclass
class Checkpoint:
    weight: torch.Tensor  # (K, C*H*W)
    bias: torch.Tensor  # (K,)
    mean: torch.Tensor  # (C, H, W), 0..1 scale
    std: torch.Tensor
    meta: dict  # dataset, classes, input_shape, config, seed, epoch, ...
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # optimizer and RNG tensors, for resuming

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["input_shape"])

    def model(self):
        from imgcls.model import LinearClassifier

        model = LinearClassifier(self.input_shape, len(self.classes))
        model.linear.weight.data.copy_(self.weight)
        model.linear.bias.data.copy_(self.bias)
        return model


def save(path: Path, checkpoint: Checkpoint) -> None:
    from safetensors.torch import save_file

    tensors = {"weight": checkpoint.weight, "bias": checkpoint.bias, "norm.mean": checkpoint.mean,
               "norm.std": checkpoint.std}
    tensors.update({f"state.{name}": value for name, value in checkpoint.state.items()})
    tensors = {name: value.detach().cpu().contiguous() for name, value in tensors.items()}
    metadata = {FORMAT_KEY: str(FORMAT_VERSION), "meta": json.dumps(checkpoint.meta)}
    write_atomic(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


def load(path: Path) -> Checkpoint:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir():
        path = path / "best.safetensors"
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass a .safetensors file from a run folder "
                        f"(runs/<run>/best.safetensors) or the run folder itself")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise UserError(f"{path} is not a readable imgcls checkpoint ({str(error).splitlines()[0][:120]}); it may be "
                        f"truncated or another kind of file") from None
    if FORMAT_KEY not in metadata:
        raise UserError(f"{path} is a safetensors file but not an imgcls checkpoint (no '{FORMAT_KEY}' metadata)")
    version = int(metadata[FORMAT_KEY]) if metadata[FORMAT_KEY].isdigit() else -1
    if version > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer imgcls (checkpoint format {version}, this one reads up to "
                        f"{FORMAT_VERSION}); upgrade imgcls")
    try:
        meta = json.loads(metadata["meta"])
        checkpoint = Checkpoint(tensors.pop("weight"), tensors.pop("bias"), tensors.pop("norm.mean"),
                                tensors.pop("norm.std"), meta,
                                {name[len("state."):]: value for name, value in tensors.items()})
        _check_consistent(checkpoint)
    except (KeyError, ValueError, TypeError) as error:
        raise UserError(f"{path} is a damaged imgcls checkpoint ({error}); use another checkpoint") from None
    return checkpoint


def _check_consistent(checkpoint: Checkpoint) -> None:
    classes, shape = checkpoint.classes, checkpoint.input_shape
    expected = (len(classes), shape[0] * shape[1] * shape[2])
    if tuple(checkpoint.weight.shape) != expected or tuple(checkpoint.mean.shape) != shape:
        raise ValueError(f"weights {tuple(checkpoint.weight.shape)} do not match {len(classes)} classes of {shape}")
