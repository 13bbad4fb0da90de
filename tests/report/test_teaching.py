"""docs/teaching.md: every command of the page runs, in order, as written (its runs under a temporary folder), and
shows what the page says it shows."""

from __future__ import annotations

import importlib.util
import json

from conftest import REPO_ROOT, plain


def _page_commands(runs):
    spec = importlib.util.spec_from_file_location("make_teaching_figures",
                                                  REPO_ROOT / "scripts" / "make_teaching_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.commands(runs=runs)


def test_every_command_of_the_teaching_page_runs(cli, assert_ok, tmp_path):
    commands = _page_commands(tmp_path)
    assert [c[0] for c in commands] == ["train", "sweep", "sweep", "gradcheck", "train", "train", "compare", "train",
                                        "sweep", "report"]  # one or more per topic, as the page has them
    outputs = []
    for arguments in commands:
        result = cli(*arguments)
        assert_ok(result)
        outputs.append(plain(result.output))
    assert (tmp_path / "templates" / "templates.png").is_file()
    points = json.loads((tmp_path / "losses" / "sweep.json").read_text())["points"]
    losses = {(p["options"]["loss"], p["options"]["lr"]): p for p in points}
    for lr in ("1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"):  # ce and nll: the same numbers
        assert losses[("ce", lr)]["val_top1"] == losses[("nll", lr)]["val_top1"]
    assert "gradient check passed" in outputs[3]
    analytic, autograd = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("analytic",
                                                                                                   "autograd"))
    assert analytic["val"]["top1"] == autograd["val"]["top1"] and analytic["test"]["top1"] == autograd["test"]["top1"]
    assert "top-5" in outputs[7]
    assert "test not used to choose" in outputs[8]
