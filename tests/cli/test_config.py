"""Config precedence (defaults < YAML file < flags), type checks, and every validation rule."""

import dataclasses
import math
from pathlib import Path

import pytest
import yaml

from conftest import plain, read_run
from imgcls.config import (MAX_THREADS, Config, build_config, parse_batch_size, parse_class_weights, parse_flags,
                           sections, settings)
from imgcls.data.registry import DATASET_NAMES
from imgcls.errors import UserError, shown

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIGS = sorted((REPO_ROOT / "configs").glob("*.yaml")) + sorted((REPO_ROOT / "configs").glob("*.yml"))


def write_yaml(tmp_path, data, name="config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_defaults_without_file_or_flags():
    config = build_config(None, {})
    assert config == Config()
    assert config.data.dataset == "cifar10-sample"
    # no tuning flags: the rate and decay are searched, early stopping ends the run within a cap, then a refit
    assert config.optim.lr == "auto" and config.optim.weight_decay == "auto" and config.optim.batch_size == 128
    assert config.train.epochs == "auto" and config.train.patience == 5 and config.schedule.schedule == "plateau"
    assert config.train.refit is True


def test_file_values_override_defaults(tmp_path):
    path = write_yaml(tmp_path, {"optim": {"lr": 0.2, "batch_size": "full"}, "train": {"epochs": 3, "seed": 7},
                                 "data": {"dataset": "mnist", "normalize": "channel"}})
    config = build_config(path, {})
    assert config.optim.lr == 0.2
    assert config.optim.batch_size == "full"
    assert config.train.epochs == 3 and config.train.seed == 7
    assert config.data.dataset == "mnist" and config.data.normalize == "channel"
    # keys the file does not mention keep their defaults
    assert config.optim.momentum == Config().optim.momentum
    assert config.data.val_split == Config().data.val_split


def test_flags_override_file(tmp_path):
    path = write_yaml(tmp_path, {"optim": {"lr": 0.2, "momentum": 0.5}, "train": {"epochs": 3}})
    config = build_config(path, {"lr": 0.5, "epochs": None, "seed": 11})
    assert config.optim.lr == 0.5  # flag beats file
    assert config.optim.momentum == 0.5  # file beats default
    assert config.train.epochs == 3  # a flag that was not given (None) leaves the file's value
    assert config.train.seed == 11  # flag beats default


def test_empty_file_gives_defaults(tmp_path):
    assert build_config(write_yaml(tmp_path, ""), {}) == Config()


def test_saved_config_round_trips(tmp_path):
    original = build_config(None, {"lr": 0.3, "batch_size": "full", "class_weights": [1.0, 2.0] + [1.0] * 8,
                                   "limit": 600, "dataset": "mnist"})
    path = write_yaml(tmp_path, original.to_dict())
    assert build_config(path, {}) == original


def test_int_is_accepted_for_float(tmp_path):
    config = build_config(write_yaml(tmp_path, {"optim": {"lr": 1, "weight_decay": 0}}), {})
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert isinstance(config.optim.weight_decay, float)


@pytest.mark.parametrize("section, key, value, words", [
    ("optim", "weight_decay", "fast", ["optim.weight_decay", "a number", "'auto'", "fast"]),
    ("optim", "lr", "fast", ["optim.lr", "a number", "'auto'", "fast"]),
    ("train", "epochs", 2.5, ["train.epochs", "int"]),
    ("optim", "nesterov", "yes please", ["optim.nesterov", "bool"]),
    ("train", "epochs", True, ["train.epochs"]),  # a bool is not an int here
    ("loss", "class_weights", ["a", "b"], ["loss.class_weights"]),
])
def test_wrong_type_is_a_user_error(tmp_path, section, key, value, words):
    path = write_yaml(tmp_path, {section: {key: value}})
    with pytest.raises(UserError) as caught:
        build_config(path, {})
    for word in words:
        assert word in str(caught.value)


def test_unknown_section_suggests_the_closest(tmp_path):
    with pytest.raises(UserError, match=r"unknown config section 'optm'.*did you mean 'optim'"):
        build_config(write_yaml(tmp_path, {"optm": {"lr": 0.1}}), {})


def test_unknown_key_suggests_the_closest(tmp_path):
    with pytest.raises(UserError, match=r"unknown config key 'optim.momentun'.*did you mean 'momentum'"):
        build_config(write_yaml(tmp_path, {"optim": {"momentun": 0.5}}), {})


def test_key_in_the_wrong_section_is_unknown(tmp_path):
    with pytest.raises(UserError, match=r"unknown config key 'data.lr'"):
        build_config(write_yaml(tmp_path, {"data": {"lr": 0.5}}), {})


@pytest.mark.parametrize("text, words", [
    ("optim: [1, 2\n", ["not valid YAML", "line"]),
    ("- just\n- a list\n", ["must be a mapping of sections"]),
    ("optim: 3\n", ["config section 'optim'", "mapping"]),
])
def test_malformed_file_is_a_user_error(tmp_path, text, words):
    with pytest.raises(UserError) as caught:
        build_config(write_yaml(tmp_path, text), {})
    for word in words:
        assert word in str(caught.value)


def alias_bomb(levels: int) -> str:
    """A "billion laughs" YAML value: each level a list of nine aliases to the level below (9^levels strings)."""
    lines = ['    - &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"    - &a{n} [" + ", ".join([f"*a{n - 1}"] * 9) + "]" for n in range(1, levels + 1)]
    return "optim:\n  lr:\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, words", [
    (alias_bomb(9), ["aliases", "expand to more than 10,000 values"]),  # under 600 bytes, 9^10 strings
    (alias_bomb(5), ["aliases", "expand to more than"]),  # small enough that its repr would fit in memory
    ("optim:\n  class_weights: &w [1.0, *w]\n", ["alias inside the very collection it names"]),
    ("optim:\n  lr: " + "9" * 400 + "\n", ["number of 400 digits", "line 2"]),
    ("optim:\n  lr: " + "9" * 5000 + "\n", ["number of 5000 digits"]),  # past Python's int-from-text limit
    ("optim:\n  lr: " + "[" * 5000 + "]" * 5000 + "\n", ["nests deeper than 50 levels", "line 2"]),
    ("optim:\n  lr: 2024-13-45\n", ["cannot be read", "month must be in 1..12"]),
])
def test_hostile_yaml_is_one_short_user_error(tmp_path, text, words):
    with pytest.raises(UserError) as caught:
        build_config(write_yaml(tmp_path, text), {})
    message = str(caught.value)
    for word in words:
        assert word in message
    assert len(message) < 300 and "\n" not in message


def test_aliases_of_a_sensible_size_still_work(tmp_path):
    text = "optim: &shared\n  lr: 0.2\nschedule:\n  schedule: cosine\n  warmup_epochs: 1\nloss:\n  class_weights: &w [1, 2]\n"
    text += "data:\n  dataset: mnist\n"
    assert build_config(write_yaml(tmp_path, text), {}).optim.lr == 0.2


def test_a_yaml_file_of_megabytes_is_refused_unread(tmp_path):
    with pytest.raises(UserError, match="larger than 1000 kB"):
        build_config(write_yaml(tmp_path, "# padding\n" * 200_000), {})


def test_a_huge_value_is_shown_cut_short(tmp_path):
    with pytest.raises(UserError) as caught:
        build_config(write_yaml(tmp_path, {"optim": {"lr": "x" * 100_000}, "data": {}}), {})
    assert "optim.lr" in str(caught.value) and len(str(caught.value)) < 200


def test_shown_never_builds_the_whole_repr_of_a_shared_structure():
    laughs = ["lol"] * 9
    for _ in range(12):  # 9^13 strings: its repr would never finish
        laughs = [laughs] * 9
    assert len(shown(laughs)) <= 80
    assert shown(10 ** 400).startswith("1000") and len(shown(10 ** 400)) <= 80
    assert shown("cifar10") == "'cifar10'"


def test_an_int_beyond_float_range_from_a_mapping_is_a_user_error():
    with pytest.raises(UserError, match="'optim.lr' is too large a number"):
        Config.from_dict({"optim": {"lr": 10 ** 400}}, "a checkpoint")


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_config(tmp_path / "nope.yaml", {})


@pytest.mark.parametrize("flags, words", [
    ({"lr": 0.0}, ["--lr", "greater than 0"]),
    ({"lr": -0.1}, ["--lr"]),
    ({"batch_size": 0}, ["--batch-size", "at least 1"]),
    ({"batch_size": -4}, ["--batch-size"]),
    ({"batch_size": "huge"}, ["batch size", "huge", "full", "auto"]),
    ({"epochs": 0}, ["--epochs", "at least 1"]),
    ({"val_split": 0.0}, ["--val-split"]),
    ({"val_split": 1.0}, ["--val-split"]),
    ({"val_split": 1.5}, ["--val-split"]),
    ({"momentum": 1.0}, ["--momentum", "[0, 1)"]),
    ({"momentum": -0.1}, ["--momentum"]),
    ({"weight_decay": -1e-4}, ["--weight-decay"]),
    ({"nesterov": True, "momentum": 0.0}, ["--nesterov"]),
    ({"limit": 1}, ["--limit"]),
    ({"image_size": 0}, ["--image-size"]),
    ({"patience": 0}, ["--patience"]),
    ({"init_std": 0.0}, ["--init-std"]),
    ({"warmup_epochs": -1.0}, ["--warmup-epochs"]),
    ({"warmup_epochs": 1e308}, ["--warmup-epochs", "between 0 and 1,000,000"]),
    ({"step_epochs": 0}, ["--step-epochs"]),
    ({"step_gamma": 0.0}, ["--step-gamma"]),
    ({"step_gamma": 1.5}, ["--step-gamma"]),
    ({"class_weights": [0.0, 0.0]}, ["--class-weights"]),
    ({"class_weights": [1.0, -1.0]}, ["--class-weights"]),
    ({"class_weights": "balancd"}, ["class weights", "did you mean 'balanced'"]),
    ({"dataset": "cifar-10"}, ["unknown dataset 'cifar-10'", "did you mean 'cifar10'"]),
    ({"dataset": "mnst"}, ["did you mean 'mnist'"]),
    ({"loss": "cross"}, ["unknown loss"]),
    ({"init": "xavier"}, ["unknown init"]),
    ({"schedule": "cosin"}, ["did you mean 'cosine'"]),
    ({"normalize": "pixels"}, ["unknown normalization", "did you mean 'pixel'"]),
    ({"precision": "fp16"}, ["unknown precision"]),
    ({"device": "gpu"}, ["unknown device 'gpu'"]),
    ({"device": "cuda:x"}, ["unknown device"]),
])
def test_every_validation_rule_is_a_user_error(flags, words):
    with pytest.raises(UserError) as caught:
        build_config(None, flags)
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize("flags", [
    {"val_split": 0.5}, {"momentum": 0.0}, {"batch_size": 1}, {"batch_size": "full"}, {"batch_size": "auto"},
    {"epochs": 1}, {"limit": 2}, {"device": "cuda:1"}, {"device": "cpu"}, {"step_gamma": 1.0},
    {"class_weights": "balanced"}, {"class_weights": [0.0, 1.0]}, {"nesterov": True, "momentum": 0.9},
])
def test_values_at_the_edges_are_accepted(flags):
    build_config(None, flags)


def test_field_names_are_unique_across_sections():
    index = {name: setting.section for name, setting in settings().items()}  # the flags are flat
    all_fields = [f.name for cls in sections().values() for f in dataclasses.fields(cls)]
    assert len(all_fields) == len(set(all_fields)) == len(index)
    assert index["lr"] == "optim" and index["dataset"] == "data" and index["epochs"] == "train"
    assert index["loss"] == "loss" and index["out"] == "output" and index["schedule"] == "schedule"
    assert list(sections()) == ["data", "model", "loss", "optim", "schedule", "train", "output"]


def test_parse_batch_size_and_class_weights():
    assert parse_batch_size("64") == 64
    assert parse_batch_size("-3") == -3
    assert parse_batch_size("full") == "full"
    assert parse_class_weights("balanced") == "balanced"
    assert parse_class_weights("1,2.5,0") == [1.0, 2.5, 0.0]
    with pytest.raises(UserError, match="--class-weights"):
        parse_class_weights("1,two")


@pytest.mark.parametrize("path", SHIPPED_CONFIGS or [None], ids=lambda p: p.name if p else "none-yet")
def test_shipped_config_loads(path):
    if path is None:
        pytest.skip("configs/ holds no YAML files yet")
    config = build_config(path, {})
    # every value the file sets is the one the config holds
    for section, values in (yaml.safe_load(path.read_text()) or {}).items():
        for key, value in values.items():
            held = getattr(getattr(config, section), key)
            assert held == value, f"{path.name}: {section}.{key} is {held!r}, the file says {value!r}"


# --- the declarations: each rule, named by its flag or by the YAML key its value came from -------------------

RULES = [  # (field, a bad value, the whole message it gives when the value came from the flag)
    ("val_split", 1.0, "--val-split must be between 0 and 1 (exclusive), not 1.0"),
    ("image_size", 0, "--image-size must be at least 1, not 0"),
    ("limit", 1, "--limit must be at least 2 images, not 1"),
    ("augment", "translate:-1", "--augment 'translate:-1': the shift of translate must be a whole number of pixels, 0 "
                                "or more; write flip, translate:N, translate:N:reflect, both joined by a comma "
                                "(flip,translate:4), or none"),
    ("normalize", "pixels", "unknown normalization 'pixels' (did you mean 'pixel'?); choose one of: pixel, channel, "
                            "none"),
    ("init", "xavier", "unknown init 'xavier'; choose one of: default, zeros, normal"),
    ("init_std", 0.0, "--init-std must be greater than 0, not 0.0"),
    ("init_std", math.inf, "--init-std must be a finite number, not inf"),
    ("loss", "hinge", "unknown loss 'hinge'; choose one of: ce, nll, mse"),
    ("class_weights", [0.0, 0.0], "--class-weights must be finite non-negative numbers, at least one above 0"),
    ("class_weights", [1.0, math.inf], "--class-weights must be finite non-negative numbers, at least one above 0"),
    ("class_weights", "balance", "unknown class weights 'balance' (did you mean 'balanced'?); choose one of: balanced"),
    ("lr", -1.0, "--lr must be greater than 0, not -1.0"),
    ("lr", math.nan, "--lr must be a finite number, not nan"),
    ("batch_size", 0, "--batch-size must be at least 1 (or 'full' or 'auto'), not 0"),
    ("batch_size", "ful", "unknown batch size 'ful' (did you mean 'full'?); choose one of: full, auto"),
    ("momentum", 1.0, "--momentum must be in [0, 1), not 1.0"),
    ("weight_decay", -0.5, "--weight-decay must be 0 or more, not -0.5"),
    ("weight_decay", -math.inf, "--weight-decay must be a finite number, not -inf"),
    ("schedule", "cosin", "unknown schedule 'cosin' (did you mean 'cosine'?); choose one of: plateau, constant, step, cosine, "
                          "onecycle"),
    ("warmup_epochs", 2e6, "--warmup-epochs must be between 0 and 1,000,000, not 2000000.0"),
    ("warmup_epochs", math.inf, "--warmup-epochs must be a finite number, not inf"),
    ("step_epochs", 0, "--step-epochs must be at least 1, not 0"),
    ("step_gamma", 1.5, "--step-gamma must be in (0, 1], not 1.5"),
    ("epochs", 0, "--epochs must be at least 1, not 0"),
    ("patience", 0, "--patience must be at least 1 epoch, not 0"),
    ("seed", 2 ** 32, "--seed must be in [0, 2^32), not 4294967296"),
    ("device", "gpu", "unknown device 'gpu'; choose auto, cpu, cuda or cuda:N"),
    ("precision", "fp16", "unknown precision 'fp16' (did you mean 'bf16'?); choose one of: fp32, tf32, bf16"),
    ("gradient", "numeric", "unknown gradient 'numeric'; choose one of: analytic, autograd"),
    ("threads", MAX_THREADS + 1, f"--threads must be between 1 and {MAX_THREADS}, not {MAX_THREADS + 1}"),
    ("dataset", "cifar-10", "unknown dataset 'cifar-10' (did you mean 'cifar10'?); choose one of: "
                            + ", ".join(DATASET_NAMES)),
]


@pytest.mark.parametrize("key, value, message", RULES)
def test_each_declared_rule_gives_its_message(key, value, message):
    setting = settings()[key]
    assert setting.problem(value) == message
    assert setting.problem(setting.default) is None and setting.problem(None) is None  # None: not set
    with pytest.raises(UserError) as caught:
        build_config(None, {key: value})
    assert str(caught.value) == message


@pytest.mark.parametrize("key, value, message", RULES)
def test_each_rule_names_the_yaml_key_its_value_came_from(key, value, message):
    setting = settings()[key]
    where = f"{setting.key} in configs/my.yaml"
    if message.startswith(setting.flag):  # '--lr must be ...' becomes 'optim.lr in configs/my.yaml must be ...'
        assert setting.problem(value, where) == where + message[len(setting.flag):]
    else:  # 'unknown loss ...' names no one: the key is put before it
        assert setting.problem(value, where) == f"{where}: {message}"


def test_every_field_with_a_rule_has_a_case_above():
    ruled = {key for key, setting in settings().items() if setting.option.checks or setting.option.choices}
    assert ruled == {key for key, _, _ in RULES}


def test_a_flag_and_a_yaml_key_reach_the_same_rule(tmp_path):
    path = write_yaml(tmp_path, {"optim": {"lr": -1}}, name="cifar10.yaml")
    with pytest.raises(UserError) as from_flag:
        build_config(None, {"lr": -1.0})
    assert str(from_flag.value) == "--lr must be greater than 0, not -1.0"
    with pytest.raises(UserError) as from_file:
        build_config(path, {})
    assert str(from_file.value) == f"optim.lr in {path} must be greater than 0, not -1.0"
    with pytest.raises(UserError) as flag_over_file:
        build_config(path, {"lr": -2.0})  # the flag's value is the one checked, and named
    assert str(flag_over_file.value) == "--lr must be greater than 0, not -2.0"
    assert build_config(path, {"lr": 0.1}).optim.lr == 0.1  # a flag that corrects the file is no error


@pytest.mark.parametrize("file, flags, message", [
    ({"optim": {"nesterov": True, "momentum": 0}}, {}, "optim.nesterov in {path} needs a momentum "
                                                        "(optim.momentum in {path} is 0.0) above 0"),
    ({"optim": {"nesterov": True}}, {"momentum": 0.0}, "optim.nesterov in {path} needs a --momentum above 0"),
    ({}, {"nesterov": True, "momentum": 0.0}, "--nesterov needs a --momentum above 0"),
])
def test_the_rule_across_fields_names_where_each_value_came_from(tmp_path, file, flags, message):
    path = write_yaml(tmp_path, file)
    with pytest.raises(UserError) as caught:
        build_config(path, flags)
    assert str(caught.value) == message.format(path=path)


def test_from_dict_checks_types_and_rules_and_names_its_source():
    saved = Config().to_dict()
    assert Config.from_dict(saved, "the checkpoint") == Config()
    saved["optim"]["lr"] = 0
    with pytest.raises(UserError, match=r"^optim\.lr in the checkpoint must be greater than 0, not 0\.0$"):
        Config.from_dict(saved, "the checkpoint")
    later = {"optim": {"lr": 0.5, "lookahead": 2}, "plugins": {"x": 1}}  # names from a later imgcls
    with pytest.raises(UserError, match="unknown config key 'optim.lookahead' in the checkpoint"):
        Config.from_dict(later, "the checkpoint")
    assert Config.from_dict(later, "the checkpoint", strict=False).optim.lr == 0.5
    with pytest.raises(UserError, match="optim.weight_decay in the checkpoint must be a number or 'auto'"):
        Config.from_dict({"optim": {"weight_decay": "fast"}}, "the checkpoint", strict=False)
    with pytest.raises(UserError, match="the checkpoint must be a mapping of sections"):
        Config.from_dict([1, 2], "the checkpoint")


def test_parse_flags_parses_only_the_fields_that_declare_a_parser():
    given = {"batch_size": "full", "class_weights": "1,2", "lr": 0.5, "epochs": None, "dataset": "123"}
    assert parse_flags(given) == {"batch_size": "full", "class_weights": [1.0, 2.0], "lr": 0.5, "epochs": None,
                                  "dataset": "123"}
    assert parse_flags({"batch_size": "32", "class_weights": None}) == {"batch_size": 32, "class_weights": None}


def test_the_help_of_every_field_shows_its_default():
    for key, setting in settings().items():
        text = setting.help_text()
        assert text.count("\\[default: ") == 1, key
        assert "{default}" not in text
        if setting.option.shown_default is None:
            assert text.endswith(f"\\[default: {setting.default}]"), key


# --- bad values from the command line and config files: one 'error:' line, exit 2, nothing written -------

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


def test_saved_config_then_flags(cli, mnist_run, tmp_path, assert_ok):
    previous, _ = mnist_run
    out = tmp_path / "again"
    assert_ok(cli("train", "--config", previous / "config.yaml", "--lr", 0.5, "--epochs", 1, "--out", out, "--quiet"))
    old, _, _ = read_run(previous)
    new, epochs, _ = read_run(out)
    assert new["optim"]["lr"] == 0.5 and new["train"]["epochs"] == 1 and len(epochs) == 1  # the flags
    assert new["output"]["out"] is None  # the folder is not part of the config: a repeat goes to a new one
    assert new["optim"]["momentum"] == 0.5 and new["train"]["seed"] == 3  # the file's, not the defaults
    assert new["data"] == old["data"] and new["data"]["limit"] == 600 and new["data"]["dataset"] == "mnist"
    changed = {(s, k) for s in old for k in old[s] if old[s][k] != new[s][k]}
    assert changed == {("optim", "lr"), ("train", "epochs")}


@pytest.mark.parametrize("args, words", [
    (["--dataset", "cifar-10"], ["unknown dataset 'cifar-10'", "did you mean 'cifar10'"]),
    (["--dataset", "mnst"], ["did you mean 'mnist'"]),
    (["--lr", "0"], ["--lr", "greater than 0"]),
    (["--lr", "-0.1"], ["--lr"]),
    (["--batch-size", "0"], ["--batch-size", "at least 1"]),
    (["--batch-size", "many"], ["batch size", "many"]),
    (["--epochs", "0"], ["--epochs"]),
    (["--val-split", "0"], ["--val-split"]),
    (["--val-split", "1"], ["--val-split"]),
    (["--momentum", "1.0"], ["--momentum"]),
    (["--limit", "1"], ["--limit"]),
    (["--class-weights", "1,two"], ["--class-weights"]),
    (["--device", "tpu"], ["unknown device 'tpu'"]),
    (["--loss", "hinge"], ["unknown loss 'hinge'"]),
    (["--warmup-epochs", "1e308"], ["--warmup-epochs", "between 0 and 1,000,000"]),
])
def test_bad_flags_are_user_errors(cli, args, words, assert_user_error, tmp_path):
    result = cli("train", *args, "--out", tmp_path / "run")
    assert_user_error(result, *words)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, words", [
    ({"optim": {"lrate": 0.1}}, ["unknown config key 'optim.lrate'", "did you mean 'lr'"]),
    ({"optimizer": {"lr": 0.1}}, ["unknown config section 'optimizer'", "did you mean 'optim'"]),
    ({"optim": {"weight_decay": "fast"}}, ["optim.weight_decay", "'auto'", "fast"]),
    ({"optim": {"lr": "fast"}}, ["optim.lr", "'auto'", "fast"]),
    ({"train": {"epochs": "ten"}}, ["train.epochs", "whole number", "'auto'", "ten"]),
])
def test_bad_config_files_are_user_errors(cli, tmp_path, content, words, assert_user_error):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content))
    assert_user_error(cli("train", "--config", path, "--out", tmp_path / "run"), *words)


