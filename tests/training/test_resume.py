"""Nothing is lost: a run stopped by Ctrl-C or SIGTERM at any step, then resumed, ends bit for bit where the
same run uninterrupted ends (weights, epochs.jsonl, metrics.json), and a diverging run stops with the last good
checkpoints whole. The signals are real: os.kill in-process, and SIGTERM to a real `python -m imgcls`."""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import pytest
import torch

from conftest import plain, run_python, start_python
from resuming import BATCH, EPOCHS, LIMIT, STEPS, InterruptAt, assert_same_run, resume, without_timing
from imgcls.runs import checkpoint as ckpt
from imgcls.training.engine import Engine
from imgcls.config import build_config
from imgcls.report.report import Reporter
from imgcls.training.train import Interrupted, train

VARIANTS = {
    "momentum-warmup-cosine": {"momentum": 0.9, "schedule": "cosine", "warmup_epochs": 1.0},
    "plain-sgd-onecycle": {"momentum": 0.0, "schedule": "onecycle"},
    "nesterov-step-balanced": {"momentum": 0.5, "nesterov": True, "schedule": "step", "step_epochs": 1,
                               "step_gamma": 0.5, "class_weights": "balanced", "loss": "nll"},
}


def make_config(mnist_root, out: Path, variant: str):
    flags = {"dataset": "mnist", "data_dir": str(mnist_root), "limit": LIMIT, "epochs": EPOCHS, "batch_size": BATCH,
             "lr": 0.02, "weight_decay": 0.001, "seed": 5, "device": "cpu", "out": str(out), "refit": False,
             **VARIANTS[variant]}
    return build_config(None, flags)


@pytest.fixture(scope="module")
def uninterrupted(mnist_root, tmp_path_factory):
    """One uninterrupted run per variant, made on first use."""
    runs = {}

    def get(variant: str) -> Path:
        if variant not in runs:
            out = tmp_path_factory.mktemp("whole") / variant
            train(make_config(mnist_root, out, variant), Reporter(quiet=True))
            runs[variant] = out
        return runs[variant]

    return get


@pytest.mark.parametrize("variant, epoch, step", [
    ("momentum-warmup-cosine", 0, 1),  # the very first step
    ("momentum-warmup-cosine", 1, 8),  # the middle of an epoch, during the warmup's end
    ("momentum-warmup-cosine", 0, STEPS),  # an epoch's last step: stops at the epoch's end
    ("plain-sgd-onecycle", 1, 3),
    ("plain-sgd-onecycle", 2, STEPS - 1),  # the last epoch's next-to-last step
    ("nesterov-step-balanced", 2, 9),
])
def test_interrupted_at_any_step_and_resumed_ends_bit_identical(uninterrupted, mnist_root, tmp_path, variant, epoch,
                                                                step):
    out = tmp_path / "run"
    with pytest.raises(Interrupted) as stopped, InterruptAt(epoch, step):
        train(make_config(mnist_root, out, variant), Reporter(quiet=True))
    assert stopped.value.run_dir.path == out
    saved = ckpt.load(out / "last.safetensors")
    # a stop during an epoch's last step ends at the epoch's end, whose checkpoint is the one to resume from
    stop_epoch, stop_step = (epoch + 1, 0) if step == STEPS else (epoch, step)
    assert (saved.meta["epoch"], saved.meta["step"]) == (stop_epoch, stop_step)
    assert f"epoch {stop_epoch + 1}, step {stop_step} of {STEPS}" in str(stopped.value)
    assert not (out / "metrics.json").exists()
    assert len(without_timing(out)) == stop_epoch
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))

    result = resume(out)
    assert result.best_epoch == json.loads((uninterrupted(variant) / "metrics.json").read_text())["best_epoch"]
    assert_same_run(uninterrupted(variant), out)


