"""The command line: parse, call, print. Torch is imported inside the commands, so that `--help` and flag errors
answer at once."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
import typer.core
import yaml
from rich.console import Console
from rich.text import Text

from imgcls import __version__, distributed
from imgcls.cli.flags import with_config_flags
from imgcls.config import (LOSSES, RUN, build_config, check_device_name, default_cache_dir, default_data_dir, or_list,
                           parse_flags, settings)
from imgcls.data.catalog import dataset_infos
from imgcls.data.classnames import named_classes
from imgcls.data.registry import SPECS
from imgcls.errors import UserError, check_choice
from imgcls.files import (check_output_file, make_output_folder, printable, remove_stale_temporaries,
                          write_text_atomic)
from imgcls.report.report import Reporter, lr_search_table, sweep_table
from imgcls.report.tables import cache_table, datasets_table, gradcheck_table, predictions_table, superclass_lines
from imgcls.runs import jsontext
from imgcls.training.interrupt import stop_on_signals

err = Console(stderr=True)


def say(text: str, console: Console = err) -> None:
    """A line as it is: no rich markup or highlighting in a path or a class name."""
    console.print(text, soft_wrap=True, highlight=False, markup=False)


NOTHING_WRITTEN = "interrupted; nothing was written"


def stopped(message: str | None = NOTHING_WRITTEN) -> NoReturn:
    """Exit code 130 after an interrupt, the main process saying what it left (every write is atomic)."""
    if message and distributed.is_main_process():
        say(message)
    raise typer.Exit(130) from None


class OneLineErrors(typer.core.TyperGroup):
    """A user's mistake, in any command, ends as one line on stderr and exit code 2, never a traceback; a Ctrl-C
    outside a command's own signal rule, as one line and exit code 130 (typer would end it without a word)."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:  # while the command line is read: nothing was written
            stopped()

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (UserError, OSError) as error:
            if isinstance(error, OSError):  # a path too long for the system, wherever it is first used
                if error.errno != errno.ENAMETOOLONG:
                    raise
                error = (f"{printable(error.filename or 'a path')}: the name is too long for the file system; "
                         f"choose a shorter one")
            # printable: a file name that is not UTF-8 is shown, not a crash
            err.print(Text.assemble(("error: ", "bold red"), printable(error)), soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:  # a command without a signal rule of its own (eval, report, ...): it wrote nothing
            stopped()


app = typer.Typer(help="Train and study linear image classifiers: f(x) = Wx + b on pixels.", cls=OneLineErrors,
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=True,
                  epilog="Example: imgcls train --epochs 5, then imgcls report runs/<the run folder>")
cache_app = typer.Typer(help="See and clear the decoded-dataset cache.", no_args_is_help=True,
                        epilog="Example: imgcls cache info")
app.add_typer(cache_app, name="cache")


# The options several commands share, each said once. --class-names: readable names for id-named classes
# (n01443537 -> goldfish).
ClassNamesOption = Annotated[Optional[Path], typer.Option(
    "--class-names", help="Show the classes by the names in this file: words.txt (id<TAB>name, a line a class "
                          "folder) or classes.txt (one name a line, in class order).")]
CheckpointArgument = Annotated[Path, typer.Argument(help="A .safetensors checkpoint, or a run folder (uses its best).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object, not as tables.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config; flags override it.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final JSON summary.",
                                           rich_help_panel=RUN)]


def _rename_classes(loaded, class_names: Path | None) -> None:
    if class_names is not None:
        loaded.meta["classes"] = named_classes(loaded.classes, class_names)


def _refuse_beside_resume(config: Path | None, flags: dict, what: str, may_change: tuple[str, ...] = ()) -> None:
    """--resume takes the saved settings: a --config or a flag beside it (but `may_change`) is a mistake."""
    given = sorted(settings()[name].flag for name, value in flags.items()
                   if value is not None and name not in may_change)
    if config is not None or given:
        raise UserError(f"--resume continues {what}; drop {', '.join(given) or '--config'}")


RESUME_MAY_CHANGE = ("device", "data_dir")  # where a run runs and where its data is, never what it is


@app.command(epilog="Example: imgcls train --config configs/cifar10.yaml --data-dir ~/data/cifar10 --lr 0.01")
@with_config_flags
def train(
    config: ConfigOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a run already in --out.", rich_help_panel=RUN)] = False,
    resume: Annotated[Optional[Path], typer.Option(help="Continue an interrupted run from its folder, with its saved "
                                                        "config.", rich_help_panel=RUN)] = None,
    quiet: QuietOption = False,
    # in no panel, beside --config: in the Run panel, its long help would widen the columns
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved config as YAML (the "
                                               "defaults, then --config, then the flags) and exit; nothing is "
                                               "trained or written. Example: imgcls train -c my.yaml --lr 0.1 "
                                               "--print-config")] = False,
    **options,  # a flag per config field (with_config_flags), None where not given
) -> None:
    """Train a linear classifier and write a run folder (config, metrics, checkpoints)."""
    from imgcls.runs.rundir import RunDir

    flags, run_dir = parse_flags(options), None
    if resume is not None:
        _refuse_beside_resume(config, flags, "a run with its saved config (only --device and --data-dir may change)",
                              RESUME_MAY_CHANGE)
        config, flags = resume / "config.yaml", {name: flags[name] for name in RESUME_MAY_CHANGE}
        run_dir = RunDir.open_for_resume(resume)
    resolved = build_config(config, flags)
    if print_config:
        typer.echo(yaml.safe_dump(resolved.to_dict(), sort_keys=False), nl=False)
        return
    is_main = distributed.is_main_process()  # under torchrun only the main process speaks and writes
    target = run_dir
    if target is None and is_main:  # the folder is checked and named now, so that it can be locked
        target = RunDir.for_new_run(resolved.output.out, resolved.data.dataset, overwrite)
        resolved.output.out = str(target.path)
    with target.locked() if is_main else contextlib.nullcontext():
        _train_and_report(resolved, run_dir, target, quiet, overwrite)


