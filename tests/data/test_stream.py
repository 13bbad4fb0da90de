"""The streaming path (--stream): pixels stay in their files and are decoded batch by batch."""

from __future__ import annotations

import json

import multiprocessing
import os
import re
import signal
import subprocess
import time

import torch

from conftest import start_python
from imgcls.runs import checkpoint as ckpt
from imgcls.data.batches import Batches
from imgcls.data.decode import decode_image_bytes, ignore_stop_signals, stop_signals_blocked
from imgcls.data.stream import StreamedImages, StreamingBatches
from imgcls.data.types import ImageList, LabelledImages, Normalization
from imgcls.distributed import Shard


def train_args(root, out, *extra):
    return ("train", "--dataset", "cifar10", "--data-dir", root, "--epochs", 2, "--batch-size", 16, "--device", "cpu",
            "--out", out, "--quiet", *extra)


def test_streaming_trains_to_the_same_weights_and_metrics(cli, tiny_cifar_session, tmp_path, assert_ok):
    assert_ok(cli(*train_args(tiny_cifar_session, tmp_path / "memory")))
    assert_ok(cli(*train_args(tiny_cifar_session, tmp_path / "stream", "--stream")))
    memory, stream = (ckpt.load(tmp_path / name / "last.safetensors") for name in ("memory", "stream"))
    assert torch.allclose(memory.weight, stream.weight, atol=1e-6)
    assert torch.allclose(memory.mean, stream.mean) and torch.allclose(memory.std, stream.std)
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("memory", "stream")]
    for each in metrics:
        each.pop("seconds", None)  # the phases' wall times
    assert metrics[0] == metrics[1]


def test_make_batches_batches_each_split_the_way_prepare_chose(tmp_path, fresh_cache):
    """One call for both: in memory unless prepare left the pixels in their files, and the same batches either way."""
    from conftest import write_image_folder
    from imgcls.config import DataConfig
    from imgcls.data.batches import make_batches, make_eval_batches
    from imgcls.data.prepare import prepare

    root = write_image_folder(tmp_path / "data", {"train": {"a": [(8, 8)] * 6, "b": [(8, 8)] * 6},
                                                  "test": {"a": [(8, 8)] * 3, "b": [(8, 8)] * 2}})
    memory, streamed = (prepare(DataConfig(dataset="imagefolder", data_dir=str(root), stream=stream), seed=2)
                        for stream in (False, True))
    cpu = torch.device("cpu")
    for split in ("train", "val", "test"):
        held, decoded = (make_batches(data, split, 4, cpu, seed=7) for data in (memory, streamed))
        assert type(held) is Batches and type(decoded) is StreamingBatches
        assert (len(held), held.num_images) == (len(decoded), decoded.num_images)
        for a, b in zip(held.epoch(1), decoded.epoch(1), strict=True):
            assert torch.equal(a.pixels, b.pixels) and torch.equal(a.batch_labels, b.batch_labels)
    held, decoded = (make_eval_batches(data, "test", cpu) for data in (memory, streamed))
    (a,), (b,) = list(held.epoch()), list(decoded.epoch())
    assert torch.equal(a.pixels, b.pixels) and a.labels.tolist() == [0, 0, 0, 1, 1]


def recording_listing(files):
    """An ImageList over real JPEGs that remembers which ones were read."""
    read = []

    def reader(i):
        read.append(i)
        return files[i].read_bytes()

    return ImageList([str(f) for f in files], reader, [i % 10 for i in range(len(files))], [str(i) for i in range(10)]), read


