"""The loop that trains stacked models (stacked.py) epoch by epoch, each model kept as a run of its own: its run
folder, early stopping, divergence, checkpoints and epochs.jsonl exactly as `imgcls train` keeps them (runstate.py).
A sweep (sweep.py) runs it for each group of its grid, the learning-rate search (lrsearch.py) for its candidates.
"""

from __future__ import annotations

import math
import time

import torch

from imgcls import checkpoint as ckpt
from imgcls.config import Config
from imgcls.data.types import PreparedData
from imgcls.distributed import Shard
from imgcls.errors import UserError
from imgcls.interrupt import StopRequest
from imgcls.report import Reporter
from imgcls.resume import check_same_run, restore
from imgcls.rundir import RunDir
from imgcls.runstate import (
    TrainState,
    end_epoch,
    new_model,
    new_state,
    save_interrupted,
)
from imgcls.stacked import StackedModels


class StackInterrupted(Exception):
    """Ctrl-C or SIGTERM: every model still training has just written a resumable checkpoint."""


def build_group(runs: list[RunDir], configs: list[Config], data: PreparedData, batch_size: int,
                device: torch.device, resume: bool = False, writes: bool = True) -> tuple[StackedModels, list[TrainState]]:
    """Each model (seeded as `imgcls train` seeds it), stacked, with its own optimizer and schedule, writing to its
    run folder; on resume, each where its last checkpoint left it."""
    models = []
    for config in configs:
        torch.manual_seed(config.train.seed)
        models.append(new_model(config, data, device))
    stack = StackedModels(models)
    steps = math.ceil(len(data.train) / max(1, min(batch_size, len(data.train))))
    states = [new_state(run, config, data, Shard(), model, steps, device)
              for run, config, model in zip(runs, configs, models)]
    stack.attach(states)
    for index, state in enumerate(states):
        if resume and state.run.last.is_file():
            restore_point(state, device, steps)
            stack.adopt_momentum(index)
        elif writes:
            state.run.start()
            state.run.write_config(state.config.to_dict())
        state.writes = writes
        if state.run.diverged.is_file():
            stack.freeze(index, zero=True)
            stack.diverged[index] = True
        elif not state.more_epochs():
            stack.freeze(index)
    return stack, states


def restore_point(state: TrainState, device: torch.device, steps: int) -> None:
    saved = ckpt.load(state.run.last)
    try:
        check_same_run(saved, state.config, state.data)
        restore(saved, state.model, state.optimizer, state.scheduler, state.progress, device, state.shard, steps)
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError, AttributeError) as error:
        raise UserError(f"{state.run.last} cannot resume this sweep ({type(error).__name__}: {str(error)[:200]}); "
                        f"it is damaged: start a new sweep") from None


def all_finished(states: list[TrainState]) -> bool:
    return all(not state.more_epochs() or state.run.diverged.is_file() for state in states)


def train_stacked(stack: StackedModels, states: list[TrainState], batches, val_batches, data: PreparedData,
                  stop: StopRequest, bar) -> None:
    """Epochs of stacked steps until every model has finished, stopped early or diverged."""
    active = _active(stack)
    epoch, step = states[active[0]].progress.epoch, states[active[0]].progress.step
    if any((states[i].progress.epoch, states[i].progress.step) != (epoch, step) for i in active):
        raise UserError("the sweep's checkpoints are not all at the same step (they were not written by one "
                        "interrupted sweep); start a new sweep")
    sums = _running_sums(stack, states)
    quiet = Reporter(quiet=True)
    while active:
        epoch = states[active[0]].progress.epoch
        started = time.perf_counter() - states[active[0]].progress.seconds
        for pixels, labels, _ in batches.epoch(epoch, states[active[0]].progress.step):
            for index in active:
                _note_rate(states[index])
            loss_sums, weights, correct = stack.step(pixels, labels)
            for name, value in zip(("loss", "weight", "correct"), (loss_sums, weights, correct)):
                sums[name] += value
            seconds = time.perf_counter() - started
            for index in active:
                progress = states[index].progress
                progress.step += 1
                progress.seen += len(labels)
                progress.seconds = seconds
                states[index].scheduler.step()
            _freeze_diverged(stack, states, active, sums)
            active = _active(stack)
            position = states[active[0]].progress.step if active else len(batches)
            bar(epoch + position / len(batches), f"epoch {epoch + 1}")
            if stop.requested and active and position < len(batches):
                _save_all(stack, states, sums, active)
                raise StackInterrupted()
        _end_epoch(stack, states, active, sums, val_batches, data, quiet)
        active = _active(stack)
        if stop.requested and active:
            raise StackInterrupted()  # every model's `last` checkpoint was just written