def _train_and_report(resolved, resumed, target, quiet: bool, overwrite: bool) -> None:
    """Train under one signal rule (interrupt.py) from the first import on, then draw the figures: a Ctrl-C or
    SIGTERM in any phase ends the work in flight, then says what the run folder holds and how to go on."""
    is_main = distributed.is_main_process()
    with stop_on_signals() as stop:
        from imgcls.report.tboard import TensorBoardReporter
        from imgcls.training.train import RunInterrupted, train

        reporter = Reporter(quiet or not is_main)
        try:
            if resolved.output.tensorboard and is_main:  # a fresh run replaces the event files of the one it replaces
                reporter = TensorBoardReporter(target.path, fresh=resumed is None and target.is_run(), quiet=quiet)
            try:
                result = train(resolved, reporter, overwrite=overwrite, resume=resumed)
            finally:
                reporter.close()
                distributed.teardown()
        except RunInterrupted as error:
            stopped(f"{error}; a resumable checkpoint is in {error.run_dir.path}. Continue with:\n  imgcls train "
                    f"--resume {error.run_dir.path}" if error.resumable else str(error))
        except KeyboardInterrupt:  # a second Ctrl-C
            stopped(target.interrupted_state(resumed is not None) if is_main else None)
    # The rule ends with the training: a signal now stops the figures at once (each file is written whole or not)
    try:
        if stop.requested:  # during the final evaluation: the run is finished, the figures wait
            raise KeyboardInterrupt
        if is_main:
            path = result.run_dir.path
            _figures_or_warn(path, reporter)
            reporter.run_finished(path, result.best_epoch, result.test.summary())
            reporter.show(reporter.metrics_table(f"{resolved.data.dataset}: best epoch {result.best_epoch}",
                                                 {"val": result.val, "test": result.test}))
            reporter.note(f"run folder: {path}")
            if quiet:
                print(jsontext.dumps({"val": result.val.summary(), "test": result.test.summary(),
                                      "run_dir": str(path)}))
    except KeyboardInterrupt:
        stopped(target.interrupted_state(resumed is not None) if is_main else None)


def _figures_or_warn(path: Path, reporter, what: str = "the figures") -> None:
    """A run's figures and report.html; a failure is a warning, not an error: the run itself is saved and whole."""
    from imgcls.report.figures import write_run_figures

    try:
        written = write_run_figures(path)
    except Exception as error:
        say(f"warning: could not draw {what} ({type(error).__name__}: {error}); `imgcls report {path}` tries again")
    else:
        reporter.note("figures: " + ", ".join(p.name for p in written))
    _write_page_or_warn(path, reporter)


