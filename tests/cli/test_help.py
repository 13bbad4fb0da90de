"""The command surface: every command is listed and has an example in its --help, --version, shell completion,
the same flag names across commands, and help that answers without importing torch."""

import pytest
import typer

from conftest import plain, run_imgcls, run_python
from imgcls import __version__
from imgcls.cli.app import app


def command_paths(command=None, prefix=()):
    command = command or typer.main.get_command(app)
    for name, sub in getattr(command, "commands", {}).items():
        yield prefix + (name,)
        yield from command_paths(sub, prefix + (name,))


def test_every_command_is_listed():
    assert {" ".join(p) for p in command_paths()} == {
        "train", "sweep", "lr-find", "eval", "export-templates", "export", "report", "compare", "predict", "datasets",
        "gradcheck", "cache",
        "cache info", "cache clear"}


@pytest.mark.parametrize("path", [" ".join(p) for p in command_paths()])
def test_every_help_has_an_example(cli, path):
    result = cli(*path.split(), "--help")
    assert result.exit_code == 0, plain(result.output)
    text = " ".join(plain(result.stdout).split())
    assert f"Example: imgcls {path}" in text


def test_root_help_has_an_example_and_completion(cli):
    text = " ".join(plain(cli("--help").stdout).split())
    assert "Example: imgcls" in text and "--install-completion" in text and "--show-completion" in text


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"imgcls {__version__}"


