"""`--dataset features`: a linear probe on precomputed features. The run's checkpoint, read back in numpy, must
give the test top-1 that train and eval report (so the features were standardized as the checkpoint says), the
normalization must be the training rows' own statistics, and a file's mistakes are one error line."""

import json

import numpy as np
import pytest
import torch

from conftest import plain
from imgcls.runs import checkpoint as ckpt
from imgcls.data.features import keep_rows_in_place, split_in_place

CLASSES = ["cat", "dog", "eel"]


def blobs(n: int, width: int, seed: int, dtype=np.float64, offset=500.0, spread=40.0):
    """Three classes of rows around far-off centres, on a scale far from pixels' (offset 500, spread 40)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(3, width)) * spread
    y = rng.integers(0, 3, n)
    x = offset + centres[y] + rng.normal(size=(n, width)) * spread * 1.5
    return x.astype(dtype), y


def train(cli, data, out, *extra):
    result = cli("train", "--dataset", "features", "--data-dir", data, "--epochs", 4, "--batch-size", 32,
                 "--lr", 0.05, "--weight-decay", 0.01, "--no-refit", "--device", "cpu", "--out", out, "--quiet", *extra)
    assert result.exit_code == 0, plain(result.output)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def probe(cli, tmp_path_factory):
    """One run on float64 features with an x_val given: (run folder, the arrays, train's summary)."""
    root = tmp_path_factory.mktemp("features")
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = blobs(600, 24, 0), blobs(150, 24, 1), blobs(300, 24, 2)
    arrays = dict(x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test)
    np.savez_compressed(root / "emb.npz", **arrays, classes=np.array(CLASSES))
    return root / "run", arrays, train(cli, root / "emb.npz", root / "run")


def numpy_top1(loaded, x, y) -> float:
    mean, std = loaded.mean.double().numpy().ravel() * 255, loaded.std.double().numpy().ravel() * 255
    scores = ((x - mean) / std) @ loaded.weight.double().numpy().T + loaded.bias.double().numpy()
    return float((scores.argmax(1) == y).mean())


def test_a_probe_on_features_learns_and_its_checkpoint_scores_in_numpy_as_reported(cli, probe):
    run, arrays, summary = probe
    loaded = ckpt.load(run)
    assert loaded.classes == CLASSES and loaded.input_shape == (1, 1, 24)
    assert summary["val"]["count"] == 150 and summary["test"]["count"] == 300  # x_val used as given
    # the normalization is the training rows' own per-feature statistics, in their units
    np.testing.assert_allclose(loaded.mean.double().numpy().ravel() * 255, arrays["x_train"].mean(0), rtol=1e-5)
    np.testing.assert_allclose(loaded.std.double().numpy().ravel() * 255, arrays["x_train"].std(0), rtol=1e-4)
    top1 = numpy_top1(loaded, arrays["x_test"], arrays["y_test"])
    assert summary["test"]["top1"] == pytest.approx(top1, abs=1e-9)
    # nearest class mean on the same arrays, as a baseline the probe must come close to
    means = np.stack([arrays["x_train"][arrays["y_train"] == k].mean(0) for k in range(3)])
    distances = ((arrays["x_test"][:, None, :] - means[None]) ** 2).sum(2)
    assert top1 >= (distances.argmin(1) == arrays["y_test"]).mean() - 0.03 and top1 > 0.8
    evaluated = cli("eval", run, "--device", "cpu", "--json")
    assert evaluated.exit_code == 0, plain(evaluated.output)
    assert json.loads(evaluated.stdout)["test"]["top1"] == pytest.approx(top1, abs=1e-9)
    assert not (run / "templates.png").exists()


def test_integer_features_in_safetensors_without_val_are_split_and_standardized(cli, tmp_path):
    from safetensors.numpy import save_file

    x, y = blobs(400, 10, 3, offset=3000)
    x_test, y_test = blobs(200, 10, 4, offset=3000)
    arrays = {"x_train": x.round().astype(np.uint16), "y_train": y.astype(np.int32),
              "x_test": x_test.round().astype(np.int64), "y_test": y_test}
    save_file(arrays, str(tmp_path / "emb.safetensors"), metadata={"classes": json.dumps(CLASSES)})
    summary = train(cli, tmp_path / "emb.safetensors", tmp_path / "run", "--val-split", 0.25)
    loaded = ckpt.load(tmp_path / "run")
    assert loaded.classes == CLASSES and summary["val"]["count"] == 100
    std = loaded.std.double().numpy().ravel() * 255  # fitted on the 300 training rows: near the whole array's
    np.testing.assert_allclose(std, arrays["x_train"].std(0), rtol=0.15)
    assert summary["test"]["top1"] == pytest.approx(numpy_top1(loaded, x_test.round(), y_test), abs=1e-9)
    assert summary["test"]["top1"] > 0.8


def test_rows_move_in_place_so_train_and_val_are_views_of_one_array():
    x = torch.arange(40.0).reshape(10, 4)
    y = torch.arange(10)
    original_x, original_y = x.clone(), y.clone()
    val_index = torch.tensor([1, 4, 5, 9])
    kept = torch.tensor([0, 2, 3, 6, 7, 8])
    (train_x, train_y), (val_x, val_y) = split_in_place(x, y, kept, val_index)
    assert torch.equal(train_x, original_x[kept]) and torch.equal(train_y, original_y[kept])
    assert torch.equal(val_x, original_x[val_index]) and torch.equal(val_y, original_y[val_index])
    assert train_x.data_ptr() == x.data_ptr() and val_x.untyped_storage().data_ptr() == x.data_ptr()
    kept_x, kept_y = keep_rows_in_place(x, y, torch.tensor([3, 7]))
    now = torch.cat([kept, val_index])  # x's rows after the split, as rows of the original
    assert torch.equal(kept_x, original_x[now[[3, 7]]]) and torch.equal(kept_y, original_y[now[[3, 7]]])
    assert kept_x.data_ptr() == x.data_ptr()


def test_limited_rows_left_out_of_both_parts_are_overwritten_not_kept():
    x = torch.arange(40.0).reshape(10, 4)
    y = torch.arange(10)
    original_x = x.clone()
    train_index, val_index = torch.tensor([0, 3, 4, 8]), torch.tensor([2, 6])  # rows 1, 5, 7, 9: left out by --limit
    (train_x, _), (val_x, val_y) = split_in_place(x, y, train_index, val_index)
    assert torch.equal(train_x, original_x[train_index]) and torch.equal(val_x, original_x[val_index])
    assert torch.equal(val_y, val_index) and val_x.untyped_storage().data_ptr() == x.data_ptr()


def test_features_prepare_holds_out_the_rows_the_image_paths_would(tmp_path):
    """The one split function: the features' train and val rows are those split_train_val picks, --limit first."""
    from imgcls.config import DataConfig
    from imgcls.data.prepare import prepare
    from imgcls.data.split import split_train_val

    x, y = blobs(90, 3, 5)
    x[:, 0] = np.arange(90)  # each row's own number, to find it again
    path = write(tmp_path / "f.npz", x_train=x, y_train=y, x_test=x[:9], y_test=y[:9])
    data = prepare(DataConfig(dataset="features", data_dir=str(path), limit=60, val_split=0.25), seed=3)
    train_index, val_index = split_train_val(torch.as_tensor(y), 3, 0.25, 60, 3, name="features")
    assert data.train.images[:, 0, 0, 0].long().tolist() == train_index.tolist()
    assert data.val.images[:, 0, 0, 0].long().tolist() == val_index.tolist()


def write(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_features_file_mistakes_are_one_error_line(cli, assert_user_error, tmp_path):
    x, y = blobs(60, 5, 0)
    good = dict(x_train=x, y_train=y, x_test=x[:20], y_test=y[:20])

    def check(path, *words, extra=()):
        assert_user_error(cli("train", "--dataset", "features", "--data-dir", path, "--epochs", 1, "--device", "cpu",
                              "--out", tmp_path / "run", *extra), *words)

    check(write(tmp_path / "a.npz", x_train=x, y_train=y, x_test=x), "y_test")
    check(write(tmp_path / "few.npz", **{**good, "x_train": x[:5], "y_train": np.array([0, 1, 2, 0, 1])}),
          "features: 5 training rows for 3 classes are too few to hold out a validation split; add rows, or give "
          "x_val and y_val")
    check(write(tmp_path / "b.npz", **{**good, "y_train": y[:-1]}), "60 rows", "59 labels")
    nan = x.copy()
    nan[7, 2] = np.nan
    check(write(tmp_path / "c.npz", **{**good, "x_train": nan}), "row 7", "NaN")
    check(write(tmp_path / "d.npz", **{**good, "x_test": x[:20, :3]}), "different widths")
    check(write(tmp_path / "e.npz", **good, classes=np.array(["a", "b"])), "label is 2", "2 class names")
    check(write(tmp_path / "f.npz", **{**good, "y_train": y.astype(float)}), "y_train", "integers")
    check(tmp_path, "folder")
    (tmp_path / "g.csv").write_text("1,2\n")
    check(tmp_path / "g.csv", ".npz")
    (tmp_path / "h.npz").write_bytes(b"not a zip")
    check(tmp_path / "h.npz", "cannot read")
    check(write(tmp_path / "i.npz", **good), "--image-size", "not images", extra=("--image-size", 8))
    assert not (tmp_path / "run").exists()


def test_features_labels_are_bounded_before_anything_is_allocated(cli, assert_user_error, tmp_path):
    """A huge label without a `classes` array (bounded before any list of names is made), a uint64 label past int64,
    a test label no training row has, a training label with none: each named."""
    import resource

    x, y = blobs(60, 5, 0)
    good = dict(x_train=x, y_train=y, x_test=x[:20], y_test=y[:20])

    def check(name, *words, **arrays):
        result = cli("train", "--dataset", "features", "--data-dir", write(tmp_path / name, **{**good, **arrays}),
                     "--epochs", 1, "--device", "cpu", "--out", tmp_path / "run")
        assert_user_error(result, str(tmp_path / name), *words)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    huge = y.copy()
    huge[0] = 10 ** 12
    check("huge.npz", "y_train has the label 1000000000000", "60 rows", "without a 'classes' array", y_train=huge)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # kB: no list of 10**12 names
    wraps = y.astype(np.uint64)
    wraps[3] = 2 ** 63 + 5
    check("wraps.npz", f"label is {2 ** 63 + 5} in y_train", "3 class names", y_train=wraps,
          classes=np.array(CLASSES))
    check("wraps-bare.npz", f"y_train has the label {2 ** 63 + 5}", y_train=wraps)
    unseen = y[:20].copy()
    unseen[5] = 7
    check("unseen.npz", "y_test has the label 7", "no training row has", y_test=unseen)
    gap = np.where(y == 1, 2, y)
    check("gap.npz", "no training row has the label 1", y_train=gap, y_test=gap[:20])
    check("one.npz", "only the class 'cat'", "at least 2 classes", y_train=np.zeros(60, int),
          y_test=np.zeros(20, int), classes=np.array(["cat"]))
    check("names.npz", "class 0", "named 1, not text", classes=np.array([1, 7, 3]))


def test_a_npy_file_named_npz_and_bad_safetensors_metadata_are_named(cli, assert_user_error, tmp_path):
    from safetensors.numpy import save_file

    x, y = blobs(60, 5, 0)
    np.save(tmp_path / "one.npy", x)
    (tmp_path / "one.npy").rename(tmp_path / "one.npz")
    save_file({"x_train": x.astype(np.float32), "y_train": y, "x_test": x[:20].astype(np.float32),
               "y_test": y[:20]}, str(tmp_path / "meta.safetensors"), metadata={"classes": "cat, dog, eel"})
    save_file({"x_train": x.astype(np.float32), "y_train": y, "x_test": x[:20].astype(np.float32),
               "y_test": y[:20]}, str(tmp_path / "null.safetensors"), metadata={"classes": "null"})
    for name, words in (("one.npz", ("single numpy array (.npy)", "numpy.savez")),
                        ("meta.safetensors", ("'classes' is not a JSON list", "json.dumps")),
                        ("null.safetensors", ("'classes' is not a JSON list", "it is None"))):
        result = cli("train", "--dataset", "features", "--data-dir", tmp_path / name, "--epochs", 1, "--device",
                     "cpu", "--out", tmp_path / "run")
        assert_user_error(result, str(tmp_path / name), *words)


def test_image_commands_say_a_features_checkpoint_is_not_an_image_model(cli, assert_user_error, probe, tmp_path,
                                                                        image_folder):
    run = probe[0]
    assert_user_error(cli("export-templates", run, "--out", tmp_path / "tpl"), "not an image model")
    image_folder(tmp_path / "pics", {"x": {"a": [(8, 8)]}})
    assert_user_error(cli("predict", run, tmp_path / "pics", "--device", "cpu"), "not an image model")


def test_an_exported_features_model_takes_feature_rows(cli, probe, tmp_path):
    import onnxruntime

    run, arrays, _ = probe
    result = cli("export", run, "--format", "onnx", "--out", tmp_path / "probe.onnx")
    assert result.exit_code == 0, plain(result.output)
    session = onnxruntime.InferenceSession(str(tmp_path / "probe.onnx"), providers=["CPUExecutionProvider"])
    scores = session.run(["scores"], {"input": arrays["x_test"].astype(np.float32)})[0]
    assert (scores.argmax(1) == arrays["y_test"]).mean() == pytest.approx(numpy_top1(ckpt.load(run), arrays["x_test"],
                                                                                    arrays["y_test"]), abs=0.01)
    assert cli("export", run, "--format", "npz", "--out", tmp_path / "probe.npz").exit_code == 0
    with np.load(tmp_path / "probe.npz") as saved:
        assert float(saved["input_scale"]) == 1.0
        np.testing.assert_allclose(saved["mean"].ravel(), arrays["x_train"].mean(0), rtol=1e-5)


def test_predict_on_a_features_file_gives_each_rows_classes_as_numpy_does(cli, probe, tmp_path, assert_user_error):
    run, arrays, _ = probe
    loaded = ckpt.load(run)
    x = arrays["x_test"][:40]
    np.savez(tmp_path / "new.npz", x=x)
    result = cli("predict", run, tmp_path / "new.npz", "--device", "cpu", "--json", "--top-k", 2)
    assert result.exit_code == 0, plain(result.output)
    predictions = json.loads(result.stdout)["predictions"]
    mean, std = loaded.mean.double().numpy().ravel() * 255, loaded.std.double().numpy().ravel() * 255
    scores = ((x - mean) / std) @ loaded.weight.double().numpy().T + loaded.bias.double().numpy()
    probabilities = np.exp(scores - scores.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    assert [p["image"] for p in predictions] == [f"new.npz[{row}]" for row in range(40)]
    assert [p["class"] for p in predictions] == [CLASSES[i] for i in scores.argmax(1)]
    assert [p["probability"] for p in predictions] == pytest.approx(probabilities.max(1).tolist(), abs=1e-5)
    np.savez(tmp_path / "narrow.npz", x=x[:, :5])
    assert_user_error(cli("predict", run, tmp_path / "narrow.npz", "--device", "cpu"), "5 features", "takes 24")


def test_a_features_run_s_page_says_why_it_has_no_gallery(probe):
    run, _, _ = probe
    html = (run / "report.html").read_text()
    assert "not drawn for --dataset features" in html and "--data-dir" not in html


def test_eval_on_features_whose_class_names_differ_says_which(cli, probe, tmp_path, assert_user_error):
    run, arrays, _ = probe
    other = write(tmp_path / "other.npz", **arrays, classes=np.array(["cat", "dog", "emu"]))
    line = assert_user_error(cli("eval", run, "--data-dir", other, "--device", "cpu"), "class 2 is 'emu'",
                             "checkpoint's is 'eel'")
    assert "has 3 classes of" not in line