def _write_page_or_warn(path: Path, reporter) -> None:
    from imgcls.report.htmlreport import write_run_page

    try:
        page = write_run_page(path)
    except Exception as error:
        say(f"warning: could not write report.html ({type(error).__name__}: {error}); `imgcls report {path} --html` "
            f"tries again")
    else:
        reporter.note(f"web page: {page}")


@app.command(epilog="Example: imgcls sweep --config configs/cifar10.yaml --lr 1e-3:1e-1:5 --weight-decay 0,1e-4,1e-3")
@functools.partial(with_config_flags, grid=True)
def sweep(
    config: ConfigOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a sweep already in --out.", rich_help_panel=RUN)] = False,
    resume: Annotated[Optional[Path], typer.Option(help="Continue an interrupted sweep from its folder.",
                                                   rich_help_panel=RUN)] = None,
    quiet: QuietOption = False,
    **options,  # a flag per config field, as text: one value, a,b,c, or a log range START:STOP:COUNT
) -> None:
    """Train a grid of models in one pass over the data and keep the one validation prefers.

    Any option takes a list (--lr 0.001,0.01,0.1), a log range (--lr 1e-4:1:9, nine values) or a choice list
    (--loss ce,mse; values that hold commas are separated by ';': --augment 'none;flip,translate:1'); the grid is
    their product. Models that share batches train stacked: one matrix product per step for all of them. The
    sweep folder holds sweep.csv, sweep.json, sweep.png, a run folder per point, and `best`, the chosen run,
    which eval, predict, report and export-templates take like any run."""
    with stop_on_signals() as stop:  # the signal rule (interrupt.py) from the first import on
        result, target, reporter = _sweep_under(config, overwrite, resume, quiet, options, stop)
    if not distributed.is_main_process():
        return
    try:  # the rule has ended: a signal now stops the figures at once (each file is written whole or not)
        if result.best is not None:
            _figures_or_warn(target.best.resolve(), reporter, "the chosen run's figures")
    except KeyboardInterrupt:
        stopped(_figures_wait(target))
    _sweep_summary(result, target, reporter, quiet)


def _figures_wait(target) -> str:
    return f"interrupted while drawing the chosen run's figures; `imgcls report {target.best} --html` draws them"


def _sweep_under(config: Path | None, overwrite: bool, resume: Path | None, quiet: bool, options: dict,
                 stop) -> tuple:
    from imgcls.runs.sweepdir import SweepDir
    from imgcls.training import sweep as sweeping

    is_main = distributed.is_main_process()  # under torchrun only the main process speaks and writes
    if resume is None:
        target, spec = sweeping.plan(config, options, overwrite, check=is_main)
    else:
        _refuse_beside_resume(config, options, "a sweep with its saved grid")
        target = SweepDir.for_resume(resume)
        spec = target.read_spec()
    reporter = Reporter(quiet or not is_main)
    with target.locked() if is_main else contextlib.nullcontext():
        try:
            result = sweeping.run(target, spec, reporter, resume is not None)
            if stop.requested:  # the sweep is finished; its chosen run's figures wait
                raise KeyboardInterrupt
        except sweeping.SweepInterrupted as error:
            stopped(f"{error}. Continue with:\n  imgcls sweep --resume {error.sweep.path}")
        except KeyboardInterrupt:
            stopped(_figures_wait(target) if is_main and target.results.is_file() else
                    f"interrupted while loading data or measuring the points; `imgcls sweep --resume {target.path}` "
                    f"goes on from the last finished epoch")
        finally:
            distributed.teardown()
    return result, target, reporter


def _sweep_summary(result, target, reporter, quiet: bool) -> None:
    """The points by validation loss, the choice and its refit, and (--quiet) the JSON summary; exit 2 if every
    point diverged."""
    reporter.show(sweep_table(result.records, result.best))
    count = len(result.records)
    if result.best is None:
        raise UserError(f"every point of the sweep diverged, so none was chosen ({target.table} lists them); lower "
                        f"--lr and start a new sweep")
    chosen = f"chosen by validation: point {result.best:03d} ({target.best} -> {target.best.resolve().name})"
    reporter.note(f"{chosen}; {count} point{'s' if count != 1 else ''} in {result.seconds:.1f} s; table: "
                  f"{target.table}")
    summary = {"best_point": result.best, "sweep_dir": str(target.path), "best_run": str(target.best)}
    if result.refit is not None:
        refit = result.refit
        reporter.note(f"refit of point {refit['point']:03d} on all {refit['images']:,} training images for "
                      f"{refit['epochs']} epoch(s): test top-1 {refit['test']['top1']:.2%}; the sweep's model: "
                      f"{target.path / refit['run'] / 'best.safetensors'}")
        summary["refit_run"] = str(target.path / refit["run"])
    if quiet:
        print(jsontext.dumps(summary))