class MisalignedSafetensors:
    """Deserialized checkpoint tensors that live at an offset of 4 bytes past a 64-byte boundary, as
    safetensors' own memory can: BLAS rounds differently with a buffer's alignment on some CPUs, so a
    checkpoint's tensors must never be used where they were read."""

    def __init__(self, monkeypatch):
        import safetensors.torch

        real_load = safetensors.torch.load
        monkeypatch.setattr(safetensors.torch, "load",
                            lambda data: {name: misaligned(t) for name, t in real_load(data).items()})


def misaligned(tensor: torch.Tensor) -> torch.Tensor:
    """The same values at an address 4 bytes (8 for 8-byte numbers) past a multiple of 16."""
    count, offset = tensor.numel() * tensor.element_size(), max(4, tensor.element_size())
    storage = torch.empty(count + 64, dtype=torch.uint8)
    start = (-storage.data_ptr()) % 64 + offset
    view = storage[start:start + count].view(tensor.dtype).view(tensor.shape)
    view.copy_(tensor)
    assert view.data_ptr() % 16 == offset and torch.equal(view, tensor)
    return view


def test_a_checkpoint_read_from_misaligned_memory_resumes_bit_identical(uninterrupted, mnist_root, tmp_path,
                                                                       monkeypatch):
    """The momentum buffer is used in place by SGD: restored into memory of the alignment it had, the resumed
    run ends bit for bit as the uninterrupted one, on any x86 CPU."""
    variant = "momentum-warmup-cosine"
    out = tmp_path / "run"
    with pytest.raises(Interrupted), InterruptAt(1, 8):
        train(make_config(mnist_root, out, variant), Reporter(quiet=True))
    MisalignedSafetensors(monkeypatch)
    loaded = ckpt.load(out / "last.safetensors")
    tensors = [loaded.weight, loaded.bias, loaded.mean, loaded.std, *loaded.state.values()]
    assert "velocity.weight" in loaded.state, "the momentum buffer is in the checkpoint"
    assert all(tensor.data_ptr() % 64 == 0 for tensor in tensors), "a checkpoint's tensors are in fresh memory"
    resume(out)
    monkeypatch.undo()
    assert_same_run(uninterrupted(variant), out)


def test_a_stop_is_obeyed_when_every_epoch_is_one_batch(mnist_root, tmp_path):
    """Gradient descent (--batch-size full): every step is an epoch's last, and the stop still comes, at the end
    of that epoch, and the run resumes to the weights of an uninterrupted one."""
    whole, out = tmp_path / "whole", tmp_path / "run"
    def config(folder: Path):
        return build_config(None, {"dataset": "mnist", "data_dir": str(mnist_root), "limit": LIMIT, "epochs": EPOCHS,
                                   "batch_size": "full", "lr": 0.5, "momentum": 0.9, "seed": 5, "device": "cpu",
                                   "weight_decay": 0.01, "refit": False, "out": str(folder)})

    train(config(whole), Reporter(quiet=True))
    with pytest.raises(Interrupted), InterruptAt(0, 1, signal.SIGTERM):
        train(config(out), Reporter(quiet=True))
    saved = ckpt.load(out / "last.safetensors")
    assert (saved.meta["epoch"], saved.meta["step"]) == (1, 0)
    resume(out)
    assert_same_run(whole, out)


def test_sigterm_and_a_second_interruption_resume_bit_identical(uninterrupted, mnist_root, tmp_path):
    variant = "momentum-warmup-cosine"
    out = tmp_path / "run"
    with pytest.raises(Interrupted), InterruptAt(0, 5, signal.SIGTERM):
        train(make_config(mnist_root, out, variant), Reporter(quiet=True))
    with pytest.raises(Interrupted), InterruptAt(1, 11, signal.SIGTERM, start=(0, 5)):
        resume(out)  # interrupted again, in the resumed run
    assert ckpt.load(out / "last.safetensors").meta["step"] == 11
    resume(out)
    assert_same_run(uninterrupted(variant), out)


