"""Property-based fuzzing (hypothesis) of everything a user or a file can hand imgcls: config files and flag
values, the train command's options, damaged image folders and damaged checkpoints. Every case must either work
or end as a clear error: exit code 2, an 'error:' line (or click's usage error for a value of the wrong type),
no traceback, no hang, and no temporary or partial file left behind.

The number of cases each test ran, and how many of the runs worked, is printed at the end of the module
("fuzz cases run: ..."). IMGCLS_FUZZ_SCALE=10 runs ten times as many cases, for a deeper search."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import plain, write_image_folder
from imgcls.config import Config, build_config, sections
from imgcls.errors import UserError
from imgcls.report.figures import write_run_figures as REAL_WRITE_RUN_FIGURES  # no_figures replaces the module's
from imgcls.runs.rundir import RUN_FILES

CASES: Counter = Counter()
WORKED: Counter = Counter()
WATCHDOG_SECONDS = 60
SCALE = float(os.environ.get("IMGCLS_FUZZ_SCALE", "1"))


def fuzz_settings(examples: int):
    # Under CI the cases are the same every run, so a landing never hangs on a lucky draw; a run on a
    # developer's machine draws new ones each time and so keeps searching.
    return settings(max_examples=max(1, round(examples * SCALE)), deadline=None, database=None, print_blob=True,
                    derandomize=bool(os.environ.get("CI")),
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


@pytest.fixture(scope="module", autouse=True)
def report_case_count(request):
    yield
    total = sum(CASES.values())
    detail = ", ".join(f"{name} {count}" + (f" ({WORKED[name]} worked)" if name in WORKED else "")
                       for name, count in sorted(CASES.items()))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nfuzz cases run: {total} ({detail})")


class Hang(Exception):
    pass


@contextmanager
def watchdog(seconds: int = WATCHDOG_SECONDS):
    """Fail a case that runs for longer than `seconds` (a hang) instead of waiting for it forever."""
    def expired(signum, frame):
        raise Hang(f"a fuzz case ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def no_figures():
    """The figures drawn after training take seconds each (matplotlib) and are not what is fuzzed here."""
    patch = pytest.MonkeyPatch()
    try:
        import imgcls.report.figures
    except ImportError:
        pass
    else:
        patch.setattr(imgcls.report.figures, "write_run_figures", lambda path, *args, **kwargs: [], raising=False)
    yield
    patch.undo()


def temporary_files(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


def check_outcome(result, out: Path | None = None) -> str:
    """0, or 2 with one clear error; never a traceback. Returns the error line ('' on success)."""
    output = plain(result.output)
    assert not isinstance(result.exception, Hang), result.exception
    assert result.exit_code in (0, 2), f"exit code {result.exit_code}, exception {result.exception!r}\n{output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), f"escaped: {result.exception!r}"
    assert "Traceback" not in output, output
    if out is not None:
        assert not temporary_files(out), f"temporary files left in {out}: {temporary_files(out)}"
    if result.exit_code == 0:
        return ""
    stderr = plain(result.stderr)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    usage = "Invalid value" in stderr or "No such option" in stderr or "Missing" in stderr or "requires" in stderr
    assert len(errors) == 1 or (not errors and usage), f"no single clear error:\n{stderr}"
    return errors[0] if errors else "usage"


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} in a metrics file")
    return json.loads(text, parse_constant=refuse)


# --- (a) config files and flag values, straight into the config loader ------------------------------

REAL_SECTIONS = {name: [f for f in cls.__dataclass_fields__] for name, cls in sections().items()}
ALL_KEYS = sorted({key for keys in REAL_SECTIONS.values() for key in keys})
CHOICES = ["ce", "nll", "mse", "default", "zeros", "normal", "constant", "step", "cosine", "onecycle", "pixel",
           "channel", "none", "fp32", "tf32", "bf16", "cifar10-sample", "mnist", "imagefolder", "balanced", "full",
           "auto", "cpu", "cuda", "cuda:0", "cuda:x"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=0, max_value=1),
    st.text(max_size=12), st.sampled_from(CHOICES),
    st.sampled_from(["1e-3", "1e999", "nan", "inf", "-0", "0x10", "1_000", "\u00b2", ""]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5),
                                                                                            inner, max_size=3),
                      max_leaves=6)
section_names = st.sampled_from(sorted(REAL_SECTIONS)) | st.text(max_size=8)


@st.composite
def config_mappings(draw):
    mapping = {}
    for section in draw(st.lists(section_names, max_size=5, unique=True)):
        keys = REAL_SECTIONS.get(section, []) + ["lrate", "", "epochs"]
        if draw(st.booleans()):
            mapping[section] = draw(values)  # not a mapping of keys at all
        else:
            mapping[section] = {key: draw(values) for key in draw(st.lists(st.sampled_from(keys) | st.text(max_size=6),
                                                                          max_size=4, unique=True))}
    return mapping


def build_or_user_error(path: Path | None, flags: dict) -> Config | None:
    try:
        return build_config(path, flags)
    except UserError as error:
        assert str(error) and "\n" not in str(error).strip(), repr(error)
        return None


def assert_round_trips(config: Config, folder: Path) -> None:
    """A config that validates can be written as config.yaml and read back to itself (how --resume works)."""
    saved = folder / "saved.yaml"
    saved.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    assert build_config(saved, {}) == config


@fuzz_settings(300)
@given(mapping=config_mappings())
def test_fuzz_config_mappings(tmp_path, mapping):
    CASES["config files"] += 1
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(mapping, allow_unicode=True))
    config = build_or_user_error(path, {})
    if config is not None:
        assert_round_trips(config, tmp_path)


@fuzz_settings(150)
@given(text=st.text(max_size=80) | st.binary(max_size=80).map(lambda b: b.decode("latin-1")),
       raw=st.binary(max_size=60))
def test_fuzz_config_text(tmp_path, text, raw):
    CASES["config text"] += 1
    path = tmp_path / "config.yaml"
    path.write_text(text)
    build_or_user_error(path, {})
    path.write_bytes(raw)
    build_or_user_error(path, {})


# integers as YAML text, up to past Python's 4300-digit limit on reading ints (str() of such an int fails too)
huge_numbers = st.builds(lambda sign, digit, count, tail: f"{sign}{digit}{'0' * count}{tail}",
                         st.sampled_from(["", "-", "+"]), st.sampled_from("19"), st.integers(0, 6000),
                         st.sampled_from(["", ".5", "e3", "_000"]))
yaml_leaves = huge_numbers | st.sampled_from(["lol", "0.1", "1", "null", "true", "[]", "{}"])


@st.composite
def aliased_yaml(draw):
    """A config whose real keys take values made of anchors and aliases: a chain of lists, each holding
    `width` aliases to the one before (at 9 x 9 levels, a "billion laughs" bomb), sometimes an alias
    inside its own anchor, and huge numbers as leaves."""
    levels, width = draw(st.integers(0, 9)), draw(st.integers(1, 9))
    leaf = draw(yaml_leaves)
    chain = [f"&a0 [{', '.join([leaf] * width)}]"]
    chain += [f"&a{n} [{', '.join([f'*a{n - 1}'] * width)}]" for n in range(1, levels + 1)]
    if draw(st.booleans()):
        chain.append("&loop [1, *loop]")  # a list that holds itself
    first, second = draw(st.lists(st.sampled_from(ALL_KEYS), min_size=2, max_size=2, unique=True))
    index = {key: section for section, keys in REAL_SECTIONS.items() for key in keys}
    value = draw(st.sampled_from([f"*a{levels}", "*a0", leaf]))
    body = {index[first]: [f"  {first}: [{', '.join(chain)}]"], index[second]: [f"  {second}: {value}"]}
    if index[first] == index[second]:
        return f"{index[first]}:\n" + "\n".join(body[index[first]]) + "\n"
    return "".join(f"{section}:\n" + "\n".join(lines) + "\n" for section, lines in body.items())


@fuzz_settings(150)
@given(text=aliased_yaml() | huge_numbers.map(lambda number: f"optim:\n  lr: {number}\ntrain:\n  epochs: {number}\n"))
def test_fuzz_config_aliases_and_huge_numbers(tmp_path, text):
    """Aliases and huge numbers load in bounded time and memory: a config, or one short error line."""
    CASES["config aliases and huge numbers"] += 1
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with watchdog(20):
        try:
            build_config(path, {})
        except UserError as error:
            assert "\n" not in str(error) and len(str(error)) < 400, repr(error)[:1000]
        else:
            WORKED["config aliases and huge numbers"] += 1


@fuzz_settings(300)
@given(flags=st.dictionaries(st.sampled_from(ALL_KEYS), values, max_size=6))
def test_fuzz_flag_values(tmp_path, flags):
    CASES["flag values"] += 1
    config = build_or_user_error(None, flags)
    if config is not None:
        assert_round_trips(config, tmp_path)


# --- (b) the train command with random options on the embedded sample --------------------------------

def number_text(*extremes):
    return st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e30", "1e-30", "abc", "", *extremes]) \
        | st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr)


TRAIN_OPTIONS = {
    "--lr": number_text("0.01", "0.1", "1e3") | st.floats(1e-4, 1.0).map(str),
    "--momentum": number_text("0.9", "0.999", "1") | st.floats(0, 1).map(str),
    "--weight-decay": number_text("0.01"),
    "--batch-size": st.sampled_from(["1", "7", "64", "full", "auto", "0", "-3", "ful", "2.5", "\u00b2", "99999999"]),
    "--epochs": st.sampled_from(["1", "2", "0", "-1", "x"]),
    "--val-split": number_text("0.1", "0.5", "0.99", "1"),
    "--limit": st.sampled_from(["2", "20", "100", "150", "1", "0", "-5"]),
    "--image-size": st.sampled_from(["1", "4", "16", "32", "0", "-2"]),
    "--normalize": st.sampled_from(["pixel", "channel", "none", "pixels", ""]),
    "--loss": st.sampled_from(["ce", "nll", "mse", "hinge"]),
    "--init": st.sampled_from(["default", "zeros", "normal", "zero"]),
    "--init-std": number_text("0.01", "10"),
    "--schedule": st.sampled_from(["constant", "step", "cosine", "onecycle", "linear"]),
    "--warmup-epochs": number_text("0.5", "1", "3"),
    "--step-epochs": st.sampled_from(["1", "2", "0", "-1", str(2 ** 70)]),
    "--step-gamma": number_text("0.5", "1", "2"),
    "--class-weights": st.sampled_from(["balanced", "balance", "1,2", ",".join(["1"] * 10), ",".join(["0"] * 10),
                                        "1,nan", "", "x"]),
    "--patience": st.sampled_from(["1", "2", "0", "-1"]),
    "--seed": st.sampled_from(["0", "1", "-1", str(2 ** 32), str(2 ** 70)]),
    "--device": st.sampled_from(["cpu", "auto", "cuda", "cuda:3", "tpu", "cuda:x"]),
    "--precision": st.sampled_from(["fp32", "tf32", "bf16", "fp16"]),
    "--gradient": st.sampled_from(["analytic", "autograd", "numeric"]),
    "--threads": st.sampled_from(["1", "2", "0", "-1", "100000", "x"]),
    "--dataset": st.sampled_from(["cifar10-sample"] * 6 + ["cifar-10", "mnist", "imagefolder"]),
    "--nesterov": st.just(None),
    "--no-nesterov": st.just(None),
    "--skip-bad-images": st.just(None),
    "--stream": st.just(None),
}


@st.composite
def train_arguments(draw):
    chosen = draw(st.lists(st.sampled_from(sorted(TRAIN_OPTIONS)), max_size=8, unique=True))
    args = []
    for name in chosen:
        value = draw(TRAIN_OPTIONS[name])
        args += [name] if value is None else [name, value]
    if "--limit" not in chosen:
        args += ["--limit", "100"]  # keep each case quick: at most 100 training images ...
    if "--epochs" not in chosen:
        args += ["--epochs", "1"]  # ... and 1 or 2 epochs
    return args


@fuzz_settings(60)
@given(args=train_arguments())
def test_fuzz_train_options(cli, tmp_path_factory, no_figures, monkeypatch, args):
    CASES["train options"] += 1
    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path_factory.getbasetemp() / "no-data-here"))
    out = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp())) / "run"
    try:
        with watchdog():
            result = cli("train", *args, "--out", out, "--quiet")
        error = check_outcome(result, out)
        WORKED["train options"] += result.exit_code == 0
        if result.exit_code == 0:
            assert sorted(p.name for p in out.iterdir() if p.name in RUN_FILES) == sorted(RUN_FILES)
            metrics = strict_json((out / "metrics.json").read_text())
            assert all(math.isfinite(metrics[split]["loss"]) for split in ("val", "test"))
            for line in (out / "epochs.jsonl").read_text().splitlines():
                strict_json(line)
        elif "diverged" not in error:  # refused before training: nothing of a run was written
            assert not out.exists() or not any(out.iterdir()), f"{error}: left {list(out.iterdir())}"
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


# --- (c) damaged image folders --------------------------------------------------------------------------

LAYOUT = {"train": {"ant": [(8, 8)] * 5, "bee": [(8, 8)] * 5, "cat": [(8, 8)] * 5},
          "test": {"ant": [(8, 8)] * 2, "bee": [(8, 8)] * 2, "cat": [(8, 8)] * 2}}

damages = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.floats(0, 1)),
    st.tuples(st.just("garble"), st.integers(0, 10_000), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)),
                                                                   min_size=1, max_size=8)),
    st.tuples(st.just("zero-bytes"), st.integers(0, 10_000), st.none()),
    st.tuples(st.just("junk-file"), st.integers(0, 10_000), st.sampled_from(["notes.txt", "x.jpg", "y.png", ".z.png",
                                                                            "w.bmp", "t.tiff", "Thumbs.db"])),
    # what git-annex or DVC leave before a fetch (a link to nothing), links round in a loop, and FIFOs
    st.tuples(st.just("dangling-symlink"), st.integers(0, 10_000), st.sampled_from(["gone.png", "gone.jpg", "gone"])),
    st.tuples(st.just("symlink-loop"), st.integers(0, 10_000), st.sampled_from(["file", "folder", "parent"])),
    st.tuples(st.just("fifo"), st.integers(0, 10_000), st.sampled_from(["pipe.png", "pipe.jpg", "pipe"])),
    st.tuples(st.just("empty-class"), st.integers(0, 10_000), st.none()),
    st.tuples(st.just("new-empty-class"), st.integers(0, 10_000), st.sampled_from(["train", "test"])),
    st.tuples(st.just("drop-class"), st.integers(0, 10_000), st.sampled_from(["train", "test"])),
    st.tuples(st.just("other-size"), st.integers(0, 10_000), st.sampled_from([(8, 9), (16, 16), (1, 1)])),
    st.tuples(st.just("nested"), st.integers(0, 10_000), st.none()),
    st.tuples(st.just("rename"), st.integers(0, 10_000), st.sampled_from([".jpg", ".gif", ".txt", ".PNG", ""])),
    st.tuples(st.just("drop-split"), st.integers(0, 10_000), st.sampled_from(["train", "test"])),
)


def damage_folder(root: Path, damage) -> None:
    kind, pick, how = damage
    files = sorted(p for p in root.rglob("*") if p.is_file())
    folders = sorted(p for p in root.glob("*/*") if p.is_dir())
    target = files[pick % len(files)] if files else None
    if kind == "truncate" and target:
        data = target.read_bytes()
        target.write_bytes(data[: int(len(data) * how)])
    elif kind == "garble" and target:
        data = bytearray(target.read_bytes())
        for where, byte in how:
            if data:
                data[min(int(where * len(data)), len(data) - 1)] = byte
        target.write_bytes(bytes(data))
    elif kind == "zero-bytes" and target:
        target.write_bytes(b"")
    elif kind == "junk-file" and folders:
        (folders[pick % len(folders)] / how).write_bytes(b"this is not an image\x00\xff")
    elif kind in ("dangling-symlink", "symlink-loop", "fifo") and folders:
        add_odd_entry(folders[pick % len(folders)], kind, how)
    elif kind == "empty-class" and folders:
        for entry in folders[pick % len(folders)].iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    elif kind == "new-empty-class":
        (root / how / f"extra{pick % 3}").mkdir(parents=True, exist_ok=True)
    elif kind == "drop-class" and (root / how).is_dir():
        classes = sorted((root / how).iterdir())
        if classes:
            shutil.rmtree(classes[pick % len(classes)])
    elif kind == "other-size" and folders:
        write_image_folder(root / "__tmp", {"s": {"c": [how]}}, seed=pick)
        shutil.move(str(root / "__tmp" / "s" / "c" / "000.png"), folders[pick % len(folders)] / "odd.png")
        shutil.rmtree(root / "__tmp")
    elif kind == "nested" and target:
        (target.parent / "deeper").mkdir(exist_ok=True)
        shutil.copy(target, target.parent / "deeper" / target.name)
    elif kind == "rename" and target:
        target.rename(target.with_suffix(how))
    elif kind == "drop-split":
        shutil.rmtree(root / how, ignore_errors=True)


def add_odd_entry(folder: Path, kind: str, how: str) -> None:
    """A symlink to nothing, a symlink loop (a file linked to itself, a folder to itself or its parent) or a FIFO."""
    name = how if kind in ("dangling-symlink", "fifo") else "loop.png" if how == "file" else f"loop-{how}"
    path = folder / name
    if os.path.lexists(path):
        return
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dangling-symlink":
        path.symlink_to(f"missing-{how}")
    else:
        path.symlink_to({"file": name, "folder": ".", "parent": ".."}[how])


@fuzz_settings(40)
@given(damage_list=st.lists(damages, min_size=1, max_size=4),
       extra=st.lists(st.sampled_from(["--skip-bad-images", "--image-size=8", "--image-size=3", "--normalize=none"]),
                      max_size=2, unique=True),
       stream=st.booleans())
def test_fuzz_damaged_image_folders(cli, tmp_path_factory, no_figures, monkeypatch, damage_list, extra, stream):
    CASES["damaged image folders"] += 1
    work = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    monkeypatch.setenv("IMGCLS_CACHE", str(work / "cache"))
    try:
        root = write_image_folder(work / "data", LAYOUT)
        for damage in damage_list:
            damage_folder(root, damage)
        out = work / "run"
        with watchdog():
            result = cli("train", "--dataset", "imagefolder", "--data-dir", root, "--epochs", 1, "--batch-size", 4,
                         "--device", "cpu", "--out", out, "--quiet", *extra, *(["--stream"] if stream else []))
        error = check_outcome(result, out)
        WORKED["damaged image folders"] += result.exit_code == 0
        assert not temporary_files(work / "cache"), "a half-built cache entry was left behind"
        # refused before training: nothing written. (--stream decodes as it trains, so it finds a bad image only
        # when it reaches it, possibly after some epochs: those runs keep their whole checkpoints.)
        if result.exit_code == 2 and "diverged" not in error and not stream:
            assert not out.exists(), f"{error}: a refused run wrote {list(out.iterdir())}"
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- (d) damaged checkpoints ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(cli, tmp_path_factory, no_figures):
    root = write_image_folder(tmp_path_factory.mktemp("fuzz-data") / "data", LAYOUT)
    out = tmp_path_factory.mktemp("fuzz-run") / "run"
    result = cli("train", "--dataset", "imagefolder", "--data-dir", root, "--epochs", 2, "--batch-size", 4,
                 "--device", "cpu", "--out", out, "--quiet")
    assert result.exit_code == 0, plain(result.output)
    return out


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                         max_size=3), max_leaves=5)


def edit_meta(meta, path: list, action: str, value):
    """Delete or replace the entry at `path` (indices into the nested JSON, taken modulo each level's size)."""
    node = meta
    for depth, step in enumerate(path):
        children = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
        if not children:
            return
        key = children[step % len(children)]
        if depth == len(path) - 1 or not isinstance(node[key], (dict, list)):
            if action == "delete":
                del node[key]
            else:
                node[key] = value
            return
        node = node[key]


checkpoint_damages = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1), st.none()),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=6),
              st.booleans()),
    st.tuples(st.just("meta"), st.lists(st.integers(0, 50), min_size=1, max_size=4),
              st.tuples(st.sampled_from(["delete", "replace"]), json_values)),
    st.tuples(st.just("metadata"), st.sampled_from(["imgcls_format", "meta", "other"]),
              st.text(max_size=20) | st.sampled_from(["0", "1", "2", "99", "{}", "[]", "null", '{"classes": 1}'])),
)