@app.command("lr-find", epilog="Example: imgcls lr-find --config configs/cifar10.yaml --figure lr.png")
@with_config_flags
def lr_find_command(
    config: ConfigOption = None,
    figure: Annotated[Optional[Path], typer.Option(help="Where to draw validation loss and top-1 against the rate "
                                                        "(a .png; default: lr-find.png in --out, else here).",
                                                   rich_help_panel=RUN)] = None,
    **options,  # a flag per config field (with_config_flags), None where not given
) -> None:
    """Suggest a learning rate and weight decay: the default search, a grid trained stacked, by held-out loss.

    This is what --lr auto and --weight-decay auto do before `imgcls train` (5-fold cross-validation on small
    data); the suggestion is the setting with the lowest held-out loss. Nothing but the figure is written."""
    from imgcls.report.figures import lr_search_figure
    from imgcls.training.engine import Interrupted
    from imgcls.training.train import find_lr

    resolved = build_config(config, parse_flags(options))
    if figure is None:  # lr-find.png in --out (made if absent), else here
        if resolved.output.out is not None:
            make_output_folder("--out", Path(resolved.output.out))
        figure = Path(resolved.output.out or ".") / "lr-find.png"
    _check_figure(figure, "lr-find.png")
    reporter = Reporter(quiet=not distributed.is_main_process())  # under torchrun only the main process speaks
    try:
        search = find_lr(resolved, reporter)
    except Interrupted as error:
        stopped(str(error))
    except KeyboardInterrupt:
        stopped()
    finally:
        distributed.teardown()
    if not distributed.is_main_process():
        return
    lr_search_figure(search.rows, figure, search.how)
    reporter.show(lr_search_table(search.rows), force=True)
    row = search.chosen_row()
    scaled = "" if search.weight_decay == row["weight_decay"] else \
        f"; the decay {row['weight_decay']:g} found on the search's images, scaled to the run's"
    reporter.note(f"suggested --lr {search.lr:g} --weight-decay {search.weight_decay:g} (lowest held-out loss: "
                  f"{search.how}{scaled}; {search.seconds:.1f} s); figure: {figure}")


def _check_figure(figure: Path, example: str) -> None:
    if figure.suffix.lower() != ".png":
        raise UserError(f"--figure {figure}: the figure is a PNG; give a name ending in .png, such as "
                        f"{figure.with_suffix('.png').name}")
    check_output_file("--figure", figure, example)


@app.command("eval", epilog="Example: imgcls eval runs/cifar10/best.safetensors --split test --json")
def eval_command(
    checkpoint: CheckpointArgument,
    split: Annotated[str, typer.Option(help="test, val or train.")] = "test",
    data_dir: Annotated[Optional[str], typer.Option(help="Where the dataset is, if not where training found it.")]
    = None,
    device: DeviceOption = "auto",
    as_json: JsonOption = False,
    per_class: Annotated[bool, typer.Option(help="Also show per-class top-1 (with --json: and the confusion "
                                                 "matrix).")] = False,
    class_names: ClassNamesOption = None,
) -> None:
    """Recompute a checkpoint's metrics on a split of its dataset."""
    check_choice("split", split, ("test", "val", "train"))
    from imgcls.runs import checkpoint as ckpt
    from imgcls.runs.evaluate import evaluate_checkpoint

    loaded = ckpt.load(checkpoint)
    is_main = distributed.is_main_process()  # under torchrun only the main process speaks
    if split != "test" and loaded.meta.get("refit") and is_main:
        say(f"note: this model was refit on the training and validation images, so its {split} figures are not held "
            f"out; the run's metrics.json keeps the held-out figures that chose it")
    try:
        metrics = evaluate_checkpoint(loaded, split, data_dir, device)
    finally:
        distributed.teardown()
    if not is_main:
        return
    _rename_classes(loaded, class_names)  # after evaluating: the data's class folders keep their own names
    superclasses = SPECS[loaded.meta["dataset"]].superclass_names()
    if as_json:  # metrics.json's shape, for the one split evaluated
        shown = {"checkpoint_epoch": loaded.meta["epoch"], split: metrics.summary(), "classes": loaded.classes}
        if per_class:
            shown[f"{split}_detail"] = metrics.detail()  # per-class top-1 and the confusion matrix
        print(jsontext.dumps({**shown, **({"superclasses": superclasses} if superclasses else {})}))
        return
    reporter = Reporter()
    reporter.show(reporter.metrics_table(f"{loaded.meta['dataset']}, epoch {loaded.meta['epoch']}", {split: metrics}))
    if per_class:
        reporter.show(reporter.per_class_table(loaded.classes, metrics))
        if superclasses and metrics.per_superclass:
            reporter.show(reporter.superclass_table(list(zip(superclasses, metrics.per_superclass))))


