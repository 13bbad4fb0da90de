"""Decoding many images (data/decode.py): worker processes give exactly the one-process path's arrays,
and the same messages, as decode_image_bytes one image at a time."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch

from imgcls.data import decode
from imgcls.data.decode import decode_image_bytes, decode_images, worker_count
from imgcls.data.readers import FileReader, ImageList, decode_all
from imgcls.errors import UserError

CIFAR_JPEG = Path(os.environ.get("IMGCLS_TEST_DATA", "/work/shared/datasets")) / "cifar10-jpeg"


@pytest.fixture(scope="module")
def cifar_files() -> list[str]:
    if not CIFAR_JPEG.is_dir():
        pytest.skip(f"no {CIFAR_JPEG}")
    files = []
    for folder in sorted((CIFAR_JPEG / "test").iterdir())[:3]:
        files += sorted(str(path) for path in folder.iterdir())[:100]
    return files


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 40 images, so a few hundred images make several chunks for the workers to share."""
    monkeypatch.setattr(decode, "CHUNK", 40)


def one_at_a_time(files: list[str], image_size: int | None) -> torch.Tensor:
    return torch.stack([decode_image_bytes(Path(f).read_bytes(), image_size) for f in files])


def in_workers(files: list[str], image_size: int | None = None, skip_bad: bool = False):
    """Decoded by two worker processes (this process decodes only the first image)."""
    return decode_images(files, FileReader(files), image_size, skip_bad, workers=2)


def test_workers_decode_real_jpegs_to_the_one_process_arrays(cifar_files, small_chunks):
    seen = []
    parallel = decode_images(cifar_files, FileReader(cifar_files), None, False,
                             progress=lambda done, total: seen.append((done, total)), workers=2)
    alone = decode_images(cifar_files, FileReader(cifar_files), None, False, workers=0)
    assert alone.decoded_by == {os.getpid()}
    assert torch.equal(parallel.images, alone.images)
    assert torch.equal(alone.images, one_at_a_time(cifar_files, None))
    assert seen[0] == (0, 300) and seen[-1] == (300, 300)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    by_workers = in_workers(cifar_files)
    assert by_workers.decoded_by - {os.getpid()}  # other processes decoded all but the first image
    assert torch.equal(by_workers.images, alone.images)