def test_new_commands_answer_help_and_datasets_without_torch(tmp_path):
    """Like train's and eval's, the help of the new commands answers without importing torch; so does datasets."""
    argvs = [[name, "--help"] for name in ("report", "predict", "datasets", "gradcheck")]
    argvs.append(["datasets", "--data-dir", str(tmp_path), "--json"])
    code = ("import sys\nfrom imgcls.cli.app import app\nfor argv in %r:\n    try:\n        app(argv, prog_name='imgcls')\n"
            "    except SystemExit as e:\n        assert not e.code, (argv, e.code)\n"
            "print('torch' in sys.modules)" % argvs)
    done = run_python("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_shell_completion_completes_commands_and_flags():
    done = run_imgcls(env={"_IMGCLS_COMPLETE": "complete_bash", "COMP_WORDS": "imgcls pre", "COMP_CWORD": "1"})
    assert done.returncode == 0 and done.stdout.split() == ["predict"], done.stderr
    done = run_imgcls(env={"_IMGCLS_COMPLETE": "complete_bash", "COMP_WORDS": "imgcls predict --to",
                           "COMP_CWORD": "2"})
    assert done.stdout.split() == ["--top-k"], done.stderr
    # The shell named outright (typer's own switch makes --show-completion take it): detecting it reads the parent
    # processes, and a runner detached from any shell has none there
    script = run_imgcls("--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert script.returncode == 0 and "_IMGCLS_COMPLETE" in script.stdout


def options_by_command():
    """command path -> {long option name: click parameter}"""
    table = {}
    root = typer.main.get_command(app)
    for path in command_paths():
        command = root
        for name in path:
            command = command.commands[name]
        if getattr(command, "commands", None):
            continue
        table[" ".join(path)] = {opt: param for param in command.params for opt in param.opts + param.secondary_opts
                                 if opt.startswith("--")}
    return table


def test_flag_names_are_consistent_across_commands():
    table = options_by_command()
    every = {opt for options in table.values() for opt in options}
    assert all(opt == opt.lower() and "_" not in opt for opt in every), sorted(every)
    synonyms = {"--output", "--outdir", "--output-dir", "--as-json", "--topk", "--k", "--datadir", "--dev", "--n",
                "--checkpoint", "--ckpt", "--image-dir", "--skip-bad", "--seed-value"}
    assert not every & synonyms, every & synonyms
    # one name, one meaning: an option several commands take is a flag in all of them or in none
    for opt in every:
        kinds = {options[opt].is_flag for options in table.values() if opt in options}
        assert len(kinds) == 1, opt
    for command in ("eval", "predict", "datasets", "report", "gradcheck"):
        assert "--json" in table[command], command
    for command in ("train", "eval", "predict"):
        assert "--device" in table[command], command
    for command in ("train", "eval", "datasets"):
        assert "--data-dir" in table[command], command
    assert "--skip-bad-images" in table["train"] and "--skip-bad-images" in table["predict"]
    assert "--out" in table["train"] and "--out" in table["export-templates"]
    assert {"--loss", "--batch-size", "--seed"} <= set(table["train"]) & set(table["gradcheck"])


# --- the module entry point and the help: answered without torch, usage errors as one line ---------------

def test_python_m_imgcls_version():
    from imgcls import __version__

    done = run_python("-m", "imgcls", "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"imgcls {__version__}"


def test_importing_the_cli_does_not_import_torch():
    done = run_python("-c", "import sys; from imgcls.cli import app; print('torch' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["train", "--lr", "0"], ["eval", "--help"]])
def test_help_and_flag_errors_answer_without_torch(argv):
    code = ("import sys\nfrom imgcls.cli.app import app\ntry:\n    app(%r, prog_name='imgcls')\nexcept SystemExit as e:\n"
            "    code = e.code\nprint('torch' in sys.modules, code)" % argv)
    done = run_python("-c", code)
    last = done.stdout.strip().splitlines()[-1]
    expected_code = 2 if "--lr" in argv else 0
    assert last == f"False {expected_code}", done.stdout + done.stderr


def test_train_help_shows_the_defaults(cli):
    """Each default comes from Config() and is printed, not eaten as rich markup ("[default: ...]")."""
    from imgcls.config import Config

    text = " ".join(plain(cli("train", "--help").output).replace("\u2502", " ").split())  # without the box edges
    defaults = Config()
    for shown in (f"[default: {defaults.optim.lr}]", f"[default: {defaults.train.epochs}]",
                  "[default: all cores]", "[default: runs/<dataset>-<date>-<time>"):
        assert shown in text, shown


def test_every_config_field_is_a_flag_of_train_with_its_help_and_default(cli, monkeypatch):
    """The flags are made from the config's declarations: a new field cannot be left out of `train`, and each
    shows its help and default in its panel."""
    from imgcls.config import settings

    monkeypatch.setenv("COLUMNS", "400")  # a line a flag: no help is wrapped
    panel, rows = None, {}
    for line in plain(cli("train", "--help").output).splitlines():
        if line.startswith("\u256d\u2500 "):  # ╭─ Data ───╮
            panel = line[3:].split(" \u2500")[0]
        elif line.startswith("\u2502 --"):
            rows[line.split()[1]] = (panel, " ".join(line.split()))
    for setting in settings().values():
        assert setting.flag in rows, setting.flag
        panel, row = rows[setting.flag]
        assert panel == setting.option.panel, setting.flag
        assert setting.help_text().replace("\\[", "[") in row, row
        assert row.count("[default: ") == 1, row
        assert (f"--no-{setting.flag[2:]}" in row) == (setting.cli_type() is bool), row
    own = {"--config", "--print-config", "--help", "--overwrite", "--resume", "--quiet"}
    assert set(rows) == own | {setting.flag for setting in settings().values()}


@pytest.mark.parametrize("argv, words", [
    (["train", "--seed", "abc"], ["--seed", "imgcls train --help"]),
    (["train", "--nosuch", "1"], ["--nosuch"]),
    (["trian"], ["Did you mean 'train'"]),
    (["train", "--epochs"], ["--epochs", "requires an argument"]),
])
def test_usage_errors_from_the_command_are_one_error_line(argv, words):
    """The real entry point (python -m imgcls): click's own usage errors end as one `error:` line, exit 2."""
    done = run_python("-m", "imgcls", *argv)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr and "\u256d" not in done.stderr  # no traceback, no box
    for word in words:
        assert word in lines[0]


def test_a_user_error_is_the_only_line_on_stderr(tmp_path):
    """Nothing before the error line: a decoding bar that never showed leaves no blank line behind."""
    done = run_imgcls("train", "--dataset", "mnist", "--data-dir", tmp_path / "none", "--epochs", 1,
                      "--out", tmp_path / "run")
    assert done.returncode == 2
    assert done.stderr.startswith("error: mnist not found") and done.stderr.count("\n") == 1, repr(done.stderr)
