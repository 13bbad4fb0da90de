"""TensorBoard logging (tboard.py, `imgcls train --tensorboard`): the event files hold the epochs' scalars and
the templates, an overwritten run starts a fresh log, and a missing tensorboard package is a user error."""

import json
import sys

import pytest
import yaml

from conftest import plain

EPOCHS = 2


@pytest.fixture(scope="module")
def tb_run(cli, tiny_cifar_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("tb") / "run"
    result = cli("train", "--dataset", "cifar10", "--data-dir", tiny_cifar_session, "--epochs", EPOCHS,
                 "--batch-size", 32, "--no-refit", "--device", "cpu", "--out", out, "--tensorboard")
    assert result.exit_code == 0, plain(result.output)
    return out, result


def event_files(folder):
    return sorted(folder.glob("events.out.tfevents.*"))


def read_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_event_files_hold_the_scalars_and_templates(tb_run):
    out, result = tb_run
    assert len(event_files(out / "tensorboard")) == 1
    events = read_events(out / "tensorboard")
    tags = events.Tags()
    for tag in ("loss/train", "loss/val", "top1/train", "top1/val", "top5/val", "lr", "test/top1", "test/loss"):
        assert tag in tags["scalars"], tag
    assert {"templates/each", "templates/grid"} <= set(tags["images"])
    epochs = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    for tag, key in (("loss/train", "train_loss"), ("top1/val", "val_top1")):
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx([e[key] for e in epochs], rel=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert events.Scalars("test/top1")[0].value == pytest.approx(metrics["test"]["top1"], rel=1e-6)
    tiles, = events.Images("templates/each")  # the templates, enlarged to 128 pixels and tiled
    assert tiles.step == metrics["best_epoch"] and tiles.width % 128 == 0 and tiles.height % 128 == 0
    assert tiles.width * tiles.height >= 10 * 128 * 128
    grid, = events.Images("templates/grid")
    assert (grid.width, grid.height) == (1040, 945)  # templates.png
    assert "tensorboard --logdir" in plain(result.output)
    assert yaml.safe_load((out / "config.yaml").read_text())["output"]["tensorboard"] is True


def test_tensorboard_overwrite_starts_a_fresh_log_and_default_out(cli, tiny_cifar_session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ("train", "--dataset", "cifar10", "--data-dir", tiny_cifar_session, "--epochs", 1, "--device", "cpu",
            "--tensorboard", "--quiet")
    result = cli(*args)
    assert result.exit_code == 0, plain(result.output)
    run_dir = tmp_path / json.loads(result.stdout)["run_dir"]
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("cifar10-")
    assert len(event_files(run_dir / "tensorboard")) == 1
    again = cli(*args, "--out", run_dir, "--overwrite")
    assert again.exit_code == 0, plain(again.output)
    assert len(event_files(run_dir / "tensorboard")) == 1
    assert [e.step for e in read_events(run_dir / "tensorboard").Scalars("loss/train")] == [1]


def test_tensorboard_missing_is_a_user_error_before_anything_is_written(cli, tiny_cifar_session, tmp_path,
                                                                       monkeypatch, assert_user_error):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails, as when not installed
    result = cli("train", "--dataset", "cifar10", "--data-dir", tiny_cifar_session, "--epochs", 1, "--out",
                 tmp_path / "run", "--tensorboard")
    error = assert_user_error(result, "--tensorboard needs the tensorboard package")
    assert "pip install 'imgcls[tensorboard]'" in error
    assert not (tmp_path / "run").exists()
