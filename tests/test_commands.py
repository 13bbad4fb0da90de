"""export-templates' options from the command line (on their way to test_templates.py)."""

import torch
from torchvision.io import ImageReadMode, read_image

from conftest import plain
from imgcls import checkpoint as ckpt
from imgcls.data.registry import CIFAR10_CLASSES


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

    from imgcls.templates import GRID_DPI, grid_figsize

    out, _ = tiny_cifar_run
    result = cli("export-templates", out, "--out", tmp_path / "grid", "--grid-only")
    assert result.exit_code == 0, plain(result.output)
    assert [p.name for p in (tmp_path / "grid").iterdir()] == ["templates.png"]
    with Image.open(tmp_path / "grid" / "templates.png") as grid:
        assert grid.size == tuple(round(side * GRID_DPI) for side in grid_figsize(10))
    assert cli("export-templates", out, "--out", tmp_path / "big", "--size", 96).exit_code == 0
    assert read_image(str(tmp_path / "big" / "cat.png")).shape == (3, 96, 96)
