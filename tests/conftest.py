"""Shared fixtures: where the real test data is, a decoded cache of our own, small image folders,
and helpers to run the CLI (in-process, or as a real process) and check its user errors.

The real datasets are found through one variable, IMGCLS_TEST_DATA (default: <repo>/../shared/datasets).
CI always has them, so a missing folder fails the tests that need it, with a message saying where it looked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEST_DATA = REPO_ROOT.parent / "shared" / "datasets"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

TINY_TRAIN_PER_CLASS = 20
TINY_TEST_PER_CLASS = 10


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Every test session decodes into its own cache (never ~/.cache) and has no default data folder."""
    patch = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("imgcls-cache")
    patch.setenv("IMGCLS_CACHE", str(cache))
    patch.setenv("IMGCLS_DATA", str(tmp_path_factory.mktemp("imgcls-default-data")))
    patch.setenv("MPLCONFIGDIR", str(tmp_path_factory.mktemp("mplconfig")))
    patch.delenv("FORCE_COLOR", raising=False)
    yield cache
    patch.undo()


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ.get("IMGCLS_TEST_DATA") or DEFAULT_TEST_DATA)
    if not root.is_dir():
        pytest.fail(f"the real test datasets are missing: {root} is not a folder. Set IMGCLS_TEST_DATA to the folder "
                    f"holding MNIST/raw and cifar10-jpeg/{{train,test}} (default: {DEFAULT_TEST_DATA})", pytrace=False)
    return root


def _require(path: Path, what: str) -> Path:
    if not path.is_dir():
        pytest.fail(f"{what} is missing: {path} is not a folder (IMGCLS_TEST_DATA points at {path.parent})",
                    pytrace=False)
    return path


@pytest.fixture(scope="session")
def mnist_root(data_root) -> Path:
    """The data dir to pass for --dataset mnist (torchvision's layout: ROOT/MNIST/raw)."""
    _require(data_root / "MNIST" / "raw", "MNIST")
    return data_root


@pytest.fixture(scope="session")
def cifar_jpeg(data_root) -> Path:
    root = data_root / "cifar10-jpeg"
    _require(root / "train", "cifar10-jpeg/train")
    _require(root / "test", "cifar10-jpeg/test")
    return root


@pytest.fixture(scope="session")
def tiny_cifar_session(cifar_jpeg, tmp_path_factory) -> Path:
    """A small real CIFAR-10 image folder: 20 JPEGs a class for train, 10 for test. Do not modify it."""
    root = tmp_path_factory.mktemp("tiny-cifar")
    for split, count in (("train", TINY_TRAIN_PER_CLASS), ("test", TINY_TEST_PER_CLASS)):
        for class_dir in sorted((cifar_jpeg / split).iterdir()):
            target = root / split / class_dir.name
            target.mkdir(parents=True)
            for source in sorted(class_dir.glob("*.jpg"))[:count]:
                shutil.copy2(source, target / source.name)
    return root


TINY_CIFAR_EPOCHS = 3


def train_tiny_cifar(cli, data_dir, out, *extra, epochs: int = TINY_CIFAR_EPOCHS):
    """`imgcls train` on a tiny CIFAR-10 folder with the settings the tests share: one run on its training part,
    its best validation epoch kept (--no-refit; test_selection.py holds the default's search and refit)."""
    return cli("train", "--dataset", "cifar10", "--data-dir", data_dir, "--epochs", epochs, "--batch-size", 32,
               "--lr", 0.005, "--weight-decay", 0.01, "--no-refit", "--device", "cpu", "--out", out, *extra)


@pytest.fixture(scope="session")
def tiny_cifar_run(cli, tiny_cifar_session, tmp_path_factory):
    """One finished run on the tiny CIFAR folder, (run folder, CLI result), shared by the modules that only read it."""
    out = tmp_path_factory.mktemp("runs") / "cifar"
    result = train_tiny_cifar(cli, tiny_cifar_session, out)
    assert result.exit_code == 0, plain(result.output)
    return out, result


MNIST_EPOCHS = 2


@pytest.fixture(scope="session")
def mnist_run(cli, mnist_root, tmp_path_factory):
    """One finished run on 600 MNIST images, (run folder, CLI result), shared by the modules that only read it."""
    out = tmp_path_factory.mktemp("runs") / "mnist"
    result = cli("train", "--dataset", "mnist", "--data-dir", mnist_root, "--limit", 600, "--epochs", MNIST_EPOCHS,
                 "--momentum", 0.5, "--lr", 0.05, "--weight-decay", 0.01, "--no-refit", "--batch-size", 32, "--seed", 3,
                 "--device", "cpu", "--out", out, "--quiet")
    assert result.exit_code == 0, plain(result.output)
    return out, result


@pytest.fixture
def tiny_cifar(tiny_cifar_session, tmp_path) -> Path:
    """A private copy of the tiny CIFAR folder that a test may change."""
    copy = tmp_path / "tiny-cifar"
    shutil.copytree(tiny_cifar_session, copy)
    return copy


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty decoded cache for this test alone."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("IMGCLS_CACHE", str(cache))
    return cache