@app.command("export-templates", epilog="Example: imgcls export-templates runs/cifar10/best.safetensors --out tpl; "
                                         "imgcls export-templates runs/mnist --out tpl --space input --colours "
                                         "natural; imgcls export-templates runs/tiny --out tpl --class-names "
                                         "words.txt")
def export_templates_command(
    checkpoint: CheckpointArgument,
    out: Annotated[Path, typer.Option(help="Folder for the PNGs.")],
    size: Annotated[int, typer.Option(help="Enlarge each template to about this many pixels a side.")] = 128,
    scale: Annotated[str, typer.Option(help="'each': every template to its own range; 'shared': one range.")]
    = "each",
    grid_only: Annotated[bool, typer.Option(help="Write only the labelled grid.")] = False,
    space: Annotated[str, typer.Option(help="'pixel': W / std, the template matched against raw pixels (as the "
                                            "lecture draws it); 'input': W itself, on standardized pixels; "
                                            "'auto': pixel unless some pixels hardly vary in training (MNIST's "
                                            "rim), whose huge W / std would fill the picture.")] = "auto",
    colours: Annotated[str, typer.Option(help="'natural': the channels as colours; 'diverging': the sign, blue "
                                              "negative, white 0, red positive; 'auto': diverging for grey "
                                              "images, natural for colour.")] = "auto",
    clip: Annotated[float, typer.Option(help="Share of the values at each end that saturate, so that a few "
                                             "extreme pixels do not flatten the rest; 0: the full range. "
                                             "Example: --clip 0")] = 0.01,
    class_names: ClassNamesOption = None,
) -> None:
    """Write each class's template (its row of W as an image) as a PNG, plus a labelled grid."""
    from imgcls.data.features import require_image_model
    from imgcls.report.templates import COLOURS, SPACES, export_templates
    from imgcls.runs import checkpoint as ckpt

    check_choice("scale", scale, ("each", "shared"))
    check_choice("space", space, SPACES)
    check_choice("colours", colours, COLOURS)
    if not 0.0 <= clip < 0.5:
        raise UserError(f"--clip must be at least 0 and under 0.5 (a share of the values at each end), not {clip}")
    if size < 1:
        raise UserError(f"--size must be at least 1 pixel, not {size}")
    loaded = ckpt.load(checkpoint)
    _rename_classes(loaded, class_names)
    require_image_model(loaded, "its rows of W are not pictures; look at them with `imgcls export --format npz`")
    make_output_folder("--out", out)
    try:
        written = export_templates(loaded, out, size=size, scale=scale, grid_only=grid_only, space=space,
                                   colours=colours, clip=clip)
    except KeyboardInterrupt as interrupt:
        done = len(getattr(interrupt, "written", []))
        stopped(f"interrupted after {done} of the class PNGs were written to {out} (each one whole), before the "
                f"grid; run the command again to write them all" if done else NOTHING_WRITTEN)
    say(f"wrote {len(written)} PNGs to {out}", Console())


