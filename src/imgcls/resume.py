"""Resuming a run: a resumable checkpoint is checked whole before any of it is used.

It must belong to this run (the config and the data it was trained on, except where they
live), and every piece of optimizer, scheduler and progress state must be one that a run
writes: a damaged or crafted file is refused with one line, never half-restored.
"""

from __future__ import annotations

import hashlib
import math

import torch

from imgcls import checkpoint as ckpt
from imgcls import distributed
from imgcls.config import Config
from imgcls.data.types import PreparedData
from imgcls.errors import UserError
from imgcls.progress import Progress

# Where a run's inputs live, not what they are: a resumed run may find them elsewhere.
LOCATION_KEYS = {("train", "device"), ("data", "data_dir"), ("output", "out")}


def data_fingerprint(data: PreparedData) -> dict:
    """What identifies the data wherever it is: the split sizes and every label in order. (The normalization
    statistics, saved beside it, are exact sums over the training pixels, so they identify those too.)"""
    labels = hashlib.sha256()
    for split in (data.train, data.val, data.test):
        labels.update(split.labels.to(torch.int64).cpu().numpy().tobytes())
    return {"counts": [len(data.train), len(data.val), len(data.test)], "labels_sha256": labels.hexdigest()}


def check_same_run(saved: ckpt.Checkpoint, config: Config, data: PreparedData) -> None:
    """The resumed run must be the run that wrote the checkpoint: same config, same data."""
    changed = [f"{section}.{key} is {_shown(value)} in config.yaml but {_shown(saved_value)} in the checkpoint"
               for (section, key), value, saved_value in _config_differences(saved.meta["config"], config.to_dict())]
    if changed:
        raise UserError(f"config.yaml no longer matches the run it resumes: {'; '.join(changed[:3])}; put "
                        f"config.yaml back as it was, or start a new run with the new settings")
    fingerprint = saved.meta.get("data_fingerprint")
    same = (data.classes == saved.classes and tuple(data.shape) == saved.input_shape
            and torch.equal(data.normalization.mean, saved.mean) and torch.equal(data.normalization.std, saved.std)
            and (fingerprint is None or fingerprint == data_fingerprint(data)))
    if not same:
        raise UserError(f"the data in {config.data.data_dir or 'the data dir'} is not the data this run was trained "
                        f"on (images, labels or classes differ); point --data-dir at the original data, or start a "
                        f"new run")


def _config_differences(saved: dict, current: dict):
    for section, values in current.items():
        for key, value in values.items():
            if (section, key) not in LOCATION_KEYS and saved.get(section, {}).get(key) != value:
                yield (section, key), value, saved.get(section, {}).get(key)