def test_each_process_reads_only_its_part_of_each_global_batch(tiny_cifar_session):
    files = sorted((tiny_cifar_session / "train").rglob("*.jpg"))[:50]
    normalization = Normalization(torch.zeros(3, 32, 32), torch.ones(3, 32, 32))
    parts, reads = [], []
    for rank in range(2):
        listing, read = recording_listing(files)
        images = StreamedImages(listing, torch.arange(len(files)), None, 3)
        batches = StreamingBatches(images, normalization, 8, torch.device("cpu"), seed=5, shard=Shard(rank, 2),
                                   workers=0)
        parts.append(list(batches.epoch(1)))
        reads.append(read)
    assert set(reads[0]).isdisjoint(reads[1]) and sorted(reads[0] + reads[1]) == list(range(len(files)))
    # the two parts of each step make up the same global batch, in the same order, as one process sees
    whole = list(StreamingBatches(StreamedImages(recording_listing(files)[0], torch.arange(len(files)), None, 3),
                                  normalization, 8, torch.device("cpu"), seed=5, workers=0).epoch(1))
    assert len(parts[0]) == len(parts[1]) == len(whole) == 7
    for first, second, both in zip(parts[0], parts[1], whole):
        assert torch.equal(torch.cat([first.pixels, second.pixels]), both.pixels)
        assert torch.equal(first.batch_labels, both.batch_labels)


def test_worker_processes_decode_what_memory_holds(tiny_cifar_session):
    files = sorted((tiny_cifar_session / "test").rglob("*.jpg"))[:40]
    listing, _ = recording_listing(files)
    decoded = torch.stack([decode_image_bytes(f.read_bytes(), None) for f in files])
    normalization = Normalization(torch.full((3, 32, 32), 0.5), torch.full((3, 32, 32), 0.25))
    memory = Batches(LabelledImages(decoded, torch.tensor(listing.labels)), normalization, 16, torch.device("cpu"))
    stream = StreamingBatches(StreamedImages(listing, torch.arange(len(files)), None, 3), normalization, 16,
                              torch.device("cpu"), workers=2)
    for a, b in zip(memory.epoch(3), stream.epoch(3, start_step=0)):
        assert torch.equal(a.pixels, b.pixels) and torch.equal(a.labels, b.labels)
    resumed = list(stream.epoch(3, start_step=2))
    assert len(resumed) == 1 and torch.equal(resumed[0].pixels, list(memory.epoch(3))[2].pixels)


def test_stream_on_an_array_dataset_is_a_user_error(cli, mnist_root, tmp_path, assert_user_error):
    result = cli("train", "--dataset", "mnist", "--data-dir", mnist_root, "--stream", "--out", tmp_path / "r")
    assert_user_error(result, "--stream", "arrays")


def test_a_damaged_image_met_while_streaming_is_named(cli, tiny_cifar, tmp_path, assert_user_error):
    victim = sorted((tiny_cifar / "train" / "cat").glob("*.jpg"))[3]
    victim.write_bytes(victim.read_bytes()[:40])
    # met first by the sample that fits the normalization (the tiny folder is all sample): named either way
    result = cli(*train_args(tiny_cifar, tmp_path / "r", "--stream"))
    assert_user_error(result, victim.name)


def small_folder(image_folder, root, test_size=(8, 8)):
    return image_folder(root, {"train": {"ant": [(8, 8)] * 6, "bee": [(8, 8)] * 6},
                               "test": {"ant": [test_size] * 2, "bee": [test_size] * 2}})


def small_args(root, out, *extra):
    return ("train", "--dataset", "imagefolder", "--data-dir", root, "--epochs", 2, "--batch-size", 4, "--device",
            "cpu", "--out", out, "--quiet", "--stream", *extra)


