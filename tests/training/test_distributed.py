"""Several processes through torchrun on one machine (gloo on the CPU), against one process."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from conftest import run_python, start_python
from imgcls.runs import checkpoint as ckpt

# About 2500 images: 2227 train (batches of 6 split 3/3, the last one 1 image split 0/1) and 275
# validation images, an odd count, so neither divides evenly between two processes. Small batches
# make each epoch long enough (372 steps) that an interruption after the first lands mid-run.
COMMON = ["--dataset", "mnist", "--limit", "2501", "--val-split", "0.11", "--epochs", "3", "--batch-size", "6",
          "--lr", "0.005", "--momentum", "0.9", "--device", "cpu", "--quiet"]


ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def torchrun(processes: int) -> list:
    """The Python arguments that start torchrun with `processes` workers on this machine (one: no launcher)."""
    return ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] if processes > 1 else []


def run_imgcls_on(processes: int, args: list, timeout: float = 240):
    return run_python(*torchrun(processes), "-m", "imgcls", *args, env=ONE_THREAD, timeout=timeout)


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    first, second = ckpt.load(a), ckpt.load(b)
    assert torch.allclose(first.weight, second.weight, atol=atol, rtol=0), (first.weight - second.weight).abs().max()
    assert torch.allclose(first.bias, second.bias, atol=atol, rtol=0)


def epochs_without_timing(run: Path) -> list[dict]:
    lines = (run / "epochs.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")} for line in lines]


@pytest.fixture(scope="module")
def single_and_double(mnist_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    runs = {}
    for processes in (1, 2):
        out = root / f"p{processes}"
        done = run_imgcls_on(processes, ["train", *COMMON, "--data-dir", mnist_root, "--out", out])
        assert done.returncode == 0, done.stderr[-3000:]
        runs[processes] = (out, done)
    return runs


def test_two_processes_end_with_the_weights_of_one(single_and_double):
    (one, _), (two, _) = single_and_double[1], single_and_double[2]
    assert_same_weights(one / "last.safetensors", two / "last.safetensors", atol=1e-5)
    assert_same_weights(one / "best.safetensors", two / "best.safetensors", atol=1e-5)


def test_two_processes_report_the_metrics_of_one(single_and_double):
    (one, done_one), (two, done_two) = single_and_double[1], single_and_double[2]
    first, second = json.loads(done_one.stdout), json.loads(done_two.stdout)
    assert done_two.stdout.count("\n") == 1, "only the main process prints"
    for split in ("val", "test"):
        assert second[split]["count"] == first[split]["count"]
        assert second[split]["top1"] == first[split]["top1"] and second[split]["top5"] == first[split]["top5"]
        assert second[split]["loss"] == pytest.approx(first[split]["loss"], rel=1e-5)
    assert first["val"]["count"] % 2 == 1
    a, b = epochs_without_timing(one), epochs_without_timing(two)
    assert [e["val_top1"] for e in a] == [e["val_top1"] for e in b]
    assert [e["train_loss"] for e in a] == pytest.approx([e["train_loss"] for e in b], rel=1e-5)


def test_distributed_evaluation_counts_every_image_once(single_and_double):
    """10,000 test images over 3 processes (3333, 3333, 3334): the same counts as one process."""
    one, _ = single_and_double[1]
    single = run_imgcls_on(1, ["eval", one / "best.safetensors", "--device", "cpu", "--json"])
    triple = run_imgcls_on(3, ["eval", one / "best.safetensors", "--device", "cpu", "--json"])
    assert single.returncode == 0 and triple.returncode == 0, triple.stderr[-2000:]
    first, second = json.loads(single.stdout)["test"], json.loads(triple.stdout)["test"]
    assert second["count"] == first["count"] == 10000
    assert second["top1"] == first["top1"] and second["top5"] == first["top5"]
    assert second["loss"] == pytest.approx(first["loss"], rel=1e-6)


def first_epoch(out: Path, process, timeout: float = 120) -> dict:
    """epochs.jsonl's first record, once the running `process` has written it."""
    deadline = time.monotonic() + timeout
    while not ((out / "epochs.jsonl").exists() and (out / "epochs.jsonl").read_text().strip()):
        assert time.monotonic() < deadline and process.poll() is None, "the run never finished its first epoch"
        time.sleep(0.02)
    return json.loads((out / "epochs.jsonl").read_text().splitlines()[0])