@app.command("export", epilog="Example: imgcls export runs/cifar10/best.safetensors --format onnx --out cifar10.onnx")
def export_command(
    checkpoint: CheckpointArgument,
    fmt: Annotated[str, typer.Option("--format", help="onnx or torchscript (raw uint8 pixels (N, C, H, W) in, "
                                                      "normalization inside, scores out), or npz (W, b, mean, std, "
                                                      "classes for numpy).")],
    out: Annotated[Path, typer.Option(help="The file to write.")],
) -> None:
    """Write a trained model for use without imgcls: ONNX, TorchScript or numpy arrays."""
    from imgcls.runs import checkpoint as ckpt
    from imgcls.runs.export import FORMATS, export, is_features_model

    check_choice("format", fmt, FORMATS)
    loaded = ckpt.load(checkpoint)
    export(loaded, fmt, out)
    takes = "float32 features (N, D)" if is_features_model(loaded) else \
        "uint8 pixels (N, {}, {}, {})".format(*loaded.input_shape)
    say(f"wrote {out} ({fmt}, {len(loaded.classes)} classes; input: {takes})", Console())


@app.command("report", epilog="Example: imgcls report runs/cifar10-20261127-101500 --pairs 10; imgcls report "
                               "runs/cifar10-20261127-101500 --html (then open its report.html); imgcls report "
                               "runs/tiny --class-names ~/data/tiny-imagenet-200/words.txt")
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (train's --out).")],
    pairs: Annotated[int, typer.Option(help="How many of the most confused class pairs to list.")] = 5,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Redraw curves.png, confusion.png and "
                                                                         "templates.png in the run folder.")] = True,
    as_json: JsonOption = False,
    html: Annotated[bool, typer.Option("--html", help="Also write RUN_DIR/report.html, the run as one self-contained "
                                                      "web page (with a gallery of test images, when the data "
                                                      "is where training found it).")] = False,
    class_names: ClassNamesOption = None,
) -> None:
    """Summarize a run (config, epochs, best epoch, metrics, per-class top-1, confused pairs) and redraw its figures."""
    if pairs < 0:
        raise UserError(f"--pairs must be 0 or more, not {pairs}")
    from imgcls.report.figures import write_run_figures
    from imgcls.report.htmlreport import write_run_page
    from imgcls.report.runreport import load_run, render

    summary = load_run(run_dir, pairs, class_names)
    written, unwritten = [], None
    try:
        if figures:
            try:
                remove_stale_temporaries(run_dir)  # of a report or run killed while writing (kill -9)
                written = write_run_figures(run_dir, class_names)
            except UserError as error:  # a read-only run folder: the report is still worth printing
                unwritten = f"note: the figures were not redrawn: {error}"
        page = write_run_page(run_dir, class_names) if html else None
    except KeyboardInterrupt:  # each file is written whole or not at all
        stopped(f"interrupted while redrawing the figures; each file in {printable(run_dir)} is whole, redrawn or "
                f"as it was: `imgcls report {printable(run_dir)}{' --html' if html else ''}` draws them again")
    if unwritten:
        say(unwritten)
    if as_json:
        print(jsontext.dumps({**summary.as_dict(), "figures": [str(p) for p in written],
                              **({"html": str(page)} if page else {})}))
        return
    console = Console()
    console.print(render(summary))
    if written:
        say("figures: " + ", ".join(printable(p) for p in written), console)
    if page:
        say(f"web page: {printable(page)}", console)


@app.command("compare", epilog="Example: imgcls compare runs/cifar10-lr01 runs/cifar10-lr001 --figure compare.png "
                                "--csv runs.csv")
def compare_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="Two or more run folders (train's --out).",
                                                        metavar="RUN_DIR...")],
    figure: Annotated[Path, typer.Option(help="Where to draw the runs' validation curves, overlaid (a .png).")]
    = Path("compare.png"),
    no_figure: Annotated[bool, typer.Option("--no-figure", help="Draw no figure.")] = False,
    as_json: JsonOption = False,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help="Also write the table to this CSV file, one row "
                                                                   "per run.")] = None,
) -> None:
    """Runs side by side: dataset, the options that differ, best epoch, val and test top-1/top-k, time; and one
    figure of their validation curves."""
    if not no_figure:
        _check_figure(figure, "compare.png")
    if csv_file is not None:
        check_output_file("--csv", csv_file, "runs.csv")
    from imgcls.report.compare import compare_table, comparison_rows, draw_figure, load_runs, to_csv

    summaries = load_runs(run_dirs)
    rows, keys = comparison_rows(summaries)
    drawn = None if no_figure else draw_figure(summaries, rows, figure)
    if csv_file is not None:
        write_text_atomic(csv_file, to_csv(rows, keys), errors="surrogateescape")
    if as_json:
        print(jsontext.dumps({"runs": rows, "differing": keys, "figure": str(drawn) if drawn else None}))
        return
    console = Console()
    console.print(compare_table(rows, keys))
    for what, path in (("figure", drawn), ("table", csv_file)):
        if path is not None:
            say(f"{what}: {printable(path)}", console)


