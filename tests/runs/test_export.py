"""`imgcls export`: the ONNX and TorchScript files take raw uint8 pixels and give imgcls's own scores (run by
onnxruntime and torch.jit.load, not by imgcls); the npz arrays give them through the lecture's formula in numpy."""

import json
import os

import numpy as np
import pytest
import torch

from conftest import plain
from imgcls.runs import checkpoint as ckpt
from imgcls.data.readers import read_image_file
from imgcls.runs.predict import normalized, predict, prepare_image


@pytest.fixture(scope="module")
def run_and_pixels(tiny_cifar_run, tiny_cifar_session):
    """The shared tiny CIFAR-10 run, and real test JPEGs of it decoded as imgcls decodes them, with a few
    random images added so that every pixel value is seen."""
    run = tiny_cifar_run[0]
    loaded = ckpt.load(run)
    paths = sorted((tiny_cifar_session / "test").glob("*/*.jpg"))[::7]
    real = torch.stack([prepare_image(read_image_file(p), loaded)[0] for p in paths])
    noise = torch.randint(0, 256, (4, *loaded.input_shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return run, loaded, torch.cat([real, noise]), paths


def imgcls_scores(loaded, pixels):
    with torch.inference_mode():
        return loaded.model()(normalized(pixels, loaded, torch.device("cpu"))).numpy()


def export(cli, run, fmt, out):
    result = cli("export", run, "--format", fmt, "--out", out)
    assert result.exit_code == 0, plain(result.output)
    assert out.is_file() and not list(out.parent.glob(".*.tmp"))
    return result


def test_onnx_model_run_by_onnxruntime_gives_imgcls_scores_from_raw_pixels(cli, run_and_pixels, tmp_path):
    import onnx
    import onnxruntime

    run, loaded, pixels, paths = run_and_pixels
    out = tmp_path / "model.onnx"
    result = export(cli, run, "onnx", out)
    assert "uint8 pixels (N, 3, 32, 32)" in plain(result.stdout)
    assert "legacy" not in plain(result.output)  # torch's deprecation warnings are not the user's business
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()
    assert given.type == "tensor(uint8)" and given.shape[1:] == [3, 32, 32]
    scores = session.run(["scores"], {given.name: pixels.numpy()})[0]
    expected = imgcls_scores(loaded, pixels)
    assert scores.shape == (len(pixels), 10)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # the same top-1 as `imgcls predict` on the real files
    predicted = [item.classes[0] for item in predict(loaded, paths, k=1).items]
    assert [loaded.classes[i] for i in scores[:len(paths)].argmax(1)] == predicted
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["classes"]) == loaded.classes and float(props["input_scale"]) == 255.0


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_model_loaded_by_torch_jit_gives_imgcls_scores(cli, run_and_pixels, tmp_path):
    run, loaded, pixels, _ = run_and_pixels
    out = tmp_path / "model.pt"
    export(cli, run / "best.safetensors", "torchscript", out)
    extra = {"classes.txt": "", "input_scale.txt": ""}
    model = torch.jit.load(str(out), _extra_files=extra)
    with torch.inference_mode():
        scores = model(pixels).numpy()
    expected = imgcls_scores(loaded, pixels)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert extra["classes.txt"].decode().splitlines() == loaded.classes  # one name a line, as the README says
    assert float(extra["input_scale.txt"]) == 255.0


def test_npz_holds_the_lecture_arrays_and_numpy_reproduces_the_scores(cli, run_and_pixels, tmp_path):
    run, loaded, pixels, _ = run_and_pixels
    out = tmp_path / "model.npz"
    export(cli, run, "npz", out)
    with np.load(out) as arrays:  # no pickles: plain arrays and strings
        W, b, mean, std = arrays["W"], arrays["b"], arrays["mean"], arrays["std"]
        classes, input_scale = arrays["classes"].tolist(), float(arrays["input_scale"])
    assert W.shape == (10, 3 * 32 * 32) and mean.shape == std.shape == (3, 32, 32)
    assert classes == loaded.classes and input_scale == 255.0
    x = (pixels.numpy().astype(np.float64) / input_scale - mean) / std
    scores = x.reshape(len(x), -1) @ W.T.astype(np.float64) + b
    expected = imgcls_scores(loaded, pixels)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_export_user_errors(cli, assert_user_error, tiny_cifar_run, tmp_path):
    run = tiny_cifar_run[0]
    assert_user_error(cli("export", run, "--format", "onx", "--out", tmp_path / "m.onnx"), "format", "onnx")
    assert_user_error(cli("export", tmp_path, "--format", "onnx", "--out", tmp_path / "m.onnx"), "does not exist",
                      "run folder")
    assert_user_error(cli("export", run, "--format", "npz", "--out", tmp_path / "nope" / "m.npz"), "does not exist")
    assert_user_error(cli("export", run, "--format", "npz", "--out", tmp_path), "is a folder")
    not_a_checkpoint = tmp_path / "x.safetensors"
    not_a_checkpoint.write_bytes(b"hello")
    assert_user_error(cli("export", not_a_checkpoint, "--format", "npz", "--out", tmp_path / "m.npz"), "checkpoint")
    assert not list(tmp_path.glob("m.*"))


def test_export_help_has_an_example(cli):
    result = cli("export", "--help")
    assert result.exit_code == 0
    assert "Example: imgcls export" in plain(result.output) and "torchscript" in plain(result.output)


def test_output_paths_that_cannot_be_written_are_one_line(cli, assert_user_error, small_run, tmp_path, monkeypatch):
    """export and export-templates: a file where a folder goes, a path under a file, a read-only folder, a folder
    where no file can be made; each named, nothing of the user's touched."""
    import errno
    import os

    run = small_run[1]
    taken = tmp_path / "taken"
    taken.write_text("mine")
    templates = ("export-templates", run, "--out")
    assert_user_error(cli(*templates, taken), str(taken), "is a file, not a folder")
    assert_user_error(cli(*templates, taken / "tpl"), str(taken), "is a file, not a folder")
    assert_user_error(cli("export", run, "--format", "npz", "--out", taken / "m.npz"), str(taken),
                      "is a file, not a folder")
    assert taken.read_text() == "mine"
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if str(path) == str(read_only)
                        else real_access(path, mode, **kw))
    monkeypatch.setattr("imgcls.files.on_read_only_file_system", lambda path: True)
    assert_user_error(cli(*templates, read_only / "tpl"), str(read_only), "read-only file system")
    assert_user_error(cli("export", run, "--format", "npz", "--out", read_only / "m.npz"), str(read_only),
                      "read-only file system")
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *args, **kw: (_ for _ in ()).throw(FileNotFoundError(
        errno.ENOENT, "No such file or directory")) if str(path).endswith(".tmp") else real_open(path, *args, **kw))
    assert_user_error(cli("export", run, "--format", "npz", "--out", tmp_path / "m.npz"), str(tmp_path / "m.npz"),
                      "no file can be made in", "choose a writable folder")
    assert not list(tmp_path.glob("m.*"))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx", "npz"])
