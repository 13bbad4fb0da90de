"""The one training loop: epochs of SGD steps for a stack of P models (stacked.py), each a run of its own (`imgcls
train` is P = 1; the search, lr-find and a sweep's groups are P > 1). The stack's state is one file, written after
each epoch and when a signal stops it, so a resume ends bit for bit where an unbroken run ends. Under torchrun the
processes sum their gradients. A model whose loss stops being finite stops alone; a single run ends there.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from imgcls.runs import checkpoint as ckpt
from imgcls import distributed
from imgcls.config import Config
from imgcls.data.registry import SPECS
from imgcls.data.types import PreparedData
from imgcls.errors import UserError
from imgcls.training.interrupt import StopRequest
from imgcls.linear.losses import Loss, class_weights
from imgcls.linear.metrics import Metrics, better, pooled, top_k
from imgcls.linear.model import LinearClassifier
from imgcls.training.resume import check_same_run, data_fingerprint, restore
from imgcls.runs.rundir import RunDir
from imgcls.linear.schedule import Plateau, Schedule
from imgcls.linear.stacked import Hyper, Stack, StepStats


class Diverged(UserError):
    """A single run's loss or weights stopped being finite numbers: its checkpoints would diverge again."""


class Interrupted(Exception):
    """Stopped by Ctrl-C or SIGTERM; the message says what was kept."""


@dataclass
class Progress:
    """Where a model is: everything besides its weights, momentum and schedule that a resumed run needs."""

    epoch: int = 0  # the epoch under way, from 0
    step: int = 0  # the next step of that epoch
    loss_sum: torch.Tensor | None = None  # this epoch's running training loss and accuracy, so a
    weight_sum: torch.Tensor | None = None  # resumed epoch reports exactly what an unbroken one would
    correct: torch.Tensor | None = None
    seen: int = 0  # this epoch's images (this process's part)
    seconds: float = 0.0  # into this epoch
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None  # from 0
    best_val: dict | None = None
    lr_first: float | None = None  # the learning rates this epoch's first and latest updates used
    lr_last: float | None = None

    def totals(self) -> tuple[float, float, int]:
        """This epoch's training loss, top-1 and images so far, summed over all processes."""
        loss_sum, weight_sum, correct = self.loss_sum.clone(), self.weight_sum.clone(), self.correct.clone()
        seen = torch.tensor(self.seen, device=self.correct.device)
        distributed.sum_across(loss_sum, weight_sum, correct, seen)
        return float(loss_sum) / max(float(weight_sum), 1e-12), float(correct) / max(int(seen), 1), int(seen)

    def start_epoch(self, device: torch.device) -> None:
        self.step, self.seen, self.seconds = 0, 0, 0.0
        self.loss_sum = torch.zeros((), device=device)
        self.weight_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)


@dataclass
class Model:
    """One model of the stack, a run of its own: its config, run folder, loss, schedule, and where it is."""

    config: Config
    run: RunDir | None  # None: it keeps no files (the rate search's candidates)
    loss: Loss
    schedule: Schedule
    plateau: Plateau = field(default_factory=Plateau)
    progress: Progress = field(default_factory=Progress)
    diverged: str | None = None  # why, once it has
    sample_mask: torch.Tensor | None = None  # (N,) its weight of each training image: 0 hides one from it
    heldout: torch.Tensor | None = None  # (N,) booleans: the evaluation images that are its (its fold)
    group: int | None = None  # models of one group (the folds of one setting) share the pooled held-out metrics
    last_epoch: int | None = None  # a refit stops after this many epochs, the number its selection chose
    factors: list[float] | None = None  # a refit's rate factor of each epoch (selection.json's), replayed

    def rate(self) -> float:
        """The rate of the update under way: the schedule's times the plateau's factor (a refit's: replayed)."""
        epoch, step = self.progress.epoch, self.progress.step
        factor = self.plateau.factor if self.factors is None else self.factors[min(epoch, len(self.factors) - 1)]
        return self.schedule.rate(epoch * self.schedule.steps_per_epoch + step, factor)

    @property
    def epochs(self) -> int:
        """The most epochs it trains: the config's, or a refit's chosen number (never more: read_choice checks)."""
        return self.last_epoch or self.config.train.epochs

    def more_epochs(self) -> bool:
        return self.diverged is None and self.progress.epoch < self.epochs and not self.finished_early()

    def finished_early(self) -> bool:
        """`patience` epochs in a row without a lower validation loss (the plateau schedule: after its last decay)."""
        if self.config.schedule.schedule == "plateau":
            return self.plateau.exhausted
        patience, progress = self.config.train.patience, self.progress
        return patience is not None and progress.best_epoch is not None and \
            progress.epoch - 1 - progress.best_epoch >= patience