def _active(stack: StackedModels) -> list[int]:
    return [index for index, frozen in enumerate(stack.frozen.tolist()) if not frozen]


def _note_rate(state: TrainState) -> None:
    """The rate this update uses, before the schedule moves (epochs.jsonl's lr and lr_last)."""
    progress = state.progress
    progress.lr_last = state.optimizer.param_groups[0]["lr"]
    if progress.step == 0:
        progress.lr_first = progress.lr_last


def _running_sums(stack: StackedModels, states: list[TrainState]) -> dict[str, torch.Tensor]:
    """Each model's running loss, weight and correct counts of this epoch, as columns (restored ones included)."""
    device = stack.weight.device
    return {"loss": torch.tensor([float(s.progress.loss_sum) for s in states], device=device),
            "weight": torch.tensor([float(s.progress.weight_sum) for s in states], device=device),
            "correct": torch.tensor([int(s.progress.correct) for s in states], device=device)}


def _sync_sums(states: list[TrainState], sums: dict[str, torch.Tensor], indices: list[int]) -> None:
    for index in indices:
        progress = states[index].progress
        progress.loss_sum = sums["loss"][index].clone()
        progress.weight_sum = sums["weight"][index].clone()
        progress.correct = sums["correct"][index].clone()


def _freeze_diverged(stack: StackedModels, states: list[TrainState], active: list[int],
                     sums: dict[str, torch.Tensor]) -> None:
    finite = torch.isfinite(sums["loss"]).tolist()
    for index in active:
        if not finite[index]:
            _diverge(stack, states[index], index, f"the loss became {float(sums['loss'][index])} at epoch "
                                                  f"{states[index].progress.epoch + 1}, step "
                                                  f"{states[index].progress.step}")
            sums["loss"][index] = 0.0


def _diverge(stack: StackedModels, state: TrainState, index: int, why: str) -> None:
    stack.freeze(index, zero=True)
    stack.diverged[index] = True
    if state.writes:
        kept = "its last good checkpoints are kept" if state.run.best.is_file() else "no epoch had finished"
        state.run.mark_diverged(f"{why}: training diverged; {kept}")


def _end_epoch(stack: StackedModels, states: list[TrainState], active: list[int], sums: dict[str, torch.Tensor],
               val_batches, data: PreparedData, quiet: Reporter) -> None:
    """Validation for every model at once, then each model's epoch ends as a run's does (train.end_epoch)."""
    _sync_sums(states, sums, active)
    metrics = stack.evaluate(val_batches, data.superclass_of)
    for index in active:
        state, val = states[index], metrics[index]
        if not math.isfinite(val.loss):
            _diverge(stack, state, index, f"the validation loss became {val.loss} after epoch "
                                          f"{state.progress.epoch + 1}")
            continue
        end_epoch(state, val, quiet)
        if not state.more_epochs():
            stack.freeze(index)
    for name in sums:
        sums[name].zero_()


def _save_all(stack: StackedModels, states: list[TrainState], sums: dict[str, torch.Tensor],
              active: list[int]) -> None:
    """A mid-epoch resumable checkpoint of every model still training."""
    _sync_sums(states, sums, active)
    for index in active:
        save_interrupted(states[index])
