"""A checkpoint as a file other programs run without imgcls. onnx (torch's TorchScript-based exporter: only `onnx`
needed), torchscript: raw input (uint8 pixels, float32 features) -> scores, normalization inside, classes in the
metadata. npz: W, b, mean, std, classes, input_scale: x = (input / input_scale - mean) / std, scores = x @ W.T + b."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgcls import __version__
from imgcls.data.features import is_features_model
from imgcls.data.types import Normalization
from imgcls.errors import UserError
from imgcls.files import check_output_file, write_atomic
from imgcls.runs.checkpoint import Checkpoint

FORMATS = ("onnx", "torchscript", "npz")
ONNX_OPSET = 17


class RawInputClassifier(nn.Module):
    """Raw input -> scores: the checkpoint's normalization, then its f(x) = Wx + b."""

    def __init__(self, checkpoint: Checkpoint):
        super().__init__()
        scale, shift = Normalization(checkpoint.mean.float(), checkpoint.std.float()).scale_and_shift()
        self.register_buffer("scale", scale.flatten().contiguous())
        self.register_buffer("negative_shift", (-shift).flatten().contiguous())
        self.classifier = checkpoint.model().float().eval()

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.addcmul(self.negative_shift, raw.flatten(1).float(), self.scale))


def export(checkpoint: Checkpoint, fmt: str, out: Path) -> None:
    writers = {"onnx": _write_onnx, "torchscript": _write_torchscript, "npz": _write_npz}
    check_output_file("--out", out, {"onnx": "model.onnx", "torchscript": "model.pt", "npz": "model.npz"}[fmt])
    write_atomic(out, lambda temporary: writers[fmt](checkpoint, temporary))


def input_scale(checkpoint: Checkpoint) -> float:
    """What the input is divided by before the normalization: pixels / 255; features as they are (data.features)."""
    return 1.0 if is_features_model(checkpoint) else 255.0


def _metadata(checkpoint: Checkpoint) -> dict[str, str]:
    kind = "float32 features (N, D)" if is_features_model(checkpoint) else "uint8 pixels (N, C, H, W), 0..255"
    return {"classes": json.dumps(checkpoint.classes), "input": kind,
            "input_shape": json.dumps(list(checkpoint.input_shape)), "input_scale": f"{input_scale(checkpoint):g}",
            "dataset": checkpoint.meta["dataset"], "producer": f"imgcls {__version__}"}


def _quietly(action):
    """Without torch's deprecation warnings for its TorchScript-based exporters, whose files this command promises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return action()


def _write_onnx(checkpoint: Checkpoint, path: Path) -> None:
    try:
        import onnx
    except ImportError:
        raise UserError("--format onnx needs the onnx package: pip install 'imgcls[export]'") from None
    model = RawInputClassifier(checkpoint).eval()
    example = torch.zeros(2, checkpoint.weight.shape[1]) if is_features_model(checkpoint) else \
        torch.zeros(2, *checkpoint.input_shape, dtype=torch.uint8)  # a batch of what the model takes
    axes = {"input": {0: "batch"}, "scores": {0: "batch"}}
    _quietly(lambda: torch.onnx.export(model, (example,), str(path), dynamo=False,
                                       input_names=["input"], output_names=["scores"], dynamic_axes=axes,
                                       opset_version=ONNX_OPSET))
    graph = onnx.load(str(path))
    for key, value in _metadata(checkpoint).items():
        graph.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))


def _write_torchscript(checkpoint: Checkpoint, path: Path) -> None:
    scripted = _quietly(lambda: torch.jit.script(RawInputClassifier(checkpoint).eval()))
    extra = {f"{key}.txt": value for key, value in _metadata(checkpoint).items()}
    extra["classes.txt"] = "".join(f"{name}\n" for name in checkpoint.classes)  # the README's classes.txt
    buffer = io.BytesIO()  # torch.jit.save's own file writer aborts the process on a full disk: Python writes it
    _quietly(lambda: torch.jit.save(scripted, buffer, _extra_files=extra))
    path.write_bytes(buffer.getvalue())


def _write_npz(checkpoint: Checkpoint, path: Path) -> None:
    # A features model keeps its statistics on the 0..1 scale of images (data.features): here they are in the
    # features' own units, with input_scale 1, so that the formula reads the same for both.
    scale = 255.0 / input_scale(checkpoint)
    arrays = {"W": checkpoint.weight.float().numpy(), "b": checkpoint.bias.float().numpy(),
              "mean": (checkpoint.mean.float() * scale).numpy(), "std": (checkpoint.std.float() * scale).numpy(),
              "classes": np.array(checkpoint.classes), "input_scale": np.float32(input_scale(checkpoint))}
    with open(path, "wb") as file:  # a file object: np.savez would add .npz to a temporary's name
        np.savez(file, **arrays)
