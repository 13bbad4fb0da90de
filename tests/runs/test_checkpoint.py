"""Checkpoints that are not what they claim: a pickle where a checkpoint is expected is refused and never run, a newer
format version, damaged metadata and tensors, a config from a later imgcls, data of another input shape. Each is one
'error:' line naming the file, from eval, export-templates and predict alike."""

import json
import pickle
from pathlib import Path

import pytest
import torch

from conftest import TWO_SHAPES, RunsCode, write_image_folder
from imgcls.runs import checkpoint as ckpt


def test_the_pickle_payload_is_live(tmp_path):
    """Precondition for the next test: unpickling the payload does run code."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(RunsCode(marker)))
    assert marker.exists()


@pytest.mark.parametrize("where", ["best.safetensors", "model.pt", "model.pth"])
@pytest.mark.parametrize("how", ["pickle", "torch.save"])
@pytest.mark.parametrize("command", ["eval", "export-templates"])
def test_a_pickle_where_a_checkpoint_is_expected_is_refused_and_runs_nothing(cli, small_run, tmp_path, where, how,
                                                                             command, assert_user_error):
    marker = tmp_path / "ran"
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "epochs.jsonl", "metrics.json"):
        (run / name).write_bytes((small_run[1] / name).read_bytes())
    payload = {"weight": RunsCode(marker), "bias": torch.zeros(2)}
    if how == "pickle":
        (run / where).write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, run / where)
    target = run if where == "best.safetensors" else run / where
    extra = ["--device", "cpu"] if command == "eval" else ["--out", tmp_path / "tpl"]
    assert_user_error(cli(command, target, *extra), "not a readable imgcls checkpoint")
    assert not marker.exists()


def rewrite(source: Path, target: Path, meta_change=None, metadata_change=None, tensor_change=None) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), "pt") as f:
        metadata, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(metadata["meta"])
    if meta_change:
        meta_change(meta)
    metadata["meta"] = json.dumps(meta)
    if metadata_change:
        metadata_change(metadata)
    if tensor_change:
        tensor_change(tensors)
    save_file(tensors, str(target), metadata=metadata)
    return target


def test_a_checkpoint_from_a_newer_format_version(cli, small_run, tmp_path, assert_user_error):
    path = rewrite(small_run[1] / "best.safetensors", tmp_path / "new.safetensors",
                   metadata_change=lambda m: m.update(imgcls_format="99"))
    for command, extra in (("eval", ["--device", "cpu"]), ("export-templates", ["--out", tmp_path / "tpl"])):
        assert_user_error(cli(command, path, *extra), "newer imgcls", "format 99", "upgrade")


@pytest.mark.parametrize("name, change, words", [
    ("no-config", {"meta": lambda m: m.pop("config")}, ["lacks 'config'"]),
    ("no-dataset", {"meta": lambda m: m.pop("dataset")}, ["lacks 'dataset'"]),
    ("seed-text", {"meta": lambda m: m.update(seed="x")}, ["'seed'"]),
    ("unknown-dataset", {"meta": lambda m: m["config"]["data"].update(dataset="nope")}, ["config", "nope"]),
    ("dataset-number", {"meta": lambda m: m["config"]["data"].update(dataset=5)}, ["data.dataset"]),
    ("unknown-loss", {"meta": lambda m: m["config"]["loss"].update(loss="hinge")}, ["loss"]),
    ("class-weights", {"meta": lambda m: m["config"]["loss"].update(class_weights=[1, 2, 3])}, ["3 class weights"]),
    ("shape-floats", {"meta": lambda m: m.update(input_shape=[3.0, 8.0, 8.0])}, ["input_shape"]),
    ("classes-text", {"meta": lambda m: m.update(classes="ab")}, ["'classes'"]),
    ("meta-list", {"metadata": lambda m: m.update(meta="[1, 2]")}, ["not a JSON object"]),
    ("meta-not-json", {"metadata": lambda m: m.update(meta="{oops")}, ["damaged"]),
    ("meta-deep", {"metadata": lambda m: m.update(meta="[" * 100000 + "]" * 100000)}, ["damaged"]),
    ("format-odd", {"metadata": lambda m: m.update(imgcls_format="\u00b2")}, ["format version"]),
    ("format-negative", {"metadata": lambda m: m.update(imgcls_format="-1")}, ["format version"]),
    ("bias-shape", {"tensors": lambda t: t.update(bias=torch.zeros(3))}, ["bias (3,)"]),
    ("no-bias", {"tensors": lambda t: t.pop("bias")}, ["lacks 'bias'"]),
    ("weight-int", {"tensors": lambda t: t.update(weight=t["weight"].to(torch.int32))}, ["weight", "floating"]),
    ("weight-nan", {"tensors": lambda t: t.update(weight=t["weight"] * float("nan"))}, ["weight", "finite"]),
    ("std-zero", {"tensors": lambda t: t.update({"norm.std": torch.zeros_like(t["norm.std"])})}, ["norm.std"]),
    ("weight-float8", {"tensors": lambda t: t.update(weight=t["weight"].to(torch.float8_e4m3fn))},
     ["weight", "floating-point type"]),
    ("format-5000-digits", {"metadata": lambda m: m.update(imgcls_format="1" * 5000)}, ["format version"]),
    ("two-channels", {"meta": lambda m: m.update(input_shape=[2, 8, 8]),
                      "tensors": lambda t: t.update(weight=t["weight"][:, :128].contiguous())}, ["2 channels"]),
    ("four-channels", {"meta": lambda m: m.update(input_shape=[4, 8, 8]),
                       "tensors": lambda t: t.update(weight=torch.cat([t["weight"], t["weight"][:, :64]], 1))},
     ["4 channels"]),
])
@pytest.mark.parametrize("command", ["eval", "export-templates", "predict"])
def test_damaged_checkpoint_metadata_and_tensors(cli, small_run, tmp_path, name, change, words, command,
                                                 assert_user_error):
    path = rewrite(small_run[1] / "best.safetensors", tmp_path / f"{name}.safetensors", change.get("meta"),
                   change.get("metadata"), change.get("tensors"))
    extra = {"eval": ["--device", "cpu"], "export-templates": ["--out", tmp_path / "tpl"],
             "predict": [small_run[0], "--device", "cpu"]}[command]
    assert_user_error(cli(command, path, *extra), path.name, "damaged imgcls checkpoint", *words)
    assert not (tmp_path / "tpl").exists()


def test_a_checkpoint_config_with_keys_from_a_later_imgcls_still_loads(small_run, tmp_path):
    path = rewrite(small_run[1] / "best.safetensors", tmp_path / "later.safetensors",
                   lambda m: (m["config"]["train"].update(future_key=1), m["config"].update(future_section={})))
    assert ckpt.load(path).meta["config"]["train"]["epochs"] == 1


def test_eval_on_data_of_another_input_shape(cli, small_run, tmp_path, assert_user_error):
    other = write_image_folder(tmp_path / "other", {split: {name: [(6, 6)] * len(sizes) for name, sizes in
                                                            classes.items()} for split, classes in TWO_SHAPES.items()})
    assert_user_error(cli("eval", small_run[1], "--data-dir", other, "--device", "cpu"),
                      "checkpoint was trained on imagefolder", "(3, 8, 8)", "(3, 6, 6)", "--data-dir")