def test_test_images_of_another_size_are_refused_before_training(cli, image_folder, tmp_path, assert_user_error):
    root = small_folder(image_folder, tmp_path / "data", test_size=(10, 12))
    assert_user_error(cli(*small_args(root, tmp_path / "run")), "8 wide, 8 high", "12 wide, 10 high", "--image-size")
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_skip_bad_images_survives_a_batch_with_nothing_readable(cli, image_folder, tmp_path, assert_ok):
    root = small_folder(image_folder, tmp_path / "data")
    rate = ("--lr", 0.05, "--schedule", "cosine")  # a rate that moves at every step of the plan
    assert_ok(cli(*small_args(root, tmp_path / "whole", "--skip-bad-images", "--batch-size", 1, "--epochs", 1, *rate)))
    for name in ("000.png", "001.png"):  # one of them at least in the training part, alone in its batch
        (root / "train" / "ant" / name).write_bytes(b"\x89PNG\r\n\x1a\n damaged")
    assert_ok(cli(*small_args(root, tmp_path / "run", "--skip-bad-images", "--batch-size", 1, "--epochs", 1, *rate)))
    saved, whole = (ckpt.load(tmp_path / run / "last.safetensors") for run in ("run", "whole"))
    assert saved.meta["epoch"] == 1
    # an unreadable batch is still a step of the epoch's plan: the schedule moved as far as in the undamaged run,
    # so the checkpoint agrees with its own step count and can resume
    assert saved.meta["resume"]["history"][-1]["lr_last"] == whole.meta["resume"]["history"][-1]["lr_last"]


def test_a_damaged_test_image_gets_a_short_clean_reason_before_training(cli, tiny_cifar, tmp_path,
                                                                        assert_user_error):
    victim = sorted((tiny_cifar / "test" / "cat").glob("*.jpg"))[2]
    victim.write_bytes(victim.read_bytes()[:300])
    error = assert_user_error(cli(*train_args(tiny_cifar, tmp_path / "r", "--stream")), victim.name, "truncated")
    assert ".cpp" not in error and "/__w/" not in error
    assert not (tmp_path / "r").exists()


def _late_worker(context):
    """A worker forked, then busy (importing, seeding) for a moment before it ignores the stop signals."""
    forked = context.Event()

    def work():
        forked.set()
        time.sleep(0.5)
        ignore_stop_signals()
        time.sleep(0.1)

    return context.Process(target=work), forked


def test_a_worker_started_with_stop_signals_blocked_survives_a_sigterm_before_it_ignores_it():
    context = multiprocessing.get_context("fork")
    exit_codes = []
    for blocked in (True, False):
        worker, forked = _late_worker(context)
        if blocked:
            with stop_signals_blocked():
                worker.start()
        else:
            worker.start()
        assert forked.wait(30)
        os.kill(worker.pid, signal.SIGTERM)  # the group's SIGTERM, in the moment before the worker's own handler
        worker.join(30)
        exit_codes.append(worker.exitcode)
    assert exit_codes == [0, -signal.SIGTERM]  # blocked: held, then dropped as ignored; not blocked: killed


def test_sigterm_to_the_whole_process_group_checkpoints_a_streaming_run(tiny_cifar_session, tmp_path):
    """What a scheduler or systemd does: SIGTERM to every process of the job, the DataLoader workers too."""
    out = tmp_path / "run"
    process = start_python("-m", "imgcls", "train", *train_args(tiny_cifar_session, out, "--stream")[1:],
                           "--epochs", "1000", "--batch-size", "1", "--limit", "24", "--lr", "0.01",
                           "--weight-decay", "0.01", "--no-refit",
                           stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (out / "last.safetensors").exists():  # an epoch done: the next one's workers are running
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read() if \
                process.poll() is not None else "no epoch finished in 180 s"
            time.sleep(0.2)
        time.sleep(0.5)
        os.killpg(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    assert "exited unexpectedly" not in stderr and "Traceback" not in stderr
    assert "interrupted at epoch" in stderr
    saved = ckpt.load(out / "last.safetensors")
    # the checkpoint of where the run stopped: mid-epoch, or an epoch's end if the signal came in its last step
    epoch, step = map(int, re.search(r"interrupted at epoch (\d+), step (\d+)", stderr).groups())
    assert saved.meta["epoch"] >= 1 and (saved.meta["epoch"], saved.meta["step"]) == (epoch - 1, step)
