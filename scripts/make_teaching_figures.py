"""Run every command of docs/teaching.md (its `bash` blocks, in order) and copy their pictures into docs/.

    python scripts/make_teaching_figures.py [--runs DIR]

The commands write under runs/teaching/ (or DIR); tests/report/test_teaching.py runs the same commands.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "teaching.md"
RUNS = "runs/teaching"
FIGURES = {"templates/templates.png": "teaching-templates.png", "losses/sweep.png": "teaching-losses.png",
           "batch/sweep.png": "teaching-batch.png"}  # under the runs folder -> docs/


def commands(page: Path = PAGE, runs: Path | None = None) -> list[list[str]]:
    """The page's `imgcls ...` lines as argument lists (without `imgcls`), runs/teaching/ moved to `runs`."""
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines() if line.strip().startswith("imgcls ")]
    return [[str(runs / arg[len(RUNS) + 1:]) if runs and arg.startswith(RUNS + "/") else arg
             for arg in shlex.split(line)[1:]] for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / RUNS, help="where the commands write their runs")
    runs = parser.parse_args().runs
    from typer.testing import CliRunner

    from imgcls.cli.app import app

    shutil.rmtree(runs, ignore_errors=True)
    for arguments in commands(runs=runs):
        print("imgcls", shlex.join(arguments), flush=True)
        result = CliRunner().invoke(app, [*arguments, *(["--overwrite"] if arguments[0] == "train" else [])])
        print(result.output)
        if result.exit_code != 0:
            raise SystemExit(f"failed: imgcls {shlex.join(arguments)}")
    for source, target in FIGURES.items():
        shutil.copyfile(runs / source, REPO / "docs" / target)
        print(f"docs/{target}")


if __name__ == "__main__":
    main()