def write_images(folder: Path, count: int) -> list[str]:
    """PNGs and JPEGs of different sizes, some grey, some with an alpha channel."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    files = []
    for i in range(count):
        height, width = 20 + i % 7, 24 + i % 5
        pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8).numpy()
        image = Image.fromarray(pixels)
        mode = ("RGB", "L", "RGBA")[i % 3]
        path = folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}"
        if i % 2:
            image.convert(mode).save(path)
        else:  # a JPEG has no alpha channel
            image.convert("RGB" if mode == "RGBA" else mode).save(path, quality=90)
        files.append(str(path))
    return files


@pytest.mark.parametrize("image_size", [16, 25])
def test_workers_decode_mixed_pngs_and_jpegs_resized(tmp_path, small_chunks, image_size):
    files = write_images(tmp_path, 120)
    by_workers = in_workers(files, image_size)
    assert by_workers.images.shape == (120, 3, image_size, image_size)
    assert by_workers.decoded_by - {os.getpid()}
    assert torch.equal(by_workers.images, one_at_a_time(files, image_size))


def test_images_of_different_sizes_are_refused_the_same_way(tmp_path, small_chunks):
    files = write_images(tmp_path, 100)
    messages = set()
    for workers in (0, 2):
        with pytest.raises(UserError, match="images differ in size") as raised:
            decode_images(files, FileReader(files), None, False, workers=workers)
        messages.add(str(raised.value))
    assert messages == {f"images differ in size ({files[0]} is 24 wide, 20 high, {files[1]} is 25 wide, 21 high); "
                        f"pass --image-size N to resize them all to NxN"}


def damage(files: list[str], *positions: int) -> None:
    for position in positions:
        data = Path(files[position]).read_bytes()
        Path(files[position]).write_bytes(data[:len(data) // 3])


@pytest.fixture
def damaged_copy(cifar_files, tmp_path) -> list[str]:
    copies = []
    for i, name in enumerate(cifar_files[:200]):
        copy = tmp_path / f"{i:03d}.jpg"
        copy.write_bytes(Path(name).read_bytes())
        copies.append(str(copy))
    damage(copies, 133, 57, 190)
    Path(copies[170]).write_bytes(b"not an image at all")
    return copies


def test_the_first_damaged_file_is_named_by_the_workers(damaged_copy, small_chunks):
    with pytest.raises(UserError) as one:
        decode_images(damaged_copy, FileReader(damaged_copy), None, False, workers=0)
    with pytest.raises(UserError) as workers:
        in_workers(damaged_copy)
    assert str(workers.value) == str(one.value)
    assert str(one.value).startswith(f"cannot read image {damaged_copy[57]} (")
    assert str(one.value).endswith("); fix or remove it, or pass --skip-bad-images")


def test_skip_bad_images_counts_them_with_the_workers(damaged_copy, small_chunks):
    listing = ImageList(damaged_copy, FileReader(damaged_copy), [i % 10 for i in range(200)], [str(i) for i in range(10)])
    alone_images, alone_labels, alone_skipped = decode_all(listing, None, True)
    by_workers = in_workers(damaged_copy, skip_bad=True)
    assert alone_skipped == 4 and len(alone_labels) == 196
    assert by_workers.kept == [i for i in range(200) if i not in (57, 133, 170, 190)]
    assert alone_labels.tolist() == [i % 10 for i in by_workers.kept]
    assert torch.equal(by_workers.images, alone_images)
    assert torch.equal(alone_images, one_at_a_time([damaged_copy[i] for i in by_workers.kept], None))


def test_a_damaged_first_file_is_skipped_or_named(damaged_copy):
    damage(damaged_copy, 0)
    with pytest.raises(UserError, match=f"cannot read image {damaged_copy[0]} "):
        in_workers(damaged_copy)
    assert in_workers(damaged_copy, skip_bad=True).kept[:2] == [1, 2]


def test_workers_are_used_when_there_is_enough_work(monkeypatch):
    files = [f"{i}.jpg" for i in range(60_000)]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert worker_count(len(files)) == 4  # one per core: this process only collects their reports
    assert worker_count(200) == 0  # starting a worker would take longer
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert worker_count(len(files)) == 0


def test_a_script_without_a_main_guard_decodes_once_in_its_own_process(cifar_files, tmp_path):
    """A user's script that decodes a long list in forked workers runs its top-level code once (nothing imports it
    again), and gets the same images."""
    from conftest import run_python

    script = tmp_path / "script.py"
    marker = tmp_path / "runs.txt"
    script.write_text(
        "import os, sys, torch\n"
        "from imgcls.data import decode\n"
        "from imgcls.data.readers import FileReader\n"
        f"open({str(marker)!r}, 'a').write('ran\\n')\n"
        "decode.MIN_PARALLEL, decode.CHUNK = 8, 40\n"
        "files = sys.argv[1:]\n"
        "got = decode.decode_images(files, FileReader(files), None, False)\n"
        "print(len(got.decoded_by) > 1, int(got.images.sum()))\n")
    done = run_python(script, *cifar_files)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert marker.read_text() == "ran\n"
    alone = decode_images(cifar_files, FileReader(cifar_files), None, False, workers=0)
    assert done.stdout.split() == ["True", str(int(alone.images.sum()))]


def test_a_jpeg_s_size_is_read_from_its_header_as_pillow_reads_it(cifar_files, tmp_path):
    from PIL import Image

    image = Image.open(cifar_files[0]).resize((70, 45))
    for options in ({}, {"progressive": True}, {"exif": Image.Exif(), "quality": 50}):
        encoded = io.BytesIO()
        image.save(encoded, "JPEG", **options)
        assert decode._jpeg_frame_size(encoded.getvalue()) == (70, 45)
    assert decode._jpeg_frame_size(b"\xff\xd8\xff\xe0\x00\x10JFIF") is None  # cut short: Pillow decides


def test_ctrl_c_while_workers_decode_stops_them_all(cifar_files, small_chunks):
    import multiprocessing

    def interrupted(done: int, total: int) -> None:  # this (the test's) process gets Ctrl-C part-way
        if done > 100:
            raise KeyboardInterrupt

    files = cifar_files[:20] * 10
    with pytest.raises(KeyboardInterrupt):
        decode_images(files, FileReader(files), None, False, interrupted, workers=2)
    assert multiprocessing.active_children() == []


def test_the_decoding_bar_shows_images_a_second_and_is_silent_when_quiet():
    from rich.console import Console

    from imgcls.report.report import Reporter

    with Reporter(quiet=True).decoding() as progress:
        assert progress is None
    output = io.StringIO()
    with Reporter(console=Console(file=output, force_terminal=True, width=120)).decoding() as progress:
        for done in (0, 500, 1000):
            progress(done, 1000)
    assert "decoding" in output.getvalue() and "img/s" in output.getvalue() and "1000/1000" in output.getvalue()


def test_without_room_in_shared_memory_this_process_decodes_alone(cifar_files, small_chunks, monkeypatch):
    class Full:
        f_bavail, f_frsize = 0, 4096

    monkeypatch.setattr(os, "statvfs", lambda path: Full())
    decoded = decode_images(cifar_files[:100], FileReader(cifar_files[:100]), None, False, workers=2)
    assert decoded.decoded_by == {os.getpid()}
