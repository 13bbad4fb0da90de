"""Templates: one PNG per class named after it plus templates.png, the right size and channels,
each rescaled to the full 0..255 range, and pixels that are the weights enlarged."""

import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, read_image

from imgcls.runs.checkpoint import Checkpoint
from imgcls.data.registry import CIFAR10_CLASSES, DIGITS, FASHION_CLASSES
from imgcls.errors import UserError
from imgcls.report.templates import (NEGATIVE, POSITIVE, display_images, enlarge, export_templates, file_stem,
                              grid_figure, resolved_space, template_weights)


def make_checkpoint(classes, shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    k, features = len(classes), shape[0] * shape[1] * shape[2]
    weight = torch.randn(k, features, generator=generator)
    return Checkpoint(weight, torch.zeros(k), torch.zeros(shape), torch.ones(shape),
                      {"dataset": "test", "classes": list(classes), "input_shape": list(shape)})


def test_one_png_per_class_plus_the_grid(tmp_path):
    checkpoint = make_checkpoint(CIFAR10_CLASSES, (3, 32, 32))
    written = export_templates(checkpoint, tmp_path / "tpl", size=128)
    names = sorted(p.name for p in (tmp_path / "tpl").iterdir())
    assert names == sorted([f"{c}.png" for c in CIFAR10_CLASSES] + ["templates.png"])
    assert sorted(p.name for p in written) == names
    assert all(p.exists() and p.stat().st_size > 0 for p in written)
    grid = Image.open(tmp_path / "tpl" / "templates.png")
    assert grid.format == "PNG" and grid.width > 128 and grid.height > 0


@pytest.mark.parametrize("size, side", [(128, 128), (100, 96), (32, 32), (10, 32)])
def test_colour_templates_are_enlarged_by_a_whole_factor(tmp_path, size, side):
    checkpoint = make_checkpoint(CIFAR10_CLASSES, (3, 32, 32))
    export_templates(checkpoint, tmp_path, size=size)
    for name in ("airplane", "truck"):
        image = read_image(str(tmp_path / f"{name}.png"), mode=ImageReadMode.UNCHANGED)
        assert tuple(image.shape) == (3, side, side)


def test_each_template_uses_the_full_range_and_matches_its_weights(tmp_path):
    checkpoint = make_checkpoint(CIFAR10_CLASSES, (3, 32, 32), seed=1)
    export_templates(checkpoint, tmp_path, size=128, scale="each", colours="natural", clip=0.0)
    for index, name in enumerate(CIFAR10_CLASSES):
        image = read_image(str(tmp_path / f"{name}.png"), mode=ImageReadMode.UNCHANGED)
        assert image.dtype == torch.uint8
        assert int(image.min()) == 0 and int(image.max()) == 255
        # every 4x4 block is one weight, rescaled to 0..255
        w = checkpoint.weight[index].reshape(3, 32, 32)
        expected = ((w - w.min()) / (w.max() - w.min()) * 255).round().to(torch.uint8)
        assert torch.equal(image[:, ::4, ::4], expected)
        assert torch.equal(image, expected.repeat_interleave(4, 1).repeat_interleave(4, 2))


def test_grey_templates_have_one_channel(tmp_path):
    checkpoint = make_checkpoint(DIGITS, (1, 28, 28))
    export_templates(checkpoint, tmp_path, size=128, colours="natural")
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted([f"{d}.png" for d in DIGITS] + ["templates.png"])
    for digit in DIGITS:
        image = read_image(str(tmp_path / f"{digit}.png"), mode=ImageReadMode.UNCHANGED)
        assert tuple(image.shape) == (1, 112, 112)  # 28 * 4: the largest whole factor within 128
        assert int(image.min()) == 0 and int(image.max()) == 255
        assert Image.open(tmp_path / f"{digit}.png").mode == "L"


def test_shared_scale_uses_one_range_for_all(tmp_path):
    checkpoint = make_checkpoint(DIGITS, (1, 28, 28), seed=2)
    checkpoint.weight[3] *= 0.1  # a weak template stays faint on the shared scale
    export_templates(checkpoint, tmp_path, size=28, scale="shared", colours="natural", clip=0.0)
    images = torch.stack([read_image(str(tmp_path / f"{d}.png"), mode=ImageReadMode.UNCHANGED) for d in DIGITS])
    assert int(images.min()) == 0 and int(images.max()) == 255
    faint = images[3].int()
    assert faint.max() - faint.min() < 100
    w = checkpoint.weight
    expected = ((w - w.min()) / (w.max() - w.min()) * 255).round().to(torch.uint8).reshape(10, 1, 28, 28)
    assert torch.equal(images, expected)


def test_class_names_become_safe_file_names(tmp_path):
    checkpoint = make_checkpoint(FASHION_CLASSES, (1, 28, 28))
    export_templates(checkpoint, tmp_path, size=28)
    names = {p.name for p in tmp_path.glob("*.png")}
    assert "T-shirt_top.png" in names and "Ankle_boot.png" in names
    assert len(names) == len(FASHION_CLASSES) + 1
    assert file_stem("a/b c") == "a_b_c" and file_stem("///") == "class"


def test_classes_with_the_same_file_name_do_not_overwrite_each_other(tmp_path):
    checkpoint = make_checkpoint(["a/b", "a b", "c"], (1, 4, 4))
    written = export_templates(checkpoint, tmp_path, size=4)
    assert len({p.name for p in written}) == 4
    assert {"000_a_b.png", "001_a_b.png", "c.png", "templates.png"} == {p.name for p in tmp_path.glob("*.png")}


def test_a_class_named_templates_keeps_its_own_png(tmp_path):
    checkpoint = make_checkpoint(["cat", "templates", "dog"], (3, 8, 8))
    written = export_templates(checkpoint, tmp_path, size=8)
    assert len(set(written)) == 4
    assert len(list(tmp_path.glob("*.png"))) == 4


def test_grid_only_writes_just_the_grid(tmp_path):
    written = export_templates(make_checkpoint(DIGITS, (1, 28, 28)), tmp_path, grid_only=True)
    assert [p.name for p in written] == ["templates.png"]
    assert [p.name for p in tmp_path.glob("*.png")] == ["templates.png"]


def test_a_size_beyond_memory_is_refused_before_writing(tmp_path, monkeypatch):
    import imgcls.memory

    monkeypatch.setattr(imgcls.memory, "available_memory", lambda: 2 * 10 ** 9)  # 2 GB
    checkpoint = make_checkpoint(CIFAR10_CLASSES, (3, 32, 32))
    with pytest.raises(UserError, match=r"--size 20000 \(templates of 20000x20000 pixels\) would need about 17 GB "
                                        r"of memory, more than the 2.0 GB available; use a smaller --size"):
        export_templates(checkpoint, tmp_path / "tpl", size=20000)
    assert not (tmp_path / "tpl").exists()
    export_templates(checkpoint, tmp_path / "grid", size=20000, grid_only=True)  # the grid is not enlarged
    assert [p.name for p in (tmp_path / "grid").iterdir()] == ["templates.png"]


def test_display_images_and_enlarge():
    weights = torch.tensor([[[[-2.0, 0.0], [2.0, 1.0]]], [[[5.0, 5.0], [5.0, 5.0]]]])
    shown = display_images(weights, "each")
    torch.testing.assert_close(shown[0], torch.tensor([[[0.0, 0.5], [1.0, 0.75]]]))
    assert torch.isfinite(shown[1]).all()  # a constant template does not divide by zero
    big = enlarge(shown, 5)
    assert tuple(big.shape) == (2, 1, 4, 4)  # factor 5 // 2 = 2
    assert torch.equal(big[0, 0, :2, :2], torch.zeros(2, 2))


def test_pixel_space_template_is_w_over_std(tmp_path):
    checkpoint = make_checkpoint(CIFAR10_CLASSES, (3, 8, 8), seed=3)
    checkpoint.std = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(4)) + 0.5
    by_hand = checkpoint.weight.reshape(10, 3, 8, 8) / checkpoint.std
    torch.testing.assert_close(template_weights(checkpoint, "pixel"), by_hand)
    torch.testing.assert_close(template_weights(checkpoint, "input"), checkpoint.weight.reshape(10, 3, 8, 8))
    export_templates(checkpoint, tmp_path, size=8, space="pixel", colours="natural", clip=0.0)
    image = read_image(str(tmp_path / "frog.png"), mode=ImageReadMode.UNCHANGED)
    t = by_hand[CIFAR10_CLASSES.index("frog")]
    assert torch.equal(image, ((t - t.min()) / (t.max() - t.min()) * 255).round().to(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_a_checkpoint_s_templates_are_its_rows_of_w_as_images(dtype):
    """Checkpoint.templates(), the one reshape every picture of W uses: template k, channel c, pixel (y, x) is
    W[k, c*H*W + y*W + x], as float32 whatever type W was saved in."""
    k, shape = 3, (3, 2, 4)
    weight = torch.arange(k * 24, dtype=torch.float64).reshape(k, 24).to(dtype)
    checkpoint = Checkpoint(weight, torch.zeros(k), torch.zeros(shape), torch.ones(shape),
                            {"dataset": "test", "classes": ["a", "b", "c"], "input_shape": list(shape)})
    templates = checkpoint.templates()
    assert tuple(templates.shape) == (k, *shape) and templates.dtype == torch.float32
    for index, c, y, x in [(0, 0, 0, 0), (1, 2, 1, 3), (2, 1, 0, 2), (2, 2, 1, 3)]:
        assert templates[index, c, y, x] == weight[index, c * 8 + y * 4 + x].float()
    assert torch.equal(template_weights(checkpoint, "input"), templates)


def test_auto_space_leaves_pixel_space_when_some_pixels_hardly_vary():
    checkpoint = make_checkpoint(DIGITS, (1, 4, 4))
    assert resolved_space("auto", checkpoint) == "pixel"  # every pixel varies alike
    checkpoint.std[0, 0, 0] = 1e-3  # MNIST's rim: W / std would be a thousand times the rest there
    assert resolved_space("auto", checkpoint) == "input"
    assert resolved_space("pixel", checkpoint) == "pixel"


def test_diverging_colours_show_the_sign():
    shown = display_images(torch.tensor([[[[-2.0, 0.0, 1.0, 2.0]]]]), "each", "diverging")
    assert tuple(shown.shape) == (1, 3, 1, 4)
    white, blue, red = torch.ones(3), torch.tensor(NEGATIVE), torch.tensor(POSITIVE)
    torch.testing.assert_close(shown[0, :, 0, 0], blue)
    torch.testing.assert_close(shown[0, :, 0, 1], white)
    torch.testing.assert_close(shown[0, :, 0, 2], (white + red) / 2)
    torch.testing.assert_close(shown[0, :, 0, 3], red)
    assert display_images(torch.zeros(2, 1, 3, 3), "shared", "auto").shape == (2, 3, 3, 3)  # grey: diverging


def test_clip_keeps_a_few_extreme_pixels_from_taking_the_whole_range():
    weights = torch.arange(200.0).reshape(1, 1, 10, 20)
    weights[0, 0, 0, 0] = 1e6
    flat = display_images(weights, "each", "natural", clip=0.01).flatten()
    assert float(flat[0]) == 1.0  # the outlier saturates
    assert float(flat[1:].max() - flat[1:].min()) > 0.9  # the rest keeps its contrast (unclipped: under 0.001)


def test_grid_thumbnails_are_at_least_128_pixels(tmp_path):
    from PIL import Image as PILImage

    from imgcls.report.templates import save_grid

    save_grid(torch.zeros(3, 1, 28, 28), ["a", "b", "c"], tmp_path / "g.png", "t")  # black squares on white
    import numpy as np

    grey = torch.from_numpy(np.asarray(PILImage.open(tmp_path / "g.png").convert("L")).copy())
    dark = (grey < 128).sum(1)  # per pixel row: the three templates' dark pixels
    assert int((dark > 0).sum()) >= 128 and int(dark.max()) >= 3 * 128


def test_grid_title_stays_above_the_first_row_of_names():
    figure = grid_figure(torch.rand(200, 3, 8, 8), [f"class {i}" for i in range(200)], "a title " * 30)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()
    title = figure.texts[0].get_window_extent(renderer)
    names = [text.get_window_extent(renderer) for text in figure.axes[0].texts]
    assert title.y0 > max(box.y1 for box in names)
    assert title.x0 >= 0 and title.x1 <= figure.bbox.width  # wrapped to the figure's width


# --- export-templates from the command line -----------------------------------------------------------
# (imports here, not at the top, so that moving these tests in was one hunk at the end of the file)

from conftest import plain  # noqa: E402
from imgcls.runs import checkpoint as ckpt  # noqa: E402


def test_export_templates_shared_scale(cli, tiny_cifar_run, tmp_path):
    out, _ = tiny_cifar_run
    result = cli("export-templates", out, "--out", tmp_path / "tpl", "--scale", "shared", "--size", 32,
                 "--space", "input", "--clip", 0)  # W itself, its full range
    assert result.exit_code == 0, plain(result.output)
    weights = ckpt.load(out / "best.safetensors").weight
    low, high = weights.min(), weights.max()
    images = [read_image(str(tmp_path / "tpl" / f"{name}.png"), mode=ImageReadMode.UNCHANGED)
              for name in CIFAR10_CLASSES]
    for index, image in enumerate(images):
        expected = ((weights[index] - low) / (high - low) * 255).round().to(torch.uint8).reshape(3, 32, 32)
        assert torch.equal(image, expected)
    # one range for all: only the templates holding the extremes reach 0 and 255
    assert min(int(i.min()) for i in images) == 0 and max(int(i.max()) for i in images) == 255
    assert sum(int(i.min()) == 0 and int(i.max()) == 255 for i in images) < len(images)


def test_export_templates_grid_only_and_size(cli, tiny_cifar_run, tmp_path):
    from PIL import Image

    from imgcls.report.templates import GRID_DPI, grid_figsize

    out, _ = tiny_cifar_run
    result = cli("export-templates", out, "--out", tmp_path / "grid", "--grid-only")
    assert result.exit_code == 0, plain(result.output)
    assert [p.name for p in (tmp_path / "grid").iterdir()] == ["templates.png"]
    with Image.open(tmp_path / "grid" / "templates.png") as grid:
        assert grid.size == tuple(round(side * GRID_DPI) for side in grid_figsize(10))
    assert cli("export-templates", out, "--out", tmp_path / "big", "--size", 96).exit_code == 0
    assert read_image(str(tmp_path / "big" / "cat.png")).shape == (3, 96, 96)


def test_export_templates_of_mnist(cli, mnist_run, tmp_path):
    out, _ = mnist_run
    result = cli("export-templates", out / "best.safetensors", "--out", tmp_path / "tpl")
    assert result.exit_code == 0, plain(result.output)
    assert "wrote 11 PNGs" in plain(result.stdout)
    assert sorted(p.name for p in (tmp_path / "tpl").iterdir()) == sorted([f"{d}.png" for d in DIGITS]
                                                                         + ["templates.png"])
    for digit in DIGITS:  # grey images: diverging colours by default, white where a weight is 0
        image = read_image(str(tmp_path / "tpl" / f"{digit}.png"), mode=ImageReadMode.UNCHANGED)
        assert tuple(image.shape) == (3, 112, 112)
        assert int(image.max()) == 255 and int(image.min()) < 60
    result = cli("export-templates", out, "--out", tmp_path / "natural", "--colours", "natural", "--grid-only")
    assert result.exit_code == 0, plain(result.output)
    assert "natural" in plain(cli("export-templates", "--help").output)


def test_export_templates_option_errors(cli, mnist_run, tmp_path, assert_user_error):
    out, _ = mnist_run
    assert_user_error(cli("export-templates", out, "--out", tmp_path / "t", "--space", "pixels"), "space", "pixel")
    assert_user_error(cli("export-templates", out, "--out", tmp_path / "t", "--colours", "rdbu"), "colours",
                      "diverging")
    assert_user_error(cli("export-templates", out, "--out", tmp_path / "t", "--clip", 0.5), "--clip", "0.5")


def test_export_templates_of_cifar_from_the_run_folder(cli, tiny_cifar_run, tmp_path):
    out, _ = tiny_cifar_run
    result = cli("export-templates", out, "--out", tmp_path / "tpl", "--size", 64)
    assert result.exit_code == 0, plain(result.output)
    assert sorted(p.name for p in (tmp_path / "tpl").iterdir()) == sorted([f"{c}.png" for c in CIFAR10_CLASSES]
                                                                         + ["templates.png"])
    best = ckpt.load(out / "best.safetensors")
    for index, name in enumerate(CIFAR10_CLASSES):
        image = read_image(str(tmp_path / "tpl" / f"{name}.png"), mode=ImageReadMode.UNCHANGED)
        assert tuple(image.shape) == (3, 64, 64)
        # by default in pixel space, W / std, the 1% of values at each end saturated
        t = best.weight[index].reshape(3, 32, 32) / best.std
        ordered = t.flatten().sort().values
        low, high = ordered[round(0.01 * (t.numel() - 1))], ordered[round(0.99 * (t.numel() - 1))]
        expected = ((t - low) / (high - low)).clamp(0, 1).mul(255).round().to(torch.uint8)
        assert torch.equal(image[:, ::2, ::2], expected)


def test_the_first_readme_command_gives_smooth_templates(cli, tmp_path):
    """`imgcls train` with every default (the embedded sample, --lr auto): the zero init leaves no speckle in W
    where training moves it little (nn.Linear's uniform init left 0.69 of the power above 0.25 cycles/pixel)."""
    from imgcls.report.templates import high_frequency_share, template_noise

    result = cli("train", "--out", tmp_path / "run", "--device", "cpu", "--quiet")
    assert result.exit_code == 0, plain(result.output)
    assert template_noise(ckpt.load(tmp_path / "run" / "best.safetensors")) <= 0.25
    noise = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert 0.7 < float(high_frequency_share(noise).median()) < 0.9  # white noise, the measure's other end


def test_a_ctrl_c_after_some_pngs_says_they_were_written(cli, tiny_cifar_run, tmp_path, monkeypatch):
    """It said 'interrupted; nothing was written' with 10 PNGs left in --out."""
    from imgcls.report import templates

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(templates, "save_grid", interrupted)
    out, _ = tiny_cifar_run
    result = cli("export-templates", out, "--out", tmp_path / "tpl")
    assert result.exit_code == 130
    assert len(list((tmp_path / "tpl").glob("*.png"))) == 10
    message = plain(result.output)
    assert "nothing was written" not in message and "10 of the class PNGs were written" in message, message