def new_model(config: Config, data: PreparedData, run: RunDir | None, steps_per_epoch: int,
              device: torch.device) -> Model:
    weights = class_weights(config.loss.class_weights, data.train.labels, len(data.classes), device)
    schedule = Schedule(config.schedule, float(config.optim.lr), steps_per_epoch, config.train.epochs)
    model = Model(config, run, Loss(config.loss.loss, weights), schedule)
    model.progress.start_epoch(device)
    return model


class Engine:
    """Trains `models` stacked on the same batches, writing each model's run folder and the stack's state file."""

    def __init__(self, models: list[Model], data: PreparedData, train_batches, val_batches, device: torch.device,
                 state_file: Path | None, stop: StopRequest, view, shard: distributed.Shard = distributed.Shard(),
                 autocast: torch.dtype | None = None):
        self.models, self.data, self.device, self.shard = models, data, device, shard
        self.train_batches, self.val_batches = train_batches, val_batches
        self.state_file, self.stop, self.view, self.autocast = state_file, stop, view, autocast
        starts = []
        for model in models:  # W and b drawn from each run's seed alone, as a run trained alone draws them
            torch.manual_seed(model.config.train.seed)
            starts.append(LinearClassifier(data.shape, len(data.classes), model.config.model.init,
                                           model.config.model.init_std).linear)
        weight, bias = (torch.stack([getattr(start, name).detach() for start in starts]).to(device)
                        for name in ("weight", "bias"))
        hyper = [Hyper(m.config.optim.momentum, m.config.optim.nesterov, m.config.optim.weight_decay) for m in models]
        self.stack = Stack(weight, bias, [model.loss for model in models], hyper)
        self.autograd = any(model.config.train.gradient == "autograd" for model in models) or autocast is not None
        self.writes = shard.is_main  # under torchrun only the main process writes
        self.masks = None if all(m.sample_mask is None for m in models) else torch.stack([
            torch.ones(train_batches.num_images) if m.sample_mask is None else m.sample_mask.float()
            for m in models]).to(device)  # (P, N)
        self.heldout = None if models[0].heldout is None else torch.stack([m.heldout for m in models]).to(device)

    @property
    def single(self) -> bool:
        return len(self.models) == 1

    def active(self) -> list[int]:
        return [index for index, frozen in enumerate(self.stack.frozen) if not frozen]

    def resume(self, source: str = "config.yaml") -> None:
        """Every model where the state file left it, once it is known to be these runs' (configs from `source`)."""
        saved = ckpt.load_stack(self.state_file)
        if len(saved) != len(self.models):
            raise UserError(f"{self.state_file} holds {len(saved)} models where this stack has {len(self.models)}; "
                            f"it is not this run's: start a new one")
        for index, (model, checkpoint) in enumerate(zip(self.models, saved)):
            try:
                check_same_run(checkpoint, model.config, self.data, source)
                model.diverged = restore(checkpoint, self.stack, index, model, self.device, self.shard)
            except UserError as error:
                raise UserError(f"{self.state_file} cannot resume: {error}") from None
            except (KeyError, ValueError, TypeError, IndexError, RuntimeError, AttributeError) as error:
                raise UserError(f"{self.state_file} cannot resume this run ({type(error).__name__}: "
                                f"{str(error)[:200]}); it is damaged: start a new run") from None
            if model.diverged is not None and self.single:
                raise UserError(f"{self.state_file} cannot resume this run: it diverged ({model.diverged[:200]}), and "
                                f"would diverge again: start a new run with a lower --lr")
            if model.diverged is not None:
                self.stack.freeze(index, zero=True)
            elif not model.more_epochs():
                self.stack.freeze(index)
        positions = {(self.models[i].progress.epoch, self.models[i].progress.step) for i in self.active()}
        if len(positions) > 1:
            raise UserError(f"{self.state_file} is damaged: its models are not all at the same step; start anew")

    def start_runs(self) -> None:
        """A fresh run folder for each model that keeps one, with its config.yaml."""
        if self.writes:
            for model in self.models:
                if model.run is not None:
                    model.run.start()
                    model.run.write_config(model.config.to_dict())

    def train(self) -> None:
        """Epochs, each ended by validation, until every model is done; a signal saves the state, then raises
        Interrupted."""
        while self.active():
            lead = self.models[self.active()[0]].progress
            finished = self.train_epoch(lead.epoch, lead.step)
            if finished:
                self.end_epoch()
            else:
                self.save()
            if not finished or (self.active() and distributed.any_process(self.stop.requested, self.device)):
                raise Interrupted(f"interrupted at epoch {lead.epoch + 1}, step {lead.step} of "
                                  f"{len(self.train_batches)}")

    def train_epoch(self, epoch: int, start: int) -> bool:
        """The rest of this epoch's ceil(N/B) steps; False if asked to stop part-way."""
        batches, world = self.train_batches, self.shard.world
        sums = self.running_sums()
        sync_every = 1 if self.device.type == "cpu" else 50  # reading the loss back waits for a GPU: do it rarely
        active = self.active()
        self.view.epoch_start(epoch, len(batches), self.models[active[0]].epochs)
        started = time.perf_counter() - self.models[active[0]].progress.seconds
        shown = 0.0  # when the view was last told: ten times a second is plenty
        for pixels, labels, batch_labels, rows in batches.epoch(epoch, start):
            rates = [model.rate() for model in self.models]
            masks = self.batch_masks(rows, len(batch_labels))
            if len(labels) or world > 1:  # under torchrun every process takes part in each step
                stats = self.step(pixels, labels, batch_labels, rates, masks)
                sums[0].add_(stats.loss_sum)
                sums[1].add_(stats.weight)
                sums[2].add_(stats.correct)
            # else nothing readable in the whole batch (--skip-bad-images): no update, but still a step of the plan
            seconds = time.perf_counter() - started
            seen = [len(labels)] * len(self.models) if masks is None else masks[0].sum(1).round().int().tolist()
            for index in active:
                progress = self.models[index].progress
                if progress.step == 0:  # epochs.jsonl's lr: the epoch's first rate
                    progress.lr_first = rates[index]
                progress.lr_last, progress.seconds = rates[index], seconds
                progress.seen, progress.step = progress.seen + seen[index], progress.step + 1
            step = self.models[active[0]].progress.step
            if step % sync_every == 0 or step == len(batches):
                self.check_finite(sums, active)
                active = self.active()
                if not active:
                    break
                if seconds - shown > 0.1 or step == len(batches):
                    shown = seconds
                    lead = active[0]
                    loss = float(sums[0][lead]) / max(float(sums[1][lead]), 1e-12)
                    seen = self.models[lead].progress.seen * world
                    self.view.step(step, loss, seen / max(seconds, 1e-9), images=seen)
            if distributed.any_process(self.stop.requested, self.device) and step < len(batches):
                self.keep_sums(sums)
                return False
        self.keep_sums(sums)
        return True

    def batch_masks(self, rows: torch.Tensor | None, size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Each model's sample mask at this batch's rows: (P, n) of this process's part, (P, N) of the whole."""
        if self.masks is None:
            return None
        whole = self.masks.index_select(1, rows)
        return whole[:, self.shard.part(size)], whole

    def step(self, pixels: torch.Tensor, labels: torch.Tensor, batch_labels: torch.Tensor, rates: list[float],
             masks: tuple[torch.Tensor, torch.Tensor] | None = None) -> StepStats:
        """One SGD update of every model: this process's part of the gradient, summed over a torchrun world."""
        stack = self.stack
        gradient, stats = (stack.autograd_gradient(pixels, labels, batch_labels, self.autocast, masks)
                           if self.autograd else stack.gradient(pixels, labels, batch_labels, masks))
        if self.shard.world > 1:
            gradient = gradient.products()
            distributed.sum_across(gradient.weight, gradient.bias)
        stack.update(gradient, rates)
        return stats

    def running_sums(self) -> list[torch.Tensor]:
        """This epoch's loss, weight and correct counts of every model as (P,) columns, restored ones included."""
        return [torch.stack([getattr(model.progress, name) for model in self.models]).to(dtype)
                for name, dtype in zip(ckpt.RUNNING_SUMS, (torch.float32, torch.float32, torch.int64))]

    def keep_sums(self, sums: list[torch.Tensor]) -> None:
        for index in self.active():
            for name, column in zip(ckpt.RUNNING_SUMS, sums):
                setattr(self.models[index].progress, name, column[index].clone())

    def check_finite(self, sums: list[torch.Tensor], active: list[int]) -> None:
        """A model whose running loss is no longer finite in any process diverges in every process alike."""
        infinite = (~torch.isfinite(sums[0])).to(torch.int32)
        distributed.sum_across(infinite)
        infinite = infinite.tolist()
        for index in active:
            if infinite[index]:
                progress = self.models[index].progress
                self.diverge(index, f"the loss became {float(sums[0][index])} at epoch {progress.epoch + 1}, step "
                                    f"{progress.step}")
                sums[0][index] = 0.0

    def diverge(self, index: int, why: str) -> None:
        """This model stops, its rows zeroed; its run folder says why. A single run ends here (exit 2)."""
        model = self.models[index]
        self.stack.freeze(index, zero=True)
        kept = model.run is not None and model.run.best.is_file()
        model.diverged = f"{why}: training diverged; " + (
            "lower --lr (the last good checkpoints are kept)" if kept else
            "lower --lr and start again, with --overwrite to reuse --out (no epoch had finished, so no checkpoint "
            "was kept)")
        if model.run is not None and self.writes and (kept or not self.single):  # a run with nothing kept is no run
            model.run.mark_diverged(model.diverged)
        if self.single:
            raise Diverged(model.diverged)

    def end_epoch(self) -> None:
        """Validation of every model at once, each one's epoch recorded and best kept; the state is written last,
        so that a crash here resumes by redoing this epoch's end."""
        active = self.active()
        metrics = [None] * len(self.models) if self.val_batches is None else self.pooled(
            self.stack.evaluate(self.val_batches, self.data.superclass_of, heldout=self.heldout))
        records = {}
        for index in active:
            val = metrics[index]
            if val is not None and not math.isfinite(val.loss):
                progress = self.models[index].progress
                self.diverge(index, f"the validation loss became {val.loss} after epoch {progress.epoch + 1}, step "
                                    f"{progress.step}")
                continue
            records[index] = self.end_model_epoch(index, val)
            if not self.models[index].more_epochs():
                self.stack.freeze(index)
        self.save()
        if self.single and records:
            self.view.epoch_done(*records[0])

    def pooled(self, metrics: list[Metrics]) -> list[Metrics]:
        """Each model's held-out metrics, pooled over its group: the folds of one setting rank and stop as one."""
        for group in {model.group for model in self.models} - {None}:
            members = [index for index, model in enumerate(self.models) if model.group == group]
            together = pooled([metrics[index] for index in members])
            for index in members:
                metrics[index] = together
        return metrics

    def end_model_epoch(self, index: int, val: Metrics | None) -> tuple[dict, bool]:
        """One model's epoch recorded; `val` None: a refit's, with no held-out images (its last epoch is kept)."""
        model = self.models[index]
        progress, run = model.progress, model.run
        train_loss, train_top1, seen = progress.totals()
        record = {"epoch": progress.epoch + 1, "train_loss": train_loss, "train_top1": train_top1}
        if val is not None:
            record.update(val_loss=val.loss, val_top1=val.top1, val_top5=val.top5)
        record.update(lr=progress.lr_first, lr_last=progress.lr_last, seconds=progress.seconds,
                      images_per_s=seen / max(progress.seconds, 1e-9))
        improved = val is None or better(val, progress.best_val)
        progress.history.append(record)
        if improved and val is not None:  # a refit keeps no best: its last epoch is the run's model
            progress.best_epoch, progress.best_val = progress.epoch, val.summary()
        progress.epoch += 1
        progress.start_epoch(self.device)
        if model.factors is None and model.config.schedule.schedule == "plateau":
            model.plateau.epoch_end(improved, model.config.train.patience, model.config.schedule.step_gamma)
        if run is not None and self.writes:
            if improved:
                ckpt.save(run.best, self.checkpoint(index))
            run.write_epochs(progress.history, k=top_k(len(self.data.classes)))
        return record, improved

    def checkpoint(self, index: int, resumable: bool = False) -> ckpt.Checkpoint:
        """Model `index` as a checkpoint usable alone; a resumable one also holds its momentum and progress."""
        model, data, stack = self.models[index], self.data, self.stack
        progress = model.progress
        meta = {"dataset": data.dataset, "classes": data.classes, "input_shape": list(data.shape),
                "superclass_of": data.superclass_of, "config": model.config.to_dict(),
                "seed": model.config.train.seed, "epoch": progress.epoch, "step": progress.step,
                "val": progress.best_val, "data_fingerprint": data_fingerprint(data)}
        if self.val_batches is None:  # a refit: trained on the validation images too (eval says so)
            meta["refit"] = True
        checkpoint = ckpt.Checkpoint(stack.weight[index].clone(), stack.bias[index].clone(),
                                     data.normalization.mean, data.normalization.std, meta)
        if resumable:
            checkpoint.add_resume_state((stack.velocity[index].clone(), stack.bias_velocity[index].clone()),
                                        model.plateau.state(), progress, model.diverged)
        return checkpoint

    def save(self) -> None:
        """The whole stack's resumable state, one file written atomically; the running sums are the world's."""
        for progress in (model.progress for model in self.models):
            seen = torch.tensor(progress.seen, device=self.device)
            distributed.sum_across(progress.loss_sum, progress.weight_sum, progress.correct, seen)
            progress.seen = int(seen)
        if self.state_file is not None and self.writes:
            ckpt.save_stack(self.state_file, [self.checkpoint(index, resumable=True)
                                              for index in range(len(self.models))])
        distributed.barrier()  # the other processes read these files at the end, or when resuming

    def finish(self, test_batches) -> list[tuple[Metrics, Metrics] | None]:
        """Each model's best checkpoint measured on validation and test, and its metrics.json unless it diverged
        (None: no finished epoch)."""
        with_best = [i for i, model in enumerate(self.models) if model.run is not None and model.run.best.is_file()]
        weight, bias = self.stack.weight.clone(), self.stack.bias.clone()
        for index in with_best:
            saved = ckpt.load(self.models[index].run.best)
            weight[index], bias[index] = saved.weight, saved.bias
        val = self.stack.evaluate(self.val_batches, self.data.superclass_of, weight, bias)
        test = self.stack.evaluate(test_batches, self.data.superclass_of, weight, bias)
        results: list[tuple[Metrics, Metrics] | None] = [None] * len(self.models)
        for index in with_best:
            results[index] = (val[index], test[index])
            model = self.models[index]
            if model.diverged is None and self.writes:
                if model.run.last != self.state_file:  # a sweep's point: its final weights, as a run keeps them
                    ckpt.save(model.run.last, self.checkpoint(index))
                write_final_metrics(model.run, self.data, model.progress.best_epoch + 1, val[index].summary(),
                                    test[index])
        return results


def write_final_metrics(run: RunDir, data: PreparedData, best_epoch: int, val: dict, test: Metrics,
                        **more) -> None:
    """metrics.json, which makes a run finished: the chosen epoch's validation summary, the test metrics, `more`."""
    metrics = {"best_epoch": best_epoch, "val": val, "test": test.summary(), "test_detail": test.detail(),
               "classes": data.classes, **more}
    superclasses = SPECS[data.dataset].superclass_names()
    if superclasses:
        metrics["superclasses"] = superclasses
    run.write_metrics(metrics)


class Quiet:
    """A view that shows nothing: the rate search's, or a group of a sweep with a bar of its own."""

    def __init__(self, bar=None):
        self.bar, self.epoch, self.steps, self.epochs = bar, 0, 1, None

    def note(self, text: str) -> None:  # a sweep's --batch-size auto
        pass

    def epoch_start(self, epoch: int, steps: int, epochs: int) -> None:
        self.epoch, self.steps, self.epochs = epoch, steps, epochs

    def step(self, step: int, loss: float, images_per_s: float, images: int | None = None) -> None:
        if self.bar is not None:
            self.bar(self.epoch + step / self.steps, f"epoch {self.epoch + 1}/{self.epochs}")

    def epoch_done(self, record: dict, improved: bool) -> None:
        pass