def test_signal_handlers_are_restored_after_an_interrupted_run(mnist_root, tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted), InterruptAt(0, 2):
        train(make_config(mnist_root, tmp_path / "run", "plain-sgd-onecycle"), Reporter(quiet=True))
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_second_ctrl_c_stops_at_once_and_the_last_epoch_stays_whole(mnist_root, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt), InterruptAt(1, 6, twice=True):
        train(make_config(mnist_root, out, "plain-sgd-onecycle"), Reporter(quiet=True))
    saved = ckpt.load(out / "last.safetensors")
    assert (saved.meta["epoch"], saved.meta["step"]) == (1, 0), "the checkpoint of the end of epoch 1"
    assert len(without_timing(out)) == 1 and not list(out.glob(".*"))


# --- the CLI: --resume and its errors ---------------------------------------------------------------

def cli_train(cli, mnist_root, out, *extra):
    return cli("train", "--dataset", "mnist", "--data-dir", mnist_root, "--limit", LIMIT, "--epochs", EPOCHS,
               "--batch-size", BATCH, "--lr", 0.02, "--weight-decay", 0.01, "--no-refit", "--seed", 5, "--device", "cpu",
               "--out", out, "--quiet", *extra)


@pytest.fixture
def interrupted_run(mnist_root, tmp_path):
    out = tmp_path / "interrupted"
    with pytest.raises(Interrupted), InterruptAt(1, 4):
        train(make_config(mnist_root, out, "momentum-warmup-cosine"), Reporter(quiet=True))
    return out


def test_cli_resume_continues_and_refuses_a_finished_run(cli, interrupted_run, uninterrupted, assert_ok,
                                                         assert_user_error):
    assert_user_error(cli("train", "--resume", interrupted_run, "--lr", 0.5), "--resume", "--lr", "only --device")
    assert_user_error(cli("train", "--resume", interrupted_run, "--config", interrupted_run / "config.yaml"),
                      "--config")
    result = cli("train", "--resume", interrupted_run, "--device", "cpu", "--quiet")
    assert_ok(result)
    assert Path(json.loads(result.stdout)["run_dir"]) == interrupted_run
    assert_same_run(uninterrupted("momentum-warmup-cosine"), interrupted_run)
    assert_user_error(cli("train", "--resume", interrupted_run), "already finished", "metrics.json")


def test_a_folder_with_an_interrupted_run_is_refused_for_a_new_run(cli, interrupted_run, mnist_root,
                                                                   assert_user_error):
    before = (interrupted_run / "last.safetensors").read_bytes()
    assert_user_error(cli_train(cli, mnist_root, interrupted_run), "already holds a run", "--resume", "--overwrite")
    assert (interrupted_run / "last.safetensors").read_bytes() == before


