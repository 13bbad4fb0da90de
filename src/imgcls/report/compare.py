"""`imgcls compare RUN RUN ...`: runs side by side, read from their folders as `report` reads them: a row a run
(the options that differ, the best epoch, its top-1 and top-k, the time) and their validation curves overlaid."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from rich.text import Text

from imgcls.errors import UserError
from imgcls.files import printable
from imgcls.report.report import fitted_table, percent
from imgcls.report.runreport import flat_config, load_run
from imgcls.runs.rundir import topk_of

NOT_COMPARED = ("output.out",)  # config.yaml always records out: null (the folder is the run's name instead)


def load_runs(paths: list[Path]):
    """load_run of every folder; fewer than two, or one folder twice, is a mistake."""
    if len(paths) < 2:
        raise UserError(f"compare needs at least two run folders, got {len(paths)}; e.g. imgcls compare runs/a runs/b")
    seen: dict[Path, Path] = {}
    for path in paths:
        resolved = Path(path).resolve()
        if resolved in seen:
            also = f" (also as {printable(seen[resolved])})" if str(seen[resolved]) != str(path) else ""
            raise UserError(f"{printable(path)} is given twice{also}; give each run folder once")
        seen[resolved] = path
    return [load_run(Path(path), pairs=0) for path in paths]


def differing_keys(configs: list[dict]) -> list[str]:
    """The config keys whose values are not the same in every run (a key some runs lack counts as differing)."""
    flats = [flat_config(config) for config in configs]
    keys = dict.fromkeys(key for flat in flats for key in flat if key not in NOT_COMPARED)
    missing = object()
    return [key for key in keys if len({repr(flat.get(key, missing)) for flat in flats}) > 1]


def labels(paths: list[Path]) -> list[str]:
    """Each run's folder name, or the path as given where two runs share a name."""
    names = [Path(path).resolve().name for path in paths]
    return [printable(name if names.count(name) == 1 else str(path)) for name, path in zip(names, paths)]


def comparison_rows(summaries) -> tuple[list[dict], list[str]]:
    """A dict a run (accuracies as fractions, None where the run did not finish), and the differing keys."""
    keys = differing_keys([summary.config for summary in summaries])
    rows = []
    for label, summary in zip(labels([s.path for s in summaries]), summaries):
        flat, metrics = flat_config(summary.config), summary.metrics
        row = {"run": label, "path": str(summary.path), "dataset": flat.get("data.dataset"),
               "options": {key: flat.get(key) for key in keys}, "finished": metrics is not None,
               "diverged": summary.diverged is not None,
               "epochs": len(summary.epochs), "best_epoch": metrics["best_epoch"] if metrics else None,
               "seconds": sum(record["seconds"] for record in summary.epochs)}
        for split in ("val", "test"):
            row[f"{split}_top1"] = metrics[split]["top1"] if metrics else None
            row[f"{split}_topk"] = topk_of(metrics[split]) if metrics else None
        row["k"] = metrics["test"]["k"] if metrics else None
        rows.append(row)
    return rows, keys


def _option(value) -> str:
    return "null" if value is None else str(value)


def options_text(options: dict, separator: str) -> str:
    """`lr=0.1`, each key by its last part ('optim.lr' -> 'lr') where no other key ends the same way."""
    ends = [key.rsplit(".", 1)[-1] for key in options]
    return separator.join(f"{end if ends.count(end) == 1 else key}={_option(value)}"
                          for end, (key, value) in zip(ends, options.items()))


def compare_table(rows: list[dict], keys: list[str], width: int | None = None):
    """As wide as the terminal: a differing option a line, `key=value` never split, numbers never cut."""
    ks = {row["k"] for row in rows if row["k"] is not None}
    topk = f"top-{min(ks)}" if len(ks) == 1 else "top-k"
    datasets = list(dict.fromkeys(str(row["dataset"]) for row in rows))
    same = f" on {datasets[0]}" if len(datasets) == 1 else ""  # one dataset: said once, in the title
    title = printable(f"{len(rows)} runs{same}" + ("" if keys else " (their configs are the same)"))
    columns = [("run", "left"), ("options\nthat differ", "left"), ("best\nepoch", "right"), ("val\ntop-1", "right"),
               ("test\ntop-1", "right"), (f"val\n{topk}", "right"), (f"test\n{topk}", "right"), ("time", "right")]
    if not same:
        columns.insert(2, ("dataset", "left"))
    table_rows = []
    for row in rows:
        ended = "diverged" if row["diverged"] else "unfinished"
        best = f"{row['best_epoch']} of {row['epochs']}" if row["finished"] else f"{ended} ({row['epochs']})"
        table_rows.append([Text(row["run"]), Text(printable(options_text(row["options"], "\n"))),
                           *(() if same else (Text(printable(str(row["dataset"]))),)), best,
                           *(percent(row[name]) for name in ("val_top1", "test_top1", "val_topk", "test_topk")),
                           f"{row['seconds']:.1f} s"])
    return fitted_table(title, columns, table_rows, width, keep=2)


def to_csv(rows: list[dict], keys: list[str]) -> str:
    """A line a run; accuracies as fractions, empty where the run did not finish."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    fixed = ("best_epoch", "epochs", "val_top1", "val_topk", "test_top1", "test_topk", "k", "seconds")
    writer.writerow(["run", "path", "dataset", *keys, *fixed])
    for row in rows:
        writer.writerow([row["run"], row["path"], row["dataset"], *(_option(row["options"][key]) for key in keys),
                         *("" if row[name] is None else row[name] for name in fixed)])
    return buffer.getvalue()


def draw_figure(summaries, rows: list[dict], path: Path) -> Path | None:
    """The overlaid validation curves, each named by its differing options (or its folder when the configs are the
    same); None when no run has finished an epoch."""
    from imgcls.report.figures import validation_curves

    curves = [(printable(options_text(row["options"], " ") or row["run"]), summary.epochs, row["best_epoch"])
              for row, summary in zip(rows, summaries) if summary.epochs]
    return validation_curves(curves, path) if curves else None