@pytest.mark.parametrize("text, words", [
    ("optim:\n  lr: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n  momentum: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
     + "".join(f"  k{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("bcdefgh", "cdefghi")),
     ["aliases", "expand to more than"]),
    ("optim:\n  lr: " + "1" * 5000 + "\n", ["number of 5000 digits"]),
    ("optim:\n  lr: " + "[" * 5000 + "]" * 5000 + "\n", ["nests deeper than"]),
])
def test_hostile_config_files_are_one_error_line(cli, tmp_path, text, words, assert_user_error):
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    assert_user_error(cli("train", "--config", path, "--out", tmp_path / "run"), "config file", *words)
    assert not (tmp_path / "run").exists()


def test_missing_config_file(cli, tmp_path, assert_user_error):
    assert_user_error(cli("train", "--config", tmp_path / "nope.yaml", "--out", tmp_path / "run"), "config file",
                      "does not exist")


def test_a_bad_value_is_named_by_its_flag_or_by_its_yaml_key(cli, tmp_path, assert_user_error):
    path = tmp_path / "cifar10.yaml"
    path.write_text(yaml.safe_dump({"optim": {"lr": -1}, "loss": {"loss": "hinge"}}))
    error = assert_user_error(cli("train", "--lr", "-1", "--out", tmp_path / "run"))
    assert error == "error: --lr must be greater than 0, not -1.0"
    error = assert_user_error(cli("train", "-c", path, "--loss", "ce", "--out", tmp_path / "run"))
    assert error == f"error: optim.lr in {path} must be greater than 0, not -1.0"
    error = assert_user_error(cli("train", "-c", path, "--lr", "0.1", "--out", tmp_path / "run"))
    assert error == f"error: loss.loss in {path}: unknown loss 'hinge'; choose one of: ce, nll, mse"
    assert not (tmp_path / "run").exists()


def test_print_config_prints_the_resolved_yaml_and_writes_nothing(cli, tmp_path, assert_ok):
    out = tmp_path / "run"
    result = cli("train", "--dataset", "mnist", "--lr", "0.125", "--epochs", "3", "--out", out, "--print-config")
    assert_ok(result)
    config = yaml.safe_load(result.stdout)
    assert config["optim"]["lr"] == 0.125 and config["train"]["epochs"] == 3
    assert config["data"]["dataset"] == "mnist" and config["output"]["out"] == str(out)
    assert not out.exists()
    assert "--print-config" in plain(cli("train", "--help").output)


def test_a_log_range_whose_values_meet_at_six_digits_keeps_more(tmp_path):
    from imgcls.config import settings
    from imgcls.training.grid import parse_values

    values = parse_values(settings()["lr"], "1:1.000001:5")
    assert len(set(values)) == 5 and values[0] == 1.0 and values[-1] == 1.000001
    assert parse_values(settings()["lr"], "1e-4:1:5") == [0.0001, 0.001, 0.01, 0.1, 1.0]  # still 6 digits


def test_a_log_range_with_equal_ends_says_so(cli, tmp_path, assert_user_error):
    assert_user_error(cli("sweep", "--dataset", "cifar10-sample", "--lr", "0.1:0.1:3", "--out", tmp_path / "s"),
                      "--lr", "0.1:0.1:3", "not distinct", "widen the range")


def test_config_naming_a_folder_says_it_is_a_folder(cli, tmp_path, assert_user_error):
    assert_user_error(cli("train", "--config", tmp_path, "--out", tmp_path / "run"), f"config file {tmp_path}",
                      "is a folder, not a file")