def test_two_processes_interrupted_and_resumed_end_as_uninterrupted(single_and_double, mnist_root, tmp_path):
    """Ctrl-C in a terminal signals the whole process group: torchrun and both workers at once."""
    whole, done_whole = single_and_double[2]
    out = tmp_path / "broken"
    process = start_python(*torchrun(2), "-m", "imgcls", "train", *COMMON, "--data-dir", mnist_root, "--out", out,
                           env=ONE_THREAD, start_new_session=True)
    # Half an epoch after the first: a signal that lands while epoch 1's files are written stops the run at that
    # epoch's end (step 0), which would not test a resume from the middle of an epoch
    time.sleep(first_epoch(out, process)["seconds"] / 2)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0, "the interrupted run must exit non-zero"
    assert "--resume" in stderr
    saved = ckpt.load(out / "refit.safetensors")  # cross-validation chose; the refit was under way
    assert saved.meta["step"] > 0 and saved.meta["epoch"] < 3, "interrupted in the middle of an epoch"

    resumed = run_imgcls_on(2, ["train", "--resume", out, "--device", "cpu", "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(whole / "last.safetensors", out / "last.safetensors", atol=1e-5)
    assert json.loads(resumed.stdout)["test"] == json.loads(done_whole.stdout)["test"]
    a, b = epochs_without_timing(whole), epochs_without_timing(out)
    assert [e["val_top1"] for e in a] == [e["val_top1"] for e in b]
    # the interrupted epoch's running loss was summed in another order: equal to float tolerance
    assert [e["train_loss"] for e in a] == pytest.approx([e["train_loss"] for e in b], rel=1e-6)


@pytest.mark.parametrize("world", ["1", "2"])
def test_under_torchrun_the_process_ends_without_finalizing_python(world, tmp_path):
    """Gloo's worker threads can abort a finalizing interpreter; under torchrun (as everywhere) imgcls ends with
    os._exit, after flushing what it printed, and keeps its exit code."""
    code = ("import atexit, sys\natexit.register(lambda: print('finalized'))\n"
            "sys.argv = ['imgcls', *sys.argv[1:]]\nfrom imgcls.cli.app import main\nmain()\n")
    env = {"WORLD_SIZE": world, "RANK": "0"}
    version = run_python("-c", code, "--version", env=env)
    missing = run_python("-c", code, "eval", tmp_path / "none.safetensors", env=env)
    assert version.returncode == 0 and version.stdout.startswith("imgcls")
    assert missing.returncode == 2 and missing.stderr.startswith("error:")
    assert "finalized" not in version.stdout + missing.stdout


@pytest.mark.parametrize("environment, words", [
    ({"WORLD_SIZE": "2"}, ["WORLD_SIZE=2", "not started by torchrun", "unset WORLD_SIZE"]),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"},
     ["not started by torchrun"]),  # would wait for a second process forever
    ({"RANK": "1"}, ["RANK=1", "without WORLD_SIZE", "unset RANK"]),  # would train in silence
    ({"WORLD_SIZE": "two"}, ["whole numbers"]),
])
@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_leftover_distributed_environment_is_one_clear_error(cli, tiny_cifar_run, tmp_path, monkeypatch,
                                                              environment, words, command, assert_user_error):
    for name in ("WORLD_SIZE", "RANK", "TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    out, _ = tiny_cifar_run
    args = (["train", "--dataset", "cifar10-sample", "--epochs", 1, "--out", tmp_path / "run", "--device", "cpu"]
            if command == "train" else ["eval", out, "--device", "cpu"])
    assert_user_error(cli(*args), *words)
    assert not (tmp_path / "run").exists()


# --- the rate search and sweeps: the same engine, the same distributed path ----------------------------------------

SEARCH = ["train", "--dataset", "mnist", "--limit", "6000", "--epochs", "2", "--batch-size", "256", "--device", "cpu",
          "--quiet"]  # no --lr: the default searches it


def chosen_rate(out: Path) -> float:
    import yaml

    return yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"]


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def searched_on_one(mnist_root, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("search") / "one"
    done = run_imgcls_on(1, [*SEARCH, "--data-dir", mnist_root, "--out", out])
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads(done.stdout)


def test_the_default_rate_search_under_torchrun_chooses_what_one_process_chooses(searched_on_one, mnist_root,
                                                                                 tmp_path):
    """--lr auto's stacked search runs in every process on its part of each batch: the rate chosen, and the run
    trained with it, are one process's."""
    one, metrics = searched_on_one
    out = tmp_path / "two"
    done = run_imgcls_on(2, [*SEARCH, "--data-dir", mnist_root, "--out", out])
    assert done.returncode == 0, done.stderr[-3000:]
    assert chosen_rate(out) == chosen_rate(one)
    assert json.loads(done.stdout)["test"]["top1"] == pytest.approx(metrics["test"]["top1"], abs=0.002)
    assert_same_weights(one / "best.safetensors", out / "best.safetensors", atol=1e-5)


def test_two_launchers_as_two_nodes_train_as_one_process(searched_on_one, mnist_root, tmp_path):
    """Two torchrun launchers meeting through c10d on this machine, as two nodes of one process each would."""
    one, metrics = searched_on_one
    out, port = tmp_path / "nodes", free_port()
    launch = ["-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
              "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "imgcls-test"]
    nodes = [start_python(*launch, "-m", "imgcls", *SEARCH, "--data-dir", mnist_root, "--out", out, env=ONE_THREAD)
             for _ in range(2)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    printed = [json.loads(stdout) for stdout, _ in outputs if stdout.strip()]
    assert len(printed) == 1, "only the main process prints"
    assert chosen_rate(out) == chosen_rate(one)
    assert printed[0]["test"]["top1"] == pytest.approx(metrics["test"]["top1"], abs=0.002)


def test_a_sweep_under_torchrun_is_the_sweep_of_one_process(mnist_root, tmp_path):
    grid = ["sweep", "--dataset", "mnist", "--data-dir", mnist_root, "--limit", "3000", "--epochs", "2",
            "--batch-size", "64", "--lr", "0.001,0.01", "--momentum", "0,0.9", "--device", "cpu", "--quiet"]
    results = {}
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        done = run_imgcls_on(processes, [*grid, "--out", out])
        assert done.returncode == 0, done.stderr[-3000:]
        results[processes] = json.loads((out / "sweep.json").read_text())
    assert results[2]["best_point"] == results[1]["best_point"]
    for a, b in zip(results[1]["points"], results[2]["points"]):
        assert (a["val_top1"], a["test_top1"], a["best_epoch"]) == (b["val_top1"], b["test_top1"], b["best_epoch"])
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
        assert_same_weights(tmp_path / "p1" / a["run"] / "best.safetensors", tmp_path / "p2" / b["run"] /
                            "best.safetensors", atol=1e-5)