def write_image_folder(root: Path, layout: dict[str, dict[str, list[tuple[int, int]]]], seed: int = 0) -> Path:
    """PNG files ROOT/<split>/<class>/NNN.png of random colour pixels; layout: split -> class -> [(h, w), ...].
    A class with an empty list gets an empty folder."""
    import torch
    from torchvision.io import write_png

    generator = torch.Generator().manual_seed(seed)
    for split, classes in layout.items():
        for name, sizes in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, (h, w) in enumerate(sizes):
                image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)
                write_png(image, str(folder / f"{i:03d}.png"))
    return root


@pytest.fixture
def image_folder():
    return write_image_folder


TWO_SHAPES = {"train": {"circle": [(8, 8)] * 6, "square": [(8, 8)] * 6}, "test": {"circle": [(8, 8)] * 2,
                                                                               "square": [(8, 8)] * 2}}


def train_image_folder(cli, root, out, *extra):
    """`imgcls train` on an image folder for one epoch, in batches of 4, on the CPU, on its training part."""
    return cli("train", "--dataset", "imagefolder", "--data-dir", root, "--epochs", 1, "--batch-size", 4,
               "--weight-decay", 0.01, "--no-refit", "--device", "cpu", "--out", out, *extra)


@pytest.fixture(scope="session")
def small_run(cli, tmp_path_factory):
    """A TWO_SHAPES image folder and one finished run on it, (data folder, run folder); tests only read them."""
    root = write_image_folder(tmp_path_factory.mktemp("small") / "data", TWO_SHAPES)
    out = tmp_path_factory.mktemp("runs") / "small"
    result = train_image_folder(cli, root, out, "--quiet")
    assert result.exit_code == 0, plain(result.output)
    return root, out


class RunsCode:
    """Unpickling this creates `marker`: what a malicious pickle could do with any code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plain(text: str) -> str:
    return ANSI.sub("", text)


@pytest.fixture(scope="session")
def cli():
    """cli(*args) runs `imgcls ARGS` in-process and returns typer's Result (stdout and stderr kept apart)."""
    from typer.testing import CliRunner

    from imgcls.cli.app import app

    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def python_env(env: dict | None = None) -> dict:
    """The environment for a child Python: ours, with no colour, the imgcls this process imported first on
    PYTHONPATH (so the child runs the same source), and `env` on top."""
    import imgcls

    package_root = str(Path(imgcls.__file__).resolve().parent.parent)
    path = os.pathsep.join(part for part in (package_root, os.environ.get("PYTHONPATH", "")) if part)
    return {**os.environ, "NO_COLOR": "1", "PYTHONPATH": path, **(env or {})}


def run_python(*args, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python ARGS` (this interpreter, e.g. run_python("-c", CODE, ARG)) to its end; stdout and stderr as text."""
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=python_env(env))


def run_imgcls(*args, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m imgcls ARGS` in a real process, to its end."""
    return run_python("-m", "imgcls", *args, env=env, timeout=timeout)


def start_python(*args, env: dict | None = None, **popen) -> subprocess.Popen:
    """`python ARGS` started and left running (to signal, kill or talk to); stdout and stderr are text pipes
    unless `popen` says otherwise (it takes subprocess.Popen's keywords)."""
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen([sys.executable, *map(str, args)], env=python_env(env), **popen)


def _check_user_error(result, *words: str) -> str:
    """Exit code 2, no traceback, and exactly one 'error:' line (the last thing on stderr) holding every word."""
    output = plain(result.output)
    assert result.exit_code == 2, f"exit code {result.exit_code}, exception {result.exception!r}\n{output}"
    assert isinstance(result.exception, SystemExit), f"an uncaught {result.exception!r} escaped"
    assert "Traceback" not in output
    lines = [line for line in plain(result.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, f"expected one 'error:' line on stderr, got:\n{result.stderr}"
    assert lines[-1] == errors[0], f"the error is not the last line on stderr:\n{result.stderr}"
    for word in words:
        assert word.lower() in errors[0].lower(), f"{word!r} not in {errors[0]!r}"
    return errors[0]


@pytest.fixture(scope="session")
def assert_user_error():
    return _check_user_error


def _check_ok(result) -> None:
    assert result.exit_code == 0, f"exit code {result.exit_code}, exception {result.exception!r}\n{plain(result.output)}"


@pytest.fixture(scope="session")
def assert_ok():
    return _check_ok


def pytest_configure(config):
    # torchvision 0.29 deprecates its image codecs (which imgcls uses) with one warning per image decoded
    config.addinivalue_line("filterwarnings",
                            "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")


def read_run(path: Path) -> tuple[dict, list[dict], dict]:
    """A run folder's config.yaml, epochs.jsonl and metrics.json, read as plainly as a user's script would."""
    import yaml

    epochs = [json.loads(line) for line in (path / "epochs.jsonl").read_text().splitlines()]
    return yaml.safe_load((path / "config.yaml").read_text()), epochs, json.loads((path / "metrics.json").read_text())


@pytest.fixture
def ctrl_c_in_figures(monkeypatch):
    """A Ctrl-C as the figures start to be drawn, with SIGINT raising KeyboardInterrupt as `imgcls` sets it (even
    where a shell's '&' started the tests with it ignored); the list of figure calls that went on past it."""
    from imgcls.report import figures

    went_on = []

    def draw(path):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
        went_on.append(path)
        return []

    monkeypatch.setattr(figures, "write_run_figures", draw)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield went_on
    signal.signal(signal.SIGINT, previous)
