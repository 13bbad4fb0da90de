"""Resuming a run: the checkpoint must belong to this run (its config and data, wherever they live), and every
piece of its state be one a run writes: a damaged or crafted file is refused in one line, never half-restored."""

from __future__ import annotations

import hashlib
import math

import torch

from imgcls.runs import checkpoint as ckpt
from imgcls import distributed
from imgcls.config import Config
from imgcls.data.types import PreparedData
from imgcls.errors import UserError, shown
from imgcls.training.progress import Progress

# Where a run's inputs live, not what they are: a resumed run may find them elsewhere.
LOCATION_KEYS = {("train", "device"), ("data", "data_dir"), ("output", "out")}


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
    """Put model `index` of the stack, its schedule and progress where the checkpoint left them; returns why it
    had diverged (None if it had not)."""
    if not saved.resumable:
        raise UserError("the run's last.safetensors cannot resume training (no optimizer state); start a new run")
    resume = saved.resume_state()
    for name, value, param in zip(ckpt.VELOCITIES, resume.velocities, (stack.weight[index], stack.bias[index])):
        if value.shape != param.shape or value.dtype != param.dtype or not bool(torch.isfinite(value).all()):
            raise ValueError(f"its momentum buffer {name} is not finite numbers of its parameter's shape")
    schedule = resume.schedule
    if not (isinstance(schedule, dict) and set(schedule) == {"factor", "stale", "decayed", "exhausted"}
            and _is_number(schedule["factor"]) and schedule["factor"] > 0 and _is_whole(schedule["stale"])
            and _is_whole(schedule["decayed"]) and schedule["decayed"] <= model.plateau.decays
            and isinstance(schedule["exhausted"], bool)):
        raise ValueError("its schedule state is not the plateau state a run writes")
    if not (_is_whole(resume.progress["step"]) and resume.progress["step"] < model.schedule.steps_per_epoch):
        raise ValueError("its step count does not agree with this run's steps per epoch")
    if resume.diverged is not None and not isinstance(resume.diverged, str):
        raise ValueError("its divergence note is not text")
    with torch.no_grad():
        stack.weight[index].copy_(saved.weight)
        stack.bias[index].copy_(saved.bias)
        stack.velocity[index].copy_(resume.velocities[0])
        stack.bias_velocity[index].copy_(resume.velocities[1])
    for key, value in schedule.items():
        setattr(model.plateau, key, value)
    _restore_progress(resume, model.progress, device, shard)
    return resume.diverged


def _restore_progress(resume: ckpt.ResumeState, progress: Progress, device: torch.device,
                      shard: distributed.Shard) -> None:
    for key in ("epoch", "step", "seconds", "lr_first", "history", "best_epoch", "best_val"):
        setattr(progress, key, resume.progress[key])
    sums = resume.sums
    if any(tensor.dim() != 0 or not bool(torch.isfinite(tensor)) for tensor in sums) or \
            sums[2].dtype != torch.int64 or not sums[0].is_floating_point():
        raise ValueError("its running loss and accuracy are not the scalars a run writes")
    if shard.is_main:  # the saved running sums are the whole world's: one process carries them on
        progress.seen = resume.progress["seen"]
        progress.loss_sum, progress.weight_sum, progress.correct = (tensor.to(device) for tensor in sums)
    _check_restored(progress, len(progress.history))


def _check_restored(progress: Progress, epochs_done: int) -> None:
    """A damaged checkpoint can hold any JSON where these numbers belong: refuse what a run never writes."""
    fine = (_is_whole(progress.epoch) and _is_whole(progress.step) and _is_whole(progress.seen)
            and progress.seen < 2 ** 53 and _is_number(progress.seconds) and epochs_done == progress.epoch
            and (progress.lr_first is None or _is_number(progress.lr_first))
            and all(isinstance(record, dict) for record in progress.history)
            and (progress.best_epoch is None) == (progress.best_val is None)
            and (progress.best_epoch is None or (_is_whole(progress.best_epoch) and progress.best_epoch < epochs_done
                                                 and isinstance(progress.best_val, dict)
                                                 and {"top1", "loss"} <= progress.best_val.keys()
                                                 and all(_is_number(progress.best_val[key])
                                                         for key in ("top1", "loss")))))
    if not fine:
        raise ValueError("its progress record (epoch, step, history, best epoch) is inconsistent")


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