def test_export_to_a_disk_that_fills_up_is_one_line_not_an_abort(small_run, tmp_path, fmt):
    """A file-size limit makes every write past 2 kB fail as a full disk would (EFBIG): each format ends in one
    error line, not an abort of the process, and leaves no file."""
    from conftest import run_python

    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048)); sys.argv = ['imgcls'] + sys.argv[1:]; "
            "from imgcls.cli.app import main; main()")
    out = tmp_path / f"model.{fmt}"
    result = run_python("-c", code, "export", small_run[1], "--format", fmt, "--out", out)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "terminate called" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(out) in errors[0] and "File too large" in errors[0], result.stderr
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_a_device_a_special_folder_or_a_name_too_long_is_one_line(cli, assert_user_error, small_run, tmp_path):
    """A device at --out is refused, not renamed over (an atomic write replaces its target)."""
    import stat

    run = small_run[1]
    for fmt in ("npz", "torchscript"):
        assert_user_error(cli("export", run, "--format", fmt, "--out", "/dev/null"), "/dev/null", "is a device",
                          "not a file")
    assert_user_error(cli("compare", run, run, "--no-figure", "--csv", "/dev/null"), "--csv /dev/null", "a device")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert_user_error(cli("export-templates", run, "--out", "/proc/imgcls-templates"), "/proc/imgcls-templates",
                      "cannot be made")
    long = tmp_path / ("n" * 300)
    for args in (("export", run, "--format", "npz", "--out", long), ("export-templates", run, "--out", long),
                 ("compare", run, run, "--no-figure", "--csv", long)):
        assert_user_error(cli(*args), str(long), "too long")