@app.command("predict", epilog="Example: imgcls predict runs/cifar10/best.safetensors photos/ --top-k 3 --csv "
                                "predictions.csv")
def predict_command(
    checkpoint: CheckpointArgument,
    images: Annotated[list[Path], typer.Argument(help="Image files, or folders of them (searched recursively).")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes to list per image (at most all of them).")]
    = 5,
    as_json: JsonOption = False,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help="Also write the predictions to this CSV file, "
                                                                   "one row per image.")] = None,
    device: DeviceOption = "auto",
    skip_bad_images: Annotated[bool, typer.Option("--skip-bad-images/--no-skip-bad-images",
                                                  help="Skip unreadable images instead of stopping.")] = False,
    class_names: ClassNamesOption = None,
) -> None:
    """Classify images with a trained model: each is resized and normalized as in training; top-k with probabilities."""
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, not {top_k}")
    if csv_file is not None:
        check_output_file("--csv", csv_file, "predictions.csv")
    check_device_name(device)
    from imgcls.runs import checkpoint as ckpt
    from imgcls.runs.predict import to_csv

    loaded = ckpt.load(checkpoint)
    _rename_classes(loaded, class_names)
    result = _predictions(loaded, images, top_k, device, skip_bad_images)
    if csv_file is not None:  # a file name that is not UTF-8 goes into the CSV as its bytes, as the file system has it
        write_text_atomic(csv_file, to_csv(result.items), errors="surrogateescape")
    if as_json:
        print(jsontext.dumps({"checkpoint": str(checkpoint), "classes": loaded.classes,
                              "predictions": [p.as_dict() for p in result.items],
                              "skipped": [{"image": name, "error": why} for name, why in result.skipped]}))
        return
    Console().print(predictions_table(loaded, result.items))
    if csv_file is not None:
        say(f"wrote {len(result.items)} rows to {printable(csv_file)}")


def _predictions(loaded, images: list[Path], top_k: int, device: str, skip_bad_images: bool):
    """The top-k of each image (or of each row of one features file, for a features model); the images skipped
    and resized are told on stderr."""
    from imgcls.data.features import is_features_model, require_image_model
    from imgcls.runs.predict import list_images, predict, predict_features

    if is_features_model(loaded):
        if len(images) != 1 or images[0].suffix.lower() not in (".npz", ".safetensors"):
            require_image_model(loaded, "it classifies the rows of one features file (its x, else x_test), not "
                                        "image files: give one FILE.npz or .safetensors")
        paths = images
        result = predict_features(loaded, images[0], top_k, device)
    else:
        paths = list_images(images)
        result = predict(loaded, paths, top_k, device, skip_bad_images)
    for name, why in result.skipped:
        say(f"skipped {printable(name)}: cannot read it ({why})")
    if not result.items:
        raise UserError(f"no readable image among the {len(paths)} given")
    if result.resized:
        c, h, w = loaded.input_shape
        were = "image was" if result.resized == 1 else "images were"
        say(f"note: {result.resized} {were} not {h}x{w} and resized to the model's input size")
    return result


@app.command("datasets", epilog="Example: imgcls datasets --data-dir ~/data")
def datasets_command(
    data_dir: Annotated[Optional[str], typer.Option(help="Where to look for the datasets \\[default: $IMGCLS_DATA, "
                                                         "else ~/.cache/imgcls/data].")] = None,
    as_json: JsonOption = False,
) -> None:
    """The named datasets: classes, image shape, sizes, and whether each is in the data dir."""
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    infos = dataset_infos(root)
    if as_json:
        print(json.dumps({"data_dir": str(root), "datasets": [info.as_dict() for info in infos]}))
        return
    console = Console()
    console.print(datasets_table(root, infos))
    for line in superclass_lines(infos):
        console.print(Text(line), highlight=False)  # wrapped between the names, at the terminal's width