def _shown(value) -> str:
    text = repr(value) if isinstance(value, (int, float, str, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def restore(saved: ckpt.Checkpoint, model, optimizer, scheduler, progress: Progress, device: torch.device,
            shard: distributed.Shard, steps_per_epoch: int) -> None:
    """Put the model, optimizer, scheduler and progress where the checkpoint left them."""
    if not saved.resumable:
        raise UserError("the run's last.safetensors cannot resume training (no optimizer state); start a new run")
    resume = saved.resume_state()
    buffers = _momentum_buffers(resume.buffers, optimizer, device)
    _check_same_structure(optimizer.state_dict()["param_groups"], resume.param_groups, "optimizer", skip={"lr"},
                          exact=True)
    if not all(_is_number(group["lr"]) and group["lr"] >= 0 for group in resume.param_groups):
        raise ValueError("a learning rate in the optimizer state is not a number of 0 or more")
    _check_same_structure(scheduler.state_dict(), resume.scheduler, "scheduler")
    epoch, step = resume.progress["epoch"], resume.progress["step"]
    if not (_is_whole(step) and step < steps_per_epoch
            and resume.scheduler["last_epoch"] == epoch * steps_per_epoch + step):
        raise ValueError("its step count does not agree with its scheduler's (or with this run's steps per epoch)")
    with torch.no_grad():
        model.linear.weight.copy_(saved.weight)
        model.linear.bias.copy_(saved.bias)
    optimizer.load_state_dict({"state": buffers, "param_groups": resume.param_groups})
    scheduler.load_state_dict(resume.scheduler)
    _restore_progress(resume, progress, device, shard)


def _restore_progress(resume: ckpt.ResumeState, progress: Progress, device: torch.device,
                      shard: distributed.Shard) -> None:
    for key in ("epoch", "step", "seconds", "lr_first", "history", "best_epoch", "best_val"):
        setattr(progress, key, resume.progress[key])
    if shard.is_main:  # the saved running sums are the whole world's: one process carries them on
        sums = resume.sums
        if any(tensor.dim() != 0 or not bool(torch.isfinite(tensor)) for tensor in sums) or \
                sums[2].dtype != torch.int64 or not sums[0].is_floating_point():
            raise ValueError("its running loss and accuracy are not the scalars a run writes")
        progress.seen = resume.progress["seen"]
        progress.loss_sum, progress.weight_sum, progress.correct = (tensor.to(device) for tensor in sums)
    _check_restored(progress, len(progress.history))


def _momentum_buffers(saved: list[ckpt.OptimizerBuffer], optimizer, device: torch.device) -> dict[int, dict]:
    """The optimizer's state from the checkpoint's buffers: SGD's momentum buffer, of its parameter's shape and
    type, for any of its parameters."""
    params = [param for group in optimizer.param_groups for param in group["params"]]
    buffers: dict[int, dict] = {}
    for key, index, name, value in saved:
        if index is None or index >= len(params) or name != "momentum_buffer":
            raise ValueError(f"it holds an optimizer tensor {key[:60]!r} that SGD does not have")
        param = params[index]
        if value.shape != param.shape or value.dtype != param.dtype or not bool(torch.isfinite(value).all()):
            raise ValueError(f"its momentum buffer {key} is not finite numbers of its parameter's shape")
        buffers[index] = {name: value.to(device)}
    return buffers


def _check_same_structure(fresh, saved, what: str, skip: frozenset | set = frozenset(), exact: bool = False,
                          path: str = "") -> None:
    """`saved` has the shape of the state this run builds (`fresh`): the same keys, lengths and kinds of value;
    with `exact`, the same values too, but for the keys in `skip`."""
    def fail(why: str):
        raise ValueError(f"its {what} state is not one this run writes ({path or 'top level'}: {why})")

    if isinstance(fresh, dict):
        if not isinstance(saved, dict) or set(saved) != set(fresh):
            fail("other keys")
        for key in fresh:
            if key not in skip:
                _check_same_structure(fresh[key], saved[key], what, skip, exact, f"{path}.{key}".lstrip("."))
    elif isinstance(fresh, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(fresh):
            fail("another length")
        for index, (a, b) in enumerate(zip(fresh, saved)):
            _check_same_structure(a, b, what, skip, exact, f"{path}[{index}]")
    elif _is_number(fresh) and not _is_number(saved):
        fail("not a finite number")
    elif not _is_number(fresh) and type(saved) is not type(fresh):
        fail("another kind of value")
    elif exact and saved != fresh:
        fail("another value")


def _check_restored(progress: Progress, epochs_done: int) -> None:
    """A damaged checkpoint can hold any JSON where these numbers belong: refuse what a run never writes."""
    fine = (_is_whole(progress.epoch) and _is_whole(progress.step) and _is_whole(progress.seen)
            and _is_number(progress.seconds) and epochs_done == progress.epoch
            and (progress.lr_first is None or _is_number(progress.lr_first))
            and all(isinstance(record, dict) for record in progress.history)
            and (progress.best_epoch is None) == (progress.best_val is None)
            and (progress.best_epoch is None or (_is_whole(progress.best_epoch) and progress.best_epoch < epochs_done
                                                 and isinstance(progress.best_val, dict)
                                                 and {"top1", "loss"} <= progress.best_val.keys())))
    if not fine:
        raise ValueError("its progress record (epoch, step, history, best epoch) is inconsistent")


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
