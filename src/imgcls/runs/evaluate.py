"""Evaluate a saved checkpoint on a split of its dataset, exactly as training measured it
(under torchrun too: each process counts its own part of the split, and the counts are summed)."""

from __future__ import annotations

from imgcls import distributed
from imgcls.config import Config, DataConfig
from imgcls.data.batches import make_eval_batches
from imgcls.data.prepare import prepare
from imgcls.data.types import Normalization
from imgcls.device import cpu_threads, resolve_device
from imgcls.errors import UserError, shown
from imgcls.linear.losses import Loss, class_weights
from imgcls.linear.metrics import Metrics
from imgcls.linear.stacked import Hyper, Stack
from imgcls.runs import checkpoint as ckpt


def saved_config(checkpoint: ckpt.Checkpoint, data_dir: str | None) -> Config:
    """The config the checkpoint was trained with, its data looked for in `data_dir` when given."""
    config = Config.from_dict(checkpoint.meta["config"], "the checkpoint", strict=False)
    if data_dir is not None:
        config.data.data_dir = data_dir
    return config


def data_config_of(checkpoint: ckpt.Checkpoint, data_dir: str | None) -> DataConfig:
    return saved_config(checkpoint, data_dir).data


def _difference(checkpoint: ckpt.Checkpoint, data) -> str:
    """What differs between a checkpoint's classes and input shape and the data's, in a few words."""
    trained, found = checkpoint.classes, data.classes
    if tuple(data.shape) != checkpoint.input_shape:
        return f"its inputs are {tuple(data.shape)}, the checkpoint's {checkpoint.input_shape}"
    if len(trained) != len(found):
        return f"it has {len(found)} classes, the checkpoint {len(trained)}"
    index = next(i for i, (a, b) in enumerate(zip(trained, found)) if a != b)
    return f"its class {index} is {shown(found[index])} where the checkpoint's is {shown(trained[index])}"


def evaluate_checkpoint(checkpoint: ckpt.Checkpoint, split: str, data_dir: str | None, device_name: str) -> Metrics:
    shard, device = distributed.setup(resolve_device(device_name))
    config = saved_config(checkpoint, data_dir)
    try:
        data = prepare(config.data, checkpoint.meta["seed"], Normalization(checkpoint.mean, checkpoint.std))
    except UserError as error:  # the readers' advice is train's (--image-size, --dataset): eval has neither
        what = str(error).split("; ")[0]
        raise UserError(f"{what}; point --data-dir at the {checkpoint.meta['dataset']} data this checkpoint was "
                        f"trained on") from None
    if data.classes != checkpoint.classes or tuple(data.shape) != checkpoint.input_shape:
        raise UserError(f"the checkpoint was trained on {checkpoint.meta['dataset']} but the data found differs: "
                        f"{_difference(checkpoint, data)}; point --data-dir at the dataset it was trained on")
    batches = make_eval_batches(data, split, device, shard)
    weights = class_weights(config.loss.class_weights, data.train.labels, len(data.classes), device)
    # as training measured it: a stack of one model, on the run's own thread count (the sums' order, and so
    # their last bits, are then metrics.json's)
    stack = Stack(checkpoint.weight.float()[None].to(device), checkpoint.bias.float()[None].to(device),
                  [Loss(config.loss.loss, weights)], [Hyper(0.0, False, 0.0)])
    with cpu_threads(config.train.threads if device.type == "cpu" else None):
        return stack.evaluate(batches, checkpoint.meta.get("superclass_of"))[0]