@pytest.mark.parametrize("damage, words", [
    ("no-folder", ["not a run folder", "config.yaml and last.safetensors"]),
    ("no-last", ["not a run folder"]),
    ("no-config", ["not a run folder"]),
    ("bad-config", ["unknown config key", "optim.lrate"]),
    ("truncated-last", ["last.safetensors", "not a readable imgcls checkpoint"]),
    ("best-as-last", ["cannot resume", "no optimizer state"]),
    ("resume-state-gone", ["last.safetensors", "cannot resume this run"]),
    ("other-data", ["not the data this run was trained on", "--data-dir"]),
    ("no-best", ["best epoch", "best.safetensors", "gone or not a file"]),  # was a TypeError traceback
    ("best-a-folder", ["best epoch", "best.safetensors", "gone or not a file"]),
])
def test_resume_errors(cli, interrupted_run, tmp_path, damage, words, assert_user_error):
    from safetensors import safe_open
    from safetensors.torch import save_file

    run = interrupted_run
    if damage == "no-folder":
        run = tmp_path / "nowhere"
    elif damage == "no-last":
        (run / "last.safetensors").unlink()
    elif damage == "no-config":
        (run / "config.yaml").unlink()
    elif damage in ("no-best", "best-a-folder"):
        (run / "best.safetensors").unlink()
        if damage == "best-a-folder":
            (run / "best.safetensors").mkdir()
    elif damage == "bad-config":
        (run / "config.yaml").write_text("optim:\n  lrate: 0.1\n")
    elif damage == "truncated-last":
        data = (run / "last.safetensors").read_bytes()
        (run / "last.safetensors").write_bytes(data[: len(data) // 3])
    elif damage == "best-as-last":
        (run / "last.safetensors").write_bytes((run / "best.safetensors").read_bytes())
    elif damage in ("resume-state-gone", "other-data"):
        with safe_open(str(run / "last.safetensors"), "pt") as f:
            metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(metadata["meta"])
        if damage == "resume-state-gone":
            meta["resume"] = {"history": []}
            tensors = {k: v for k, v in tensors.items() if not k.startswith("state.")}
        else:  # a checkpoint of images of another size, put where the run's own was
            meta["input_shape"] = [1, 14, 14]
            tensors["weight"] = tensors["weight"].reshape(10, 4, 196)[:, 0].contiguous()
            tensors["norm.mean"] = torch.zeros(1, 14, 14)
            tensors["norm.std"] = torch.ones(1, 14, 14)
        save_file(tensors, str(run / "last.safetensors"), metadata={**metadata, "meta": json.dumps(meta)})
    assert_user_error(cli("train", "--resume", run, "--device", "cpu"), *words)
    assert not (interrupted_run / "metrics.json").exists()


# --- a diverging run ----------------------------------------------------------------------------------

def test_a_loss_that_becomes_infinite_stops_at_its_step_and_keeps_nothing_bad(cli, mnist_root, tmp_path,
                                                                              assert_user_error):
    out = tmp_path / "run"
    error = assert_user_error(cli_train(cli, mnist_root, out, "--lr", "1e30", "--momentum", 0), "the loss became",
                              "epoch 1, step", "lower --lr")
    assert "step 1:" not in error  # the first step's loss is measured before any update: it is finite
    assert not (out / "best.safetensors").exists() and not (out / "metrics.json").exists()
    assert not list(out.glob(".*.tmp"))


def test_divergence_after_good_epochs_keeps_their_checkpoints(cli, mnist_root, tmp_path, assert_user_error):
    """Gradient descent (one step an epoch) with a rate just too high: the error grows for a few epochs, then
    overflows. The checkpoints of the last good epoch stay whole and usable."""
    out = tmp_path / "run"
    error = assert_user_error(
        cli("train", "--dataset", "mnist", "--data-dir", mnist_root, "--limit", LIMIT, "--epochs", 40,
            "--batch-size", "full", "--loss", "mse", "--schedule", "constant", "--momentum", 0, "--weight-decay", 0,
            "--lr", 8, "--patience", "none", "--no-refit", "--device", "cpu", "--out", out, "--quiet"),
        "loss became", "step 1", "lower --lr")
    failed_epoch = int(error.split("epoch ")[1].split(",")[0])
    assert failed_epoch > 2, error
    epochs = without_timing(out)
    assert len(epochs) == failed_epoch - 1
    assert all(map(lambda e: all(isinstance(v, (int, float)) and v == v for v in e.values()), epochs))
    last, best = ckpt.load(out / "last.safetensors"), ckpt.load(out / "best.safetensors")  # finite, or load refuses
    assert last.meta["epoch"] == failed_epoch - 1 and 1 <= best.meta["epoch"] <= failed_epoch - 1
    assert not (out / "metrics.json").exists()
    assert cli("eval", out / "best.safetensors", "--device", "cpu", "--json").exit_code == 0


# --- a real process, a real SIGTERM -------------------------------------------------------------------

def test_sigterm_to_a_real_process_then_resume(cli, mnist_root, tmp_path, assert_ok):
    """SIGTERM once the first epoch is written: exit 130 with the command to resume; the resumed run ends with
    the weights of the same run uninterrupted."""
    flags = {"dataset": "mnist", "data_dir": str(mnist_root), "limit": 1000, "epochs": 5, "batch_size": 1,
             "lr": 0.002, "weight_decay": 0.01, "momentum": 0.5, "seed": 2, "device": "cpu",
             "refit": False}  # 900 steps an epoch: about 0.4 s
    args = [str(part) for name, value in flags.items() if name != "refit"
            for part in (f"--{name.replace('_', '-')}", value)] + ["--no-refit"]
    out = tmp_path / "killed"
    process = start_python("-m", "imgcls", "train", *args, "--out", out)
    deadline = time.monotonic() + 120
    while not (out / "epochs.jsonl").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert f"imgcls train --resume {out}" in plain(stderr).replace("\n", " ")
    saved = ckpt.load(out / "last.safetensors")
    # mid-epoch, or at the end of epoch 1 if the signal came while that epoch's files were being written
    assert (1, 0) <= (saved.meta["epoch"], saved.meta["step"]) < (5, 0), "stopped before the run's end"

    assert_ok(cli("train", "--resume", out, "--quiet"))
    whole = tmp_path / "whole"
    train(build_config(None, {**flags, "out": str(whole)}), Reporter(quiet=True))
    assert_same_run(whole, out)


def rewrite_last(run: Path, meta_change=None, tensor_change=None) -> None:
    """Write the run's last.safetensors again with its metadata and tensors changed, as a crafted file would be."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(run / "last.safetensors"), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(metadata["meta"])
    if meta_change:
        meta_change(meta)
    if tensor_change:
        tensor_change(tensors)
    save_file(tensors, str(run / "last.safetensors"), metadata={**metadata, "meta": json.dumps(meta)})


def set_in(mapping: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for key in parents:
        mapping = mapping[int(key)] if isinstance(mapping, list) else mapping[key]
    mapping[last] = value


@pytest.mark.parametrize("meta_path, value, tensor, words", [
    (None, None, ("state.velocity.weight", torch.zeros(3)), ["momentum buffer"]),
    (None, None, ("state.velocity.bias", torch.full((10,), float("nan"))), ["momentum buffer"]),
    (None, None, ("state.loss_sum", torch.zeros(3)), ["running loss"]),
    ("resume.schedule", {"junk": 1}, None, ["schedule state"]),
    ("resume.schedule.factor", -1.0, None, ["schedule state"]),
    ("resume.schedule.decayed", 7, None, ["schedule state"]),
    ("resume.diverged", 12, None, ["divergence note"]),
    ("resume.diverged", "the loss became nan", None, ["diverged", "lower --lr"]),
    ("resume.best_val", {"top1": None, "loss": None}, None, ["progress record"]),
    ("resume.best_val", {"top1": "high", "loss": 1.0}, None, ["progress record"]),
    ("resume.seen", 10 ** 30, None, ["progress record"]),
    ("step", 10 ** 9, None, ["step count"]),
    ("resume.lr_first", "fast", None, ["progress record"]),
])
def test_a_crafted_resume_state_is_refused_before_training(cli, interrupted_run, meta_path, value, tensor, words,
                                                          assert_user_error):
    rewrite_last(interrupted_run, meta_path and (lambda meta: set_in(meta, meta_path, value)),
                 tensor and (lambda tensors: tensors.update([tensor])))
    before = (interrupted_run / "last.safetensors").read_bytes()
    assert_user_error(cli("train", "--resume", interrupted_run, "--device", "cpu"), "last.safetensors",
                      "cannot resume this run", *words)
    assert (interrupted_run / "last.safetensors").read_bytes() == before
    assert not (interrupted_run / "metrics.json").exists()


@pytest.mark.parametrize("key, value, words", [
    ("epochs", 6, ["train.epochs is 6 in config.yaml but 3 in the checkpoint"]),
    ("limit", 500, ["data.limit is 500"]),
    ("lr", 0.5, ["optim.lr"]),
])
def test_an_edited_config_yaml_is_refused_on_resume(cli, interrupted_run, key, value, words, assert_user_error):
    import yaml

    config = yaml.safe_load((interrupted_run / "config.yaml").read_text())
    section = next(name for name, values in config.items() if key in values)
    config[section][key] = value
    (interrupted_run / "config.yaml").write_text(yaml.safe_dump(config))
    assert_user_error(cli("train", "--resume", interrupted_run, "--device", "cpu"), "no longer matches", *words,
                      "put config.yaml back")


def test_resume_refuses_changed_data_and_follows_moved_data(cli, image_folder, tmp_path, assert_user_error,
                                                           assert_ok):
    """Added images are other data; the same files in another folder are the same data, found with --data-dir."""
    import shutil

    root = image_folder(tmp_path / "data", {split: {name: [(8, 8)] * count for name in ("a", "b", "c")}
                                            for split, count in (("train", 12), ("test", 4))})
    flags = {"dataset": "imagefolder", "data_dir": str(root), "epochs": 2, "batch_size": 4, "lr": 0.05,
             "weight_decay": 0.01, "momentum": 0.9, "seed": 3, "device": "cpu", "refit": False}
    train(build_config(None, {**flags, "out": str(tmp_path / "whole")}), Reporter(quiet=True))
    out = tmp_path / "run"
    with pytest.raises(Interrupted), InterruptAt(0, 3):
        train(build_config(None, {**flags, "out": str(out)}), Reporter(quiet=True))

    extra = root / "train" / "a" / "999.png"
    shutil.copy(root / "train" / "b" / "000.png", extra)
    assert_user_error(cli("train", "--resume", out, "--device", "cpu"), "not the data this run was trained on")
    extra.unlink()
    moved = shutil.move(root, tmp_path / "moved")
    assert_ok(cli("train", "--resume", out, "--data-dir", moved, "--device", "cpu", "--quiet"))
    assert_same_run(tmp_path / "whole", out)


def test_each_epoch_records_the_rates_its_first_and_last_updates_used(uninterrupted):
    """Warmup over the first epoch, then cosine to 0 over the other two (17 updates an epoch, 51 in all):
    the rates by the schedule's formulas, not by the scheduler that made them."""
    records = [json.loads(line) for line in (uninterrupted("momentum-warmup-cosine") / "epochs.jsonl").read_text()
               .splitlines()]
    warmup, cosine = STEPS, 2 * STEPS
    ramp = lambda update: 0.02 * (1 / warmup + (1 - 1 / warmup) * update / warmup)  # noqa: E731
    anneal = lambda update: 0.02 * (1 + math.cos(math.pi * (update - warmup) / cosine)) / 2  # noqa: E731
    expected = [(ramp(0), ramp(STEPS - 1)), (anneal(STEPS), anneal(2 * STEPS - 1)),
                (anneal(2 * STEPS), anneal(3 * STEPS - 1))]
    got = [(record["lr"], record["lr_last"]) for record in records]
    assert sum(got, ()) == pytest.approx(sum(expected, ()), rel=1e-6)
    assert records[-1]["lr_last"] > 0, "the last epoch's updates do not run at a rate of 0"

    step_records = [json.loads(line) for line in (uninterrupted("nesterov-step-balanced") / "epochs.jsonl")
                    .read_text().splitlines()]
    assert [rate for r in step_records for rate in (r["lr"], r["lr_last"])] == pytest.approx([0.02, 0.02, 0.01, 0.01,
                                                                                             0.005, 0.005])


# --- the resumable checkpoint's format (checkpoint.py owns it) ----------------------------------------------------

def test_a_run_of_an_older_imgcls_without_a_thread_count_resumes_on_torchs_default(interrupted_run, uninterrupted,
                                                                                   monkeypatch):
    """Before the count was chosen per run, config.yaml and the checkpoint recorded threads: null (torch's default,
    every core): such a run resumes on that default, and is not refused as an edited config.yaml."""
    import yaml

    config = yaml.safe_load((interrupted_run / "config.yaml").read_text())
    config["train"]["threads"] = None
    (interrupted_run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rewrite_last(interrupted_run, meta_change=lambda meta: set_in(meta, "config.train.threads", None))
    seen, step = [], Engine.step
    monkeypatch.setattr(Engine, "step", lambda *a, **k: seen.append(torch.get_num_threads()) or
                        step(*a, **k))
    resume(interrupted_run)
    assert seen and set(seen) == {torch.get_num_threads()}
    assert yaml.safe_load((interrupted_run / "config.yaml").read_text())["train"]["threads"] is None
    assert json.loads((interrupted_run / "metrics.json").read_text())["best_epoch"] >= 1


def test_a_resumable_checkpoint_keeps_format_2s_layout(interrupted_run):
    """The tensors' names and the metadata's keys of a resumable checkpoint (format 2), in their order; best.safetensors
    holds the model alone, in format 1, which every imgcls reads."""
    from safetensors import safe_open

    with safe_open(str(interrupted_run / "last.safetensors"), "pt") as f:
        names, metadata = set(f.keys()), f.metadata()
    assert names == {"weight", "bias", "norm.mean", "norm.std", "state.loss_sum", "state.weight_sum", "state.correct",
                     "state.velocity.weight", "state.velocity.bias"}
    assert metadata["imgcls_format"] == "2"
    meta = json.loads(metadata["meta"])
    assert list(meta) == ["dataset", "classes", "input_shape", "superclass_of", "config", "seed", "epoch", "step",
                          "val", "data_fingerprint", "resume"]
    assert list(meta["resume"]) == ["schedule", "seen", "seconds", "history", "best_epoch", "best_val", "lr_first",
                                    "diverged"]
    assert (meta["epoch"], meta["step"]) == (1, 4)
    with safe_open(str(interrupted_run / "best.safetensors"), "pt") as f:
        assert set(f.keys()) == {"weight", "bias", "norm.mean", "norm.std"}
        assert "resume" not in json.loads(f.metadata()["meta"]) and f.metadata()["imgcls_format"] == "1"


def test_resume_state_reads_back_what_the_run_saved(interrupted_run):
    from safetensors import safe_open

    with safe_open(str(interrupted_run / "last.safetensors"), "pt") as f:
        raw, tensors = json.loads(f.metadata()["meta"]), {name: f.get_tensor(name) for name in f.keys()}
    saved = ckpt.load(interrupted_run / "last.safetensors")
    assert saved.resumable and not ckpt.load(interrupted_run).resumable
    state = saved.resume_state()
    assert state.schedule == raw["resume"]["schedule"] and state.diverged is None
    assert all(torch.equal(a, tensors[f"state.{name}"]) for a, name in zip(state.velocities, ckpt.VELOCITIES))
    assert all(torch.equal(a, tensors[f"state.{name}"]) for a, name in zip(state.sums, ckpt.RUNNING_SUMS))
    assert state.progress == {**{key: raw["resume"][key] for key in ckpt.SAVED_PROGRESS}, "epoch": 1, "step": 4}
    assert state.progress["seen"] == 4 * BATCH and state.progress["lr_first"] > 0


def test_a_resumable_checkpoint_of_an_older_imgcls_is_refused_in_one_line(cli, interrupted_run, assert_user_error):
    """Format 1's resume state was torch.optim's: this imgcls says so, and that best.safetensors is usable."""
    def older(meta):
        resume = meta["resume"]
        meta["resume"] = {"scheduler": {"last_epoch": 21}, "param_groups": [], **{k: resume[k] for k in
                                                                                 ckpt.SAVED_PROGRESS}}

    rewrite_last(interrupted_run, older)
    assert_user_error(cli("train", "--resume", interrupted_run, "--device", "cpu"), "last.safetensors",
                      "older imgcls", "best.safetensors is usable")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_command_starts_ends_it_with_one_message(signum, mnist_root, tmp_path):
    """While Python, the command line and torch load (the first seconds), a Ctrl-C or SIGTERM is never lost and
    never a traceback: exit 130 and a line saying so, and no half-written run."""
    for delay in (0.1, 0.3, 0.5, 0.7, 1.0, 1.6):  # the interpreter, the command line, torch, the data
        out = tmp_path / f"run{delay}"
        process = start_python("-m", "imgcls", "train", "--dataset", "mnist", "--data-dir", mnist_root, "--limit",
                               3000, "--epochs", 3, "--batch-size", 1, "--lr", 0.01, "--weight-decay", 0.01,
                               "--no-refit", "--device", "cpu", "--out", out)
        time.sleep(delay)  # online SGD: 8,100 steps, still training at the last of these moments
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 130, (delay, process.returncode, stderr[-2000:])
        assert "Traceback" not in stderr and "interrupted" in plain(stderr), (delay, stderr[-2000:])
        assert not (out / "metrics.json").exists()


OTHER_THREAD_SIGNAL = ("import signal, threading\ndef other():\n    signal.pthread_sigmask(signal.SIG_UNBLOCK, "
                       "{signal.SIGINT})\n    signal.pthread_kill(threading.get_ident(), signal.SIGINT)\n"
                       "thread = threading.Thread(target=other)\nthread.start()\nthread.join()\n")


@pytest.mark.parametrize("held", [True, False])
@pytest.mark.parametrize("sender", ["process", "other thread"])
def test_a_signal_during_a_held_import_arrives_once_the_module_has_run(tmp_path, held, sender):
    """torch's C start-up swallows an interrupt inside numpy's import, and one inside a class body of torchvision's
    is a RuntimeError: `imgcls` holds signals while they import, so a Ctrl-C arrives after the module has run to
    its end, as a KeyboardInterrupt (without: in the middle); also when another thread (torch's) takes it. In a
    fresh process: a signal to the process may go to any thread that does not hold it."""
    send = "import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n" if sender == "process" else OTHER_THREAD_SIGNAL
    ended = tmp_path / "ended"  # written by the module's last line
    (tmp_path / "slowmodule.py").write_text(send + f"import time\ntime.sleep(0.2)\nopen({str(ended)!r}, 'w')\n")
    code = ("import signal, sys\nfrom imgcls.__main__ import HeldSignals\n"
            f"sys.path.insert(0, {str(tmp_path)!r})\n"
            f"if {held}:\n    sys.meta_path.insert(0, HeldSignals(('slowmodule',)))\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\ntry:\n    import slowmodule\n"
            "except KeyboardInterrupt:\n    print('interrupted')\n")
    done = run_python("-c", code)
    assert done.returncode == 0 and done.stdout.split() == ["interrupted"], done.stdout + done.stderr
    assert ended.exists() == held, "held: raised after the module's last line, not inside it"


def test_a_ctrl_c_while_the_figures_are_drawn_stops_them_at_once(cli, mnist_root, tmp_path, ctrl_c_in_figures):
    """Once training has ended its signal rule has too: a Ctrl-C stops the figures where they are (each file is
    written whole or not at all), not after all of them, and the line says what the finished run lacks."""
    result = cli_train(cli, mnist_root, tmp_path / "run")
    assert result.exit_code == 130 and not ctrl_c_in_figures, result.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert "the run is finished" in plain(result.stderr) and "--html" in plain(result.stderr)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_after_the_last_epoch_leaves_a_finished_run_and_says_how_to_draw_it(signum, mnist_root, tmp_path):
    """The first Ctrl-C or SIGTERM during the final test evaluation or the figures: the evaluation finishes
    (metrics.json), the figures wait for `imgcls report`, exit 130 with that said."""
    out = tmp_path / "run"
    process = start_python("-m", "imgcls", "train", "--dataset", "mnist", "--data-dir", mnist_root, "--limit", 3000,
                           "--epochs", 1, "--lr", 0.01, "--weight-decay", 0.01, "--no-refit", "--device", "cpu",
                           "--out", out)
    lines = []
    for line in process.stderr:
        lines.append(line)
        if plain(line).startswith("epoch   1"):
            process.send_signal(signum)
            break
    rest = process.stderr.read()
    process.wait(timeout=120)
    text = plain("".join(lines) + rest)
    assert process.returncode == 130 and "Traceback" not in text, text[-2000:]
    assert (out / "metrics.json").is_file() and f"imgcls report {out}" in " ".join(text.split())
