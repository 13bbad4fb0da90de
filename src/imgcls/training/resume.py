"""Resuming a run: the checkpoint must belong to this run (its config and data, wherever they live), and every
piece of its state be one a run writes: a damaged or crafted file is refused in one line, never half-restored."""

from __future__ import annotations

import hashlib
from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, ValidationError, model_validator

from imgcls.runs import checkpoint as ckpt
from imgcls import distributed
from imgcls.config import Config
from imgcls.data.types import PreparedData
from imgcls.errors import UserError, shown
from imgcls.files import printable
from imgcls.linear.schedule import Plateau

# Where a run's inputs live, not what they are: a resumed run may find them elsewhere.
LOCATION_KEYS = {("train", "device"), ("data", "data_dir"), ("output", "out")}
Count = Annotated[int, Strict(), Field(ge=0)]
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]  # an int too, never a bool


class PlateauState(BaseModel):  # Plateau.state()
    model_config = ConfigDict(extra="forbid")
    factor: Annotated[Number, Field(gt=0)]
    stale: Count
    decayed: Annotated[Count, Field(le=Plateau.decays)]
    exhausted: StrictBool


class BestVal(BaseModel):
    top1: Number
    loss: Number


class SavedProgress(BaseModel):
    """Progress as a run writes it: whole counts, finite numbers, a best epoch among the epochs done."""

    epoch: Count
    step: Count
    seen: Annotated[Count, Field(lt=2 ** 53)]
    seconds: Number
    lr_first: Number | None
    history: list[dict]
    best_epoch: Count | None
    best_val: BestVal | None

    @model_validator(mode="after")
    def consistent(self) -> SavedProgress:
        if len(self.history) != self.epoch or (self.best_epoch is None) != (self.best_val is None) or \
                (self.best_epoch is not None and self.best_epoch >= self.epoch):
            raise ValueError("inconsistent")
        return self


def data_fingerprint(data: PreparedData) -> dict:
    """What identifies the data wherever it is: the split sizes and every label in order (the normalization
    statistics, exact sums over the training pixels, identify those)."""
    labels = hashlib.sha256()
    for split in (data.train, data.val, data.test):
        labels.update(split.labels.to(torch.int64).cpu().numpy().tobytes())
    return {"counts": [len(data.train), len(data.val), len(data.test)], "labels_sha256": labels.hexdigest()}


def check_same_run(saved: ckpt.Checkpoint, config: Config, data: PreparedData, source: str = "config.yaml") -> None:
    """The resumed run must be the run that wrote the checkpoint: same config (read from `source`), same data."""
    changed = config_changes(saved.meta["config"], config.to_dict(), source, "the checkpoint")
    if changed:
        raise UserError(f"{source} no longer matches the run it resumes: {'; '.join(changed[:3])}; put "
                        f"{source} back as it was, or start a new run with the new settings")
    fingerprint = saved.meta.get("data_fingerprint")
    same = (data.classes == saved.classes and tuple(data.shape) == saved.input_shape
            and torch.equal(data.normalization.mean, saved.mean) and torch.equal(data.normalization.std, saved.std)
            and (fingerprint is None or fingerprint == data_fingerprint(data)))
    if not same:
        raise UserError(f"the data in {config.data.data_dir or 'the data dir'} is not the data this run was trained "
                        f"on (images, labels or classes differ); point --data-dir at the original data, or start a "
                        f"new run")


def config_changes(saved: dict, current: dict, now: str = "config.yaml", before: str = "the sweep") -> list[str]:
    """What differs between two resolved configs, but for where the run's inputs live."""
    return [f"{section}.{key} is {shown(value)} in {now} but {shown(saved.get(section, {}).get(key))} in {before}"
            for section, values in current.items() for key, value in values.items()
            if (section, key) not in LOCATION_KEYS and saved.get(section, {}).get(key) != value]


def restore(saved: ckpt.Checkpoint, stack, index: int, model, device: torch.device,
            shard: distributed.Shard) -> str | None:
    """Model `index` of the stack, its schedule and progress where the checkpoint left them, every piece checked
    first (a ValueError says which is wrong); returns why it had diverged (None if it had not)."""
    if not saved.resumable:
        raise UserError("the run's last.safetensors cannot resume training (no optimizer state); start a new run")
    resume = saved.resume_state()
    for name, value, param in zip(ckpt.VELOCITIES, resume.velocities, (stack.weight[index], stack.bias[index])):
        if value.shape != param.shape or value.dtype != param.dtype or not bool(torch.isfinite(value).all()):
            raise ValueError(f"its momentum buffer {name} is not finite numbers of its parameter's shape")
    _check(PlateauState, resume.schedule, "schedule state")
    _check(SavedProgress, resume.progress, "progress record (epoch, step, history, best epoch)")
    best = resume.progress["best_epoch"]
    if best is not None and model.run is not None and not model.run.best.is_file():  # saved before the state file
        raise UserError(f"its best epoch ({best + 1}) was saved in {printable(model.run.best)}, which is gone or not a "
                        f"file; put it back, or start anew with --overwrite")
    if resume.progress["step"] >= model.schedule.steps_per_epoch:
        raise ValueError("its step count does not agree with this run's steps per epoch")
    if resume.diverged is not None and not isinstance(resume.diverged, str):
        raise ValueError("its divergence note is not text")
    sums = resume.sums
    if any(tensor.dim() != 0 or not bool(torch.isfinite(tensor)) for tensor in sums) or \
            sums[2].dtype != torch.int64 or not sums[0].is_floating_point():
        raise ValueError("its running loss and accuracy are not the scalars a run writes")
    with torch.no_grad():
        for target, value in zip((stack.weight, stack.bias, stack.velocity, stack.bias_velocity),
                                 (saved.weight, saved.bias, *resume.velocities)):
            target[index].copy_(value)
    for key, value in resume.schedule.items():
        setattr(model.plateau, key, value)
    progress = model.progress
    for key in ("epoch", "step", "seconds", "lr_first", "history", "best_epoch", "best_val"):
        setattr(progress, key, resume.progress[key])
    if shard.is_main:  # the saved running sums are the whole world's: one process carries them on
        progress.seen = resume.progress["seen"]
        progress.loss_sum, progress.weight_sum, progress.correct = (tensor.to(device) for tensor in sums)
    return resume.diverged


def _check(schema: type[BaseModel], value, what: str) -> None:
    try:
        schema.model_validate(value)
    except ValidationError:
        raise ValueError(f"its {what} is not what a run writes") from None