@app.command("gradcheck", epilog="Example: imgcls gradcheck --loss ce --batch-size 8 --classes 10 --features 192")
def gradcheck_command(
    loss: Annotated[str, typer.Option(help=f"{or_list(LOSSES)}: the loss whose gradient is checked.")] = "ce",
    batch_size: Annotated[int, typer.Option(help="Images in the random batch.")] = 16,
    classes: Annotated[int, typer.Option(help="Number of classes K (rows of W).")] = 10,
    features: Annotated[int, typer.Option(help="Input dimension D (columns of W).")] = 192,
    coordinates: Annotated[int, typer.Option(help="Coordinates of W checked by finite differences (all of b "
                                                  "always are).")] = 200,
    eps: Annotated[float, typer.Option(help="Finite-difference step h.")] = 1e-5,
    tolerance: Annotated[float, typer.Option(help="Largest relative difference allowed.")] = 1e-5,
    seed: Annotated[int, typer.Option(help="Seed of the random batch and of the coordinates.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Check the gradient of the loss three ways (finite differences, the formula, autograd); exit 1 if they differ."""
    from imgcls.linear import gradcheck

    gradcheck.check_arguments(loss, batch_size, classes, features, coordinates, seed, eps, tolerance)
    result = gradcheck.gradient_check(loss, batch_size, classes, features, coordinates, seed, eps, tolerance)
    if as_json:
        print(jsontext.dumps({**dataclasses.asdict(result), "passed": result.passed}))
    else:
        Console().print(gradcheck_table(result))
    worst = result.worst
    if not result.passed:
        at = worst.worst[0]
        err.print(Text.assemble(("gradient check FAILED: ", "bold red"),
                                f"{worst.title} differ by a relative {worst.max_relative:.3g} at {at.name} "
                                f"({at.first:.6g} vs {at.second:.6g}); the tolerance is {tolerance:g}"),
                  soft_wrap=True)
        raise typer.Exit(1)
    if not as_json:
        say(f"gradient check passed: largest relative difference {worst.max_relative:.2e} <= {tolerance:g}")


@cache_app.command("info", epilog="Example: imgcls cache info")
def cache_info() -> None:
    """List the decoded datasets in the cache and their sizes (only what imgcls made is listed)."""
    Console().print(cache_table(default_cache_dir()))


@cache_app.command("clear", epilog="Example: imgcls cache clear")
def cache_clear() -> None:
    """Delete the decoded datasets in the cache (they are rebuilt on next use), and what killed builds left;
    nothing else in the folder is touched."""
    from imgcls.data.cache import clear

    entries, staging = clear(default_cache_dir())
    leftovers = f" and {staging} unfinished builds" if staging else ""
    say(f"removed {entries} cache entries{leftovers} from {default_cache_dir()}", Console())


def version_callback(value: bool) -> None:
    if value:
        print(f"imgcls {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """Train and study linear image classifiers: f(x) = Wx + b on pixels."""


def main() -> None:
    """The `imgcls` command. Click's usage errors (a flag's value of the wrong type, an unknown option or
    command) end like our own: one `error:` line, exit code 2."""
    for stream in (sys.stdout, sys.stderr):  # a terminal that cannot show a class's name gets it escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        code = app(prog_name="imgcls", standalone_mode=False)
    except typer.Abort:  # end of input at a prompt
        sys.exit(1)
    except KeyboardInterrupt:  # while typer builds the command line from the declarations
        say(NOTHING_WRITTEN)
        distributed.exit_process(130)
    except Exception as error:
        if not _is_usage_error(error):
            raise
        where = f"{error.ctx.command_path} --help" if getattr(error, "ctx", None) else "imgcls --help"
        message = " ".join(error.format_message().split())
        if message:  # empty when the help was the answer (a group called with nothing)
            err.print(Text.assemble(("error: ", "bold red"), f"{message} (see '{where}')"), soft_wrap=True)
        sys.exit(error.exit_code)
    distributed.exit_process(code if isinstance(code, int) else 0)


def _is_usage_error(error: Exception) -> bool:
    """A click exception, told by its shape: typer vendors its own copy of click, so the class's module varies."""
    return isinstance(getattr(error, "exit_code", None), int) and callable(getattr(error, "format_message", None))


if __name__ == "__main__":
    sys.exit(main())
