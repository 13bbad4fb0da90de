"""`imgcls train --tensorboard`: epochs.jsonl's scalars, then the test metrics and the templates, in
RUN_DIR/tensorboard/. tensorboard is an optional extra: its absence is a UserError before anything is trained."""

from __future__ import annotations

import shutil
from pathlib import Path

from imgcls.errors import UserError
from imgcls.report.report import Reporter
from imgcls.runs.rundir import RunDir, epoch_topk

MISSING = "--tensorboard needs the tensorboard package: pip install 'imgcls[tensorboard]'"

# epochs.jsonl key -> TensorBoard tag
SCALARS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_top1": "top1/train", "val_top1": "top1/val",
           "lr": "lr", "lr_last": "lr_last", "images_per_s": "speed/images_per_s"}


class TensorBoardReporter(Reporter):
    """A Reporter that also writes TensorBoard events, from the first finished epoch on (once training has accepted
    the run folder); a fresh run first removes an earlier run's event files, a resumed run adds to them."""

    def __init__(self, run_path: Path, fresh: bool, quiet: bool = False, console=None):
        super().__init__(quiet, console)
        self.log_dir = RunDir(Path(run_path)).tensorboard
        self.fresh = fresh
        self.writer = None
        try:  # fails now, before training, if tensorboard is missing
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(MISSING) from None
        self.writer_class = SummaryWriter

    def _writer(self):
        if self.writer is None:
            if self.fresh:
                shutil.rmtree(self.log_dir, ignore_errors=True)
                self.fresh = False
            self.writer = self.writer_class(log_dir=str(self.log_dir))
        return self.writer

    def epoch_done(self, record: dict, improved: bool) -> None:
        super().epoch_done(record, improved)
        writer = self._writer()
        for key, tag in SCALARS.items():
            if key in record:
                writer.add_scalar(tag, record[key], record["epoch"])
        named, topk = epoch_topk(record)
        if topk is not None:  # the run's k (data_ready), which a record's val_top5 may not name
            writer.add_scalar(f"top{self.k or named}/val", topk, record["epoch"])
        writer.flush()

    def run_finished(self, run_path: Path, best_epoch: int, test_summary: dict) -> None:
        """The chosen epoch's test metrics and templates (each enlarged, tiled by TensorBoard; and templates.png)."""
        from imgcls.runs import checkpoint as ckpt
        from imgcls.report.templates import display_images, enlarge

        run, writer = RunDir(Path(run_path)), self._writer()
        k = test_summary.get("k", 5)
        for key in ("loss", "top1", f"top{k}", "superclass_top1"):
            if key in test_summary:
                writer.add_scalar(f"test/{key}", test_summary[key], best_epoch)
        templates = enlarge(display_images(ckpt.load(run.best).templates(), "each"), 128)
        writer.add_images("templates/each", templates, best_epoch, dataformats="NCHW")  # TensorBoard tiles them
        if run.templates.is_file():
            from torchvision.io import ImageReadMode, read_image

            writer.add_image("templates/grid", read_image(str(run.templates), mode=ImageReadMode.RGB), best_epoch)
        writer.close()
        self.writer = None
        self.note(f"TensorBoard: tensorboard --logdir {self.log_dir}")
