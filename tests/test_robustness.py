"""Bad option values and config files, from the command line: each ends as one 'error:' line with exit code 2
before a run folder is written, and a config file cannot run code. (To be merged into test_config.py.)"""

import pytest


@pytest.mark.parametrize("args, words", [
    (["--schedule", "cosin"], ["unknown schedule 'cosin'", "did you mean 'cosine'"]),
    (["--init", "zero"], ["unknown init 'zero'", "did you mean 'zeros'"]),
    (["--normalize", "pixels"], ["unknown normalization 'pixels'", "did you mean 'pixel'"]),
    (["--precision", "fp33"], ["unknown precision 'fp33'", "did you mean 'fp32'"]),
    (["--batch-size", "ful"], ["unknown batch size 'ful'", "did you mean 'full'"]),
    (["--class-weights", "balance"], ["--class-weights", "'balanced'", "not 'balance'"]),
    (["--momentum", "-0.1"], ["--momentum", "[0, 1)"]),
    (["--epochs", "-3"], ["--epochs", "at least 1"]),
    (["--batch-size", "-4"], ["--batch-size", "at least 1"]),
    (["--val-split", "-0.5"], ["--val-split"]),
    (["--val-split", "nan"], ["--val-split"]),
    (["--lr", "nan"], ["--lr"]),
    (["--lr", "inf"], ["--lr", "finite"]),
    (["--weight-decay", "inf"], ["--weight-decay", "finite"]),
    (["--warmup-epochs", "inf"], ["--warmup-epochs", "finite"]),
    (["--init-std", "inf"], ["--init-std", "finite"]),
    (["--class-weights", "1,inf"], ["--class-weights", "finite"]),
    (["--class-weights", "nan,1"], ["--class-weights"]),
    (["--seed", "-1"], ["--seed", "2^32"]),
    (["--seed", str(2 ** 70)], ["--seed", "2^32"]),
    (["--batch-size", "\u00b2"], ["batch size"]),  # '²' passes str.isdigit() but int() refuses it
    (["--patience", "0"], ["--patience"]),
    (["--threads", "0"], ["--threads", "between 1 and 1024"]),
    (["--threads", "100000"], ["--threads", "between 1 and 1024"]),  # it was a segfault
    (["--step-gamma", "0"], ["--step-gamma"]),
    (["--image-size", "0"], ["--image-size"]),
    (["--nesterov", "--momentum", "0"], ["--nesterov"]),
])
def test_bad_option_values_are_user_errors(cli, args, words, assert_user_error, tmp_path):
    assert_user_error(cli("train", *args, "--out", tmp_path / "run"), *words)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, words", [
    (b"\xff\xfe\x00binary\x80\x81", ["not a text file"]),
    (b"optim: [1, 2\n", ["not valid YAML", "line"]),
    (b"- 1\n- 2\n", ["must be a mapping of sections"]),
    (b"optim: 0.1\n", ["section 'optim'", "mapping of keys"]),
    (b"optim:\n  momentum: yes\n", ["optim.momentum", "float"]),
    (b"train:\n  epochs: 2.5\n", ["train.epochs", "int"]),
    (b"optim:\n  lr: .inf\n", ["optim.lr in", "bad.yaml must be a finite number"]),
    (b"data:\n  val_split: .nan\n", ["data.val_split in", "bad.yaml must be between 0 and 1"]),
    # YAML reads 1e999 as text; as a number it is infinite
    (b"optim:\n  lr: 1e999\n", ["optim.lr in", "bad.yaml must be a finite number"]),
    (b"loss:\n  class_weights: [1, two]\n", ["loss.class_weights"]),
    (b"12: {lr: 1}\n", ["unknown config section '12'"]),
])
def test_bad_config_files(cli, tmp_path, content, words, assert_user_error):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert_user_error(cli("train", "--config", path, "--out", tmp_path / "run"), *words)
    assert not (tmp_path / "run").exists()


def test_a_config_file_cannot_run_code(cli, tmp_path, assert_user_error):
    """YAML's python tags would call any function; the loader is yaml.safe_load, which refuses them."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"optim: !!python/object/apply:os.system ['touch {marker}']\n")
    assert_user_error(cli("train", "--config", path, "--out", tmp_path / "run"), "not valid YAML")
    assert not marker.exists()
