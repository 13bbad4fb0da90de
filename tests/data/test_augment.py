"""--augment: flips and shifts of whole uint8 batches, drawn from (seed, epoch) alone, on the training batches only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import plain, write_image_folder
from imgcls.runs import checkpoint as ckpt
from imgcls.config import DataConfig, build_config
from imgcls.data.augment import Augmentation, augment_batch, canonical_augmentation, parse_augmentation
from imgcls.data.batches import Batches, epoch_permutation, make_batches, make_eval_batches
from imgcls.data.normalize import PixelNormalizer
from imgcls.data.prepare import prepare
from imgcls.data.types import LabelledImages, Normalization
from imgcls.distributed import Shard
from imgcls.errors import UserError
from imgcls.report.report import Reporter
from imgcls.training.train import Interrupted, train
from resuming import BATCH, LIMIT, InterruptAt, assert_same_run, resume

CPU = torch.device("cpu")


def random_images(n: int, channels: int = 3, height: int = 6, width: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, height, width), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def moved(image: torch.Tensor, dy: int, dx: int, reflect: bool) -> torch.Tensor:
    """One image moved down dy and right dx, by padding it and cropping: the per-image way, as a reference."""
    pad = max(abs(dy), abs(dx))
    padded = np.pad(image.numpy(), ((0, 0), (pad, pad), (pad, pad)), mode="reflect" if reflect else "constant")
    height, width = image.shape[1:]
    return torch.from_numpy(padded[:, pad - dy:pad - dy + height, pad - dx:pad - dx + width].copy())


# --- the spelling ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, written", [
    ("flip", "flip"), ("translate:4", "translate:4"), ("translate:4:zero", "translate:4"),
    ("translate:2:reflect", "translate:2:reflect"), (" translate:3 , flip ", "flip,translate:3"),
    ("translate:0", "translate:0"), ("none", None),
])
def test_each_spelling_is_written_back_in_one_form(text, written):
    assert canonical_augmentation(text) == written
    assert build_config(None, {"augment": text}).data.augment == written
    if written is not None:
        assert canonical_augmentation(written) == written and str(parse_augmentation(written)) == written


@pytest.mark.parametrize("text, words", [
    ("rotate", ["unknown augmentation 'rotate'"]),
    ("flp", ["did you mean 'flip'"]),
    ("translate:-1", ["whole number of pixels"]),
    ("translate:x", ["whole number of pixels"]),
    ("translate", ["whole number of pixels"]),
    ("translate:4:mirror", ["unknown border 'mirror'"]),
    ("flip,flip", ["flip given twice"]),
    ("translate:1,translate:2", ["translate given twice"]),
    ("flip:2", ["flip takes no number"]),
    ("none,flip", ["none stands alone"]),
    ("", ["unknown augmentation"]),
])
def test_bad_spellings_are_one_line_user_errors(cli, tmp_path, assert_user_error, text, words):
    line = assert_user_error(cli("train", "--augment", text, "--out", tmp_path / "run"), "--augment", *words)
    assert "flip,translate:4" in line  # the message shows how to write it
    assert not (tmp_path / "run").exists()


def test_a_bad_spelling_in_a_file_names_its_key(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("data:\n  augment: translate:-2\n")
    with pytest.raises(UserError, match=f"data.augment in {path} 'translate:-2'"):
        build_config(path, {})


def test_features_refuse_augmentation_before_reading_the_file(cli, tmp_path, assert_user_error):
    assert_user_error(cli("train", "--dataset", "features", "--data-dir", tmp_path / "missing.npz", "--augment", "flip",
                          "--out", tmp_path / "run"), "feature vectors", "drop --augment")
    build_config(None, {"dataset": "features", "augment": "none"})  # none is no augmentation: nothing to refuse


def test_a_shift_as_large_as_the_images_is_refused_once_they_are_known(cli, mnist_root, tmp_path, assert_user_error):
    assert_user_error(cli("train", "--dataset", "mnist", "--data-dir", mnist_root, "--limit", 100, "--augment",
                          "translate:28:reflect", "--device", "cpu", "--out", tmp_path / "run"), "28x28", "below 28")


def test_config_yaml_keeps_the_one_spelling_and_none_turns_a_file_s_off(cli, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("data:\n  augment: 'translate:2:reflect , flip'\n")
    printed = cli("train", "--config", path, "--print-config")
    assert printed.exit_code == 0, plain(printed.output)
    assert yaml.safe_load(printed.stdout)["data"]["augment"] == "flip,translate:2:reflect"
    off = cli("train", "--config", path, "--augment", "none", "--print-config")
    assert yaml.safe_load(off.stdout)["data"]["augment"] is None


# --- one batch ---------------------------------------------------------------------------------------------------

def test_flip_mirrors_the_chosen_images_and_twice_is_the_identity():
    images = random_images(6)
    flip = torch.tensor([True, False, True, True, False, False])
    once = augment_batch(images, flip, None)
    assert torch.equal(once[flip], images[flip].flip(-1)) and torch.equal(once[~flip], images[~flip])
    assert torch.equal(augment_batch(once, flip, None), images)
    assert torch.equal(once.flatten(1).sort(1).values, images.flatten(1).sort(1).values)  # the same pixels, moved


@pytest.mark.parametrize("reflect", [False, True])
def test_a_shift_of_nothing_is_the_identity(reflect):
    images = random_images(5)
    assert torch.equal(augment_batch(images, None, torch.zeros(2, 5, dtype=torch.int64), reflect), images)


@pytest.mark.parametrize("reflect", [False, True])
@pytest.mark.parametrize("with_flip", [False, True])
def test_each_image_moves_by_its_drawn_offset_with_the_border_filled(reflect, with_flip):
    images = random_images(40, height=6, width=7, seed=1)
    generator = torch.Generator().manual_seed(3)
    offsets = torch.randint(-5, 6, (2, 40), generator=generator)  # up to a side less one, as reflection allows
    flip = torch.rand(40, generator=generator) < 0.5 if with_flip else None
    out = augment_batch(images, flip, offsets, reflect)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for i in range(40):
        source = images[i].flip(-1) if with_flip and flip[i] else images[i]
        assert torch.equal(out[i], moved(source, int(offsets[0, i]), int(offsets[1, i]), reflect)), i
    assert not torch.equal(out, images)


def test_the_batch_is_not_written_into():
    images = random_images(4)
    kept = images.clone()
    augment_batch(images, torch.ones(4, dtype=torch.bool), torch.ones(2, 4, dtype=torch.int64))
    assert torch.equal(images, kept)


class CountOperations(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("spelling", ["flip", "translate:3", "translate:3:reflect", "flip,translate:2"])
def test_a_batch_takes_the_same_tensor_operations_whatever_its_size(spelling):
    """Whole-batch operations, no loop over images: 512 images take as many torch calls as 2 do."""
    plan = parse_augmentation(spelling).plan(600, seed=1, epoch=0, device=CPU)
    counts = []
    for n in (2, 512):
        with CountOperations() as counter:
            plan.apply(random_images(n, height=8, width=8), slice(10, 10 + n))
        counts.append(counter.calls)
    assert counts[0] == counts[1] > 0


# --- the draws ---------------------------------------------------------------------------------------------------

def test_the_draws_are_a_function_of_seed_and_epoch_and_leave_torch_s_own_generator_alone():
    augmentation = Augmentation(flip=True, shift=4)
    state = torch.get_rng_state()
    a, b = (augmentation.plan(5000, seed=3, epoch=2, device=CPU) for _ in range(2))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.flip, b.flip) and torch.equal(a.offsets, b.offsets)
    for other in (augmentation.plan(5000, seed=3, epoch=3, device=CPU), augmentation.plan(5000, 4, 2, CPU)):
        assert not torch.equal(a.flip, other.flip) and not torch.equal(a.offsets, other.offsets)
    assert 0.45 < a.flip.float().mean() < 0.55
    assert set(a.offsets.unique().tolist()) == set(range(-4, 5))


def identity_normalization(shape) -> Normalization:
    return Normalization(torch.zeros(shape), torch.ones(shape))


def labelled(n: int = 50) -> LabelledImages:
    return LabelledImages(random_images(n, height=5, width=5, seed=2), torch.arange(n) % 4)


def test_training_batches_are_the_epoch_s_images_augmented_with_their_draws_and_keep_their_labels():
    data, augmentation = labelled(), Augmentation(flip=True, shift=2, reflect=True)
    normalization = identity_normalization((3, 5, 5))
    plain_batches = Batches(data, normalization, 8, CPU, seed=4)
    augmented = Batches(data, normalization, 8, CPU, seed=4, augment=augmentation)
    plan, order = augmentation.plan(50, 4, 1, CPU), epoch_permutation(50, 4, 1)
    normalize = PixelNormalizer(normalization, CPU)
    for step, (a, b) in enumerate(zip(plain_batches.epoch(1), augmented.epoch(1), strict=True)):
        rows = slice(step * 8, (step + 1) * 8)
        assert torch.equal(a.labels, b.labels) and torch.equal(a.labels, data.labels[order[rows]])
        assert torch.equal(b.pixels, normalize(plan.apply(data.images[order[rows]], rows).flatten(1)))
        assert torch.equal(a.pixels, normalize(data.images[order[rows]].flatten(1)))


def test_a_resumed_epoch_and_each_process_of_a_world_see_what_one_whole_run_sees():
    data, augmentation = labelled(), Augmentation(flip=True, shift=3)
    normalization = identity_normalization((3, 5, 5))
    whole = list(Batches(data, normalization, 8, CPU, seed=1, augment=augmentation).epoch(2))
    resumed = list(Batches(data, normalization, 8, CPU, seed=1, augment=augmentation).epoch(2, start_step=4))
    assert len(resumed) == len(whole) - 4
    for a, b in zip(resumed, whole[4:]):
        assert torch.equal(a.pixels, b.pixels)
    parts = [list(Batches(data, normalization, 8, CPU, seed=1, shard=Shard(rank, 3), augment=augmentation).epoch(2))
             for rank in range(3)]
    for step, both in enumerate(whole):
        assert torch.equal(torch.cat([part[step].pixels for part in parts]), both.pixels)
        assert torch.equal(torch.cat([part[step].labels for part in parts]), both.labels)
    assert not torch.equal(whole[0].pixels, list(Batches(data, normalization, 8, CPU, seed=1).epoch(2))[0].pixels)


def test_evaluation_batches_are_never_augmented(tmp_path, fresh_cache):
    root = write_image_folder(tmp_path / "data", {"train": {"a": [(8, 8)] * 6, "b": [(8, 8)] * 6},
                                                  "test": {"a": [(8, 8)] * 3, "b": [(8, 8)] * 2}})
    data = prepare(DataConfig(dataset="imagefolder", data_dir=str(root)), seed=2)
    asked = make_batches(data, "val", 4, CPU, shuffle=False, augment="flip,translate:3")
    (a,), (b,) = list(asked.epoch()), list(make_eval_batches(data, "val", CPU).epoch())
    assert torch.equal(a.pixels, b.pixels)


def test_streamed_batches_are_augmented_as_the_batches_in_memory(tmp_path, fresh_cache):
    root = write_image_folder(tmp_path / "data", {"train": {"a": [(8, 8)] * 9, "b": [(8, 8)] * 9},
                                                  "test": {"a": [(8, 8)] * 2, "b": [(8, 8)] * 2}})
    memory, streamed = (prepare(DataConfig(dataset="imagefolder", data_dir=str(root), stream=stream), seed=2)
                        for stream in (False, True))
    held, decoded = (make_batches(data, "train", 4, CPU, seed=7, augment="flip,translate:2")
                     for data in (memory, streamed))
    steps, streamed_steps = list(held.epoch(1)), list(decoded.epoch(1, start_step=1))  # the stream resumed
    assert len(streamed_steps) == len(steps) - 1 == 3
    for a, b in zip(steps[1:], streamed_steps):
        assert torch.equal(a.pixels, b.pixels) and torch.equal(a.labels, b.labels)
    unaugmented = list(make_batches(memory, "train", 4, CPU, seed=7).epoch(1))
    assert all(torch.equal(a.labels, b.labels) for a, b in zip(steps, unaugmented))
    assert not all(torch.equal(a.pixels, b.pixels) for a, b in zip(steps, unaugmented))


# --- a whole run ---------------------------------------------------------------------------------------------------

def augmented_config(mnist_root, out, augment: str | None):
    flags = {"dataset": "mnist", "data_dir": str(mnist_root), "limit": LIMIT, "epochs": 2, "batch_size": BATCH,
             "lr": 0.02, "weight_decay": 0.001, "seed": 5, "device": "cpu", "out": str(out), "augment": augment,
             "refit": False}
    return build_config(None, flags)


def test_an_augmented_run_interrupted_and_resumed_ends_bit_identical(mnist_root, tmp_path):
    whole = tmp_path / "whole"
    train(augmented_config(mnist_root, whole, "translate:3:reflect, flip"), Reporter(quiet=True))
    assert yaml.safe_load((whole / "config.yaml").read_text())["data"]["augment"] == "flip,translate:3:reflect"
    out = tmp_path / "stopped"
    with pytest.raises(Interrupted), InterruptAt(1, 6):
        train(augmented_config(mnist_root, out, "flip,translate:3:reflect"), Reporter(quiet=True))
    stopped = ckpt.load(out / "last.safetensors").meta
    assert (stopped["epoch"], stopped["step"]) == (1, 6)
    resume(out)
    assert_same_run(whole, out)
    unaugmented = tmp_path / "plain"
    train(augmented_config(mnist_root, unaugmented, None), Reporter(quiet=True))
    assert not torch.equal(ckpt.load(whole / "last.safetensors").weight,
                           ckpt.load(unaugmented / "last.safetensors").weight)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_gpu_draws_and_moves_what_the_cpu_does():
    cuda, data = torch.device("cuda"), labelled()
    for spelling in ("flip,translate:2", "flip,translate:2:reflect"):
        augmentation = parse_augmentation(spelling)
        on_cpu, on_gpu = (augmentation.plan(50, 3, 1, device) for device in (CPU, cuda))
        images = data.images[:20]
        assert torch.equal(on_gpu.apply(images.to(cuda), slice(5, 25)).cpu(), on_cpu.apply(images, slice(5, 25)))
        normalization = identity_normalization((3, 5, 5))
        cpu_batches, gpu_batches = (Batches(data, normalization, 8, device, seed=3, augment=augmentation)
                                    for device in (CPU, cuda))
        for a, b in zip(cpu_batches.epoch(1), gpu_batches.epoch(1), strict=True):
            assert torch.allclose(a.pixels, b.pixels.cpu()) and torch.equal(a.labels, b.labels.cpu())