def damage_checkpoint(source: Path, target: Path, damage) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    kind, what, how = damage
    data = bytearray(source.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    if kind == "truncate":
        target.write_bytes(bytes(data[: int(len(data) * what)]))
    elif kind == "flip":  # in the JSON header (how=True) or anywhere
        span = header if how else len(data)
        for where, byte in what:
            data[min(int(where * span), len(data) - 1)] = byte
        target.write_bytes(bytes(data))
    else:
        with safe_open(str(source), "pt") as f:
            metadata, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
        if kind == "meta":
            meta = json.loads(metadata["meta"])
            edit_meta(meta, what, *how)
            metadata["meta"] = json.dumps(meta)
        else:
            metadata[what] = how
        save_file(tensors, str(target), metadata=metadata)


@fuzz_settings(100)
@given(damage=checkpoint_damages, command=st.sampled_from(["eval", "eval", "export-templates"]))
def test_fuzz_damaged_checkpoints(cli, trained, tmp_path_factory, damage, command):
    CASES["damaged checkpoints"] += 1
    work = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    try:
        path = work / "model.safetensors"
        damage_checkpoint(trained / "best.safetensors", path, damage)
        extra = ["--device", "cpu", "--json"] if command == "eval" else ["--out", work / "tpl", "--size", 16]
        with watchdog():
            result = cli(command, path, *extra)
        check_outcome(result, work)
        WORKED["damaged checkpoints"] += result.exit_code == 0
        if result.exit_code == 0 and command == "eval":
            strict_json(result.stdout)
        if result.exit_code == 2:
            assert not (work / "tpl").exists()
    finally:
        shutil.rmtree(work, ignore_errors=True)


run_file_damages = st.tuples(st.sampled_from(["metrics.json", "epochs.jsonl"]), st.lists(st.integers(0, 50), max_size=4),
                             st.tuples(st.sampled_from(["delete", "replace"]), json_values))


def damage_run_file(run: Path, damage) -> None:
    """Valid JSON of the wrong shape: an entry deleted or replaced (no path: the whole file is another value)."""
    name, path, how = damage
    text = (run / name).read_text()
    document = json.loads(text) if name == "metrics.json" else [json.loads(line) for line in text.splitlines()]
    if path:
        edit_meta(document, path, *how)
    else:
        document = how[1]
    if name == "epochs.jsonl" and isinstance(document, list):
        (run / name).write_text("".join(json.dumps(record) + "\n" for record in document))
    else:
        (run / name).write_text(json.dumps(document) + "\n")


@fuzz_settings(40)
@given(damage=run_file_damages, as_json=st.booleans(), figures=st.booleans())
def test_fuzz_report_on_run_files_of_the_wrong_shape(cli, trained, tmp_path_factory, damage, as_json, figures):
    """`report` on a run folder whose metrics.json or epochs.jsonl holds valid JSON of the wrong shape: it reports,
    or says in one line which file is wrong; never a traceback. The figures read the same files."""
    CASES["wrong-shape run files"] += 1
    work = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    try:
        run = work / "run"
        run.mkdir()
        for name in ("config.yaml", "epochs.jsonl", "metrics.json"):  # no checkpoint: no templates.png to draw
            shutil.copy(trained / name, run / name)
        damage_run_file(run, damage)
        with watchdog():
            result = cli("report", run, "--no-figures", *(["--json"] if as_json else []))
        error = check_outcome(result, run)
        WORKED["wrong-shape run files"] += result.exit_code == 0
        if error:
            assert damage[0] in error, error
        elif figures:
            with watchdog():
                drawn = REAL_WRITE_RUN_FIGURES(run)
            assert {path.name for path in drawn} <= {"curves.png", "confusion.png"}
    finally:
        shutil.rmtree(work, ignore_errors=True)


@fuzz_settings(25)
@given(damage=checkpoint_damages)
def test_fuzz_resume_from_a_damaged_last_checkpoint(cli, trained, tmp_path_factory, no_figures, damage):
    """`--resume` of a run whose last.safetensors is damaged: it resumes, or it says why it cannot."""
    resume_with_another_last(cli, trained, tmp_path_factory, "damaged resume",
                             lambda source, target: damage_checkpoint(source, target, damage))


def resume_with_another_last(cli, trained, tmp_path_factory, case: str, write_last) -> None:
    """A copy of the trained run whose last.safetensors is write_last(the run's own, the copy's), resumed: it
    resumes or says why it cannot, and never hangs."""
    CASES[case] += 1
    work = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    try:
        run = work / "run"
        run.mkdir()
        for name in ("config.yaml", "epochs.jsonl", "best.safetensors"):
            shutil.copy(trained / name, run / name)
        write_last(trained / "last.safetensors", run / "last.safetensors")
        with watchdog():
            result = cli("train", "--resume", run, "--quiet")
        check_outcome(result, run)
        WORKED[case] += result.exit_code == 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


resume_state_damages = st.one_of(
    st.tuples(st.just("meta"), st.sampled_from(["resume", "step", "epoch", "config", "data_fingerprint"]),
              st.lists(st.integers(0, 50), max_size=4), st.sampled_from(["delete", "replace"]), json_values),
    st.tuples(st.just("tensor"), st.sampled_from(["state.optimizer.0.momentum_buffer", "state.optimizer.1.momentum_buffer",
                                                  "state.optimizer.7.momentum_buffer", "state.optimizer.0.other",
                                                  "state.loss_sum", "state.weight_sum", "state.correct",
                                                  "state.torch_rng"]),
              st.lists(st.integers(0, 5), max_size=3),
              st.sampled_from([torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool])),
)


def craft_resume_state(source: Path, target: Path, damage) -> None:
    """A last.safetensors whose resume state (not its model) is crafted: a JSON entry under one of its resume
    keys replaced or deleted, or one of its state tensors of another shape or type."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), "pt") as f:
        metadata, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(metadata["meta"])
    if damage[0] == "meta":
        _, key, path, action, value = damage
        if path and isinstance(meta.get(key), (dict, list)):
            edit_meta(meta[key], path, action, value)
        elif action == "delete":
            meta.pop(key, None)
        else:
            meta[key] = value
    else:
        _, name, shape, dtype = damage
        tensors[name] = torch.zeros(shape, dtype=dtype)
    metadata["meta"] = json.dumps(meta)
    save_file(tensors, str(target), metadata=metadata)


@fuzz_settings(40)
@given(damage=resume_state_damages)
def test_fuzz_resume_from_a_crafted_resume_state(cli, trained, tmp_path_factory, no_figures, damage):
    """Crafted optimizer, scheduler and progress state: resume refuses it in one line, or (where the change
    means nothing to a run) resumes; never a traceback or a hang."""
    resume_with_another_last(cli, trained, tmp_path_factory, "crafted resume state",
                             lambda source, target: craft_resume_state(source, target, damage))
