"""Hostile and damaged data files, each in its genuine format: an archive member whose header
claims 2 GiB, an image whose header claims 13000x13000 pixels, a CSV without rows, infinite
features and targets. Each is refused in one line naming the file (member, column, row) before
the loader trusts its size or values: nothing is decompressed into memory first."""

from __future__ import annotations

import gzip
import struct
import tarfile
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile

from conftest import compose_cfg, run_cli
from regablate.cli.data import main as data_main
from regablate.config.schema import parse
from regablate.data import cifar10
from regablate.data.image_folder import (
    FILE_SLACK,
    MAX_IMAGE_PIXELS,
    ImageFolderSettings,
    Source,
    make_image_folder,
    max_file_bytes,
)
from regablate.data.tabular import TabularSettings, make_tabular
from regablate.errors import ConfigError, UsageError
from regablate.training.settings import load_settings

GiB = 1 << 30


# ------------------------------------------------------------------------------ genuine files

def tar_gz_of_zeros(path: Path, name: str, size: int) -> Path:
    """A genuine .tar.gz holding one member `name` of `size` zero bytes, written without holding
    or compressing them: gzip allows a file to be several gzip members one after another (as
    `gzip -t`, GNU tar and Python's gzip read it), so 1 MiB of zeros is compressed once and
    repeated. 2 GiB take 2 MB."""
    info = tarfile.TarInfo(name)
    info.size = size
    mib = gzip.compress(bytes(1 << 20), mtime=0)
    n, rest = divmod(size, 1 << 20)
    with open(path, "wb") as f:
        f.write(gzip.compress(info.tobuf(tarfile.GNU_FORMAT), mtime=0))
        for _ in range(n):
            f.write(mib)
        f.write(gzip.compress(bytes(rest) + bytes(-size % 512) + bytes(1024), mtime=0))  # end blocks
    return path


def sparse_tar(path: Path, name: str, size: int) -> Path:
    """A genuine uncompressed tar of one member of `size` zero bytes, as a sparse file."""
    info = tarfile.TarInfo(name)
    info.size = size
    with open(path, "wb") as f:
        f.write(info.tobuf(tarfile.GNU_FORMAT))
        f.truncate(512 + size + -size % 512 + 1024)
    return path


def huge_png(path: Path, width: int, height: int) -> Path:
    """A genuine PNG of width x height black 1-bit pixels, chunk by chunk as the PNG spec lays
    it out (Pillow would need the 169 million pixels in memory to write it): ~25 KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                     1, 0, 0, 0, 0)) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def small_images(root: Path, classes=("cat", "dog"), n: int = 3) -> None:
    for cls in classes:
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (12, 10), (40 * i, 90, 7)).save(root / "train" / cls / f"{i}.png")


def settings(path: Path, tmp_path: Path, **kw) -> ImageFolderSettings:
    return ImageFolderSettings(path=str(path), root=str(tmp_path / "cache"), image_size=8, n_ood=2, **kw)


@pytest.fixture
def no_big_decode(monkeypatch):
    """Fail the test if any image of more than a million pixels is decoded."""
    load = ImageFile.ImageFile.load

    def guarded(self):
        if self.size[0] * self.size[1] > 10**6:
            raise AssertionError(f"decoded a {self.size[0]}x{self.size[1]} image")
        return load(self)
    monkeypatch.setattr(ImageFile.ImageFile, "load", guarded)


# ------------------------------------------------------------------------------ archives, files

def test_a_2_gib_member_is_refused_from_its_header(tmp_path):
    archive = tar_gz_of_zeros(tmp_path / "img.tar.gz", "train/cat/big.png", 2 * GiB)
    assert archive.stat().st_size < 4 << 20
    with tarfile.open(archive, "r:gz") as tar:  # genuine: the header says 2 GiB
        assert tar.next().size == 2 * GiB
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(UsageError) as e:
            make_image_folder(settings(archive, tmp_path), 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(e.value) == (
        f"{archive}: member train/cat/big.png: 2147483648 bytes, more than an image file may take "
        f"({4 * MAX_IMAGE_PIXELS + FILE_SLACK} bytes: 4 a pixel of dataset.max_image_pixels, "
        "plus 16 MiB); refused before reading it")
    assert peak < 16 << 20  # the member was neither read nor skipped over (2 GiB to inflate)
    assert time.perf_counter() - start < 2


def test_the_file_limit_follows_max_image_pixels(tmp_path):
    assert max_file_bytes(MAX_IMAGE_PIXELS) == 4 * 89478485 + 16 * 2**20
    assert max_file_bytes(100) == 400 + FILE_SLACK
    small_images(tmp_path / "img")
    big = tmp_path / "img" / "train" / "cat" / "big.png"
    with open(big, "wb") as f:  # sparse: one byte more than 200 pixels allow
        f.truncate(max_file_bytes(200) + 1)
    with pytest.raises(UsageError, match=rf"^{big}: {max_file_bytes(200) + 1} bytes, more than an "
                       rf"image file may take \({max_file_bytes(200)} bytes"):
        make_image_folder(settings(tmp_path / "img", tmp_path, max_image_pixels=200), 0)
    with pytest.raises(UsageError, match=rf"^{big}: unreadable image"):  # read: it is no PNG
        make_image_folder(settings(tmp_path / "img", tmp_path, max_image_pixels=201), 0)


def test_a_file_grown_after_the_scan_is_read_only_up_to_the_limit(tmp_path):
    (tmp_path / "a.png").write_bytes(bytes(11))
    src = Source(tmp_path, {}, max_bytes=10)
    with pytest.raises(UsageError, match=rf"^{tmp_path}/a.png: larger, more than an image file"):
        src.read("a.png", None)
    assert Source(tmp_path, {}, max_bytes=11).read("a.png", None) == bytes(11)


def test_cifar10_sources_are_bounded_by_its_file_sizes(tmp_path, capsys):
    archive = sparse_tar(tmp_path / "c.tar", "cifar-10-batches-py/data_batch_1", 2 * GiB)
    tracemalloc.start()
    try:
        assert data_main(["cifar10", "--root", str(tmp_path / "r"), "--from", str(archive)]) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err
    assert err == (f"regablate data: error: {archive}: member cifar-10-batches-py/data_batch_1: "
                   "2147483648 bytes, more than a CIFAR-10 batch file takes (at most 67108864); "
                   "refused before reading it\n")
    assert peak < 16 << 20
    folder = tmp_path / "export" / "train" / "cat"
    folder.mkdir(parents=True)
    with open(folder / "x.png", "wb") as f:
        f.truncate(cifar10.MAX_IMAGE_BYTES + 1)
    assert data_main(["cifar10", "--root", str(tmp_path / "r"), "--from", str(tmp_path / "export")]) == 2
    assert f"{folder}/x.png: {cifar10.MAX_IMAGE_BYTES + 1} bytes, more than a CIFAR-10 image takes" \
        in capsys.readouterr().err


# ------------------------------------------------------------------------------ pixels

def test_a_13000_square_png_is_refused_before_decoding(tmp_path, no_big_decode):
    bomb = huge_png(tmp_path / "img" / "train" / "cat" / "bomb.png", 13000, 13000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        assert Image.open(bomb).size == (13000, 13000)  # genuine: Pillow reads its header
    small_images(tmp_path / "img")
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(UsageError) as e:
            make_image_folder(settings(tmp_path / "img", tmp_path), 0)
    assert str(e.value) == (f"{bomb}: an image of 169000000 pixels, more than dataset."
                            "max_image_pixels=89478485; refused before decoding it (raise the "
                            "limit to accept it)")
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # Pillow's own setting restored
    # skip_unreadable does not skip it: it is readable, and refused
    with pytest.raises(UsageError, match="bomb.png: an image of 169000000 pixels"):
        make_image_folder(settings(tmp_path / "img", tmp_path, skip_unreadable=True), 0)


def test_max_image_pixels_is_the_limit_and_a_checked_setting(tmp_path, capsys):
    small_images(tmp_path / "img")  # 12x10 = 120 pixels each
    with pytest.raises(UsageError, match=r"/img/train/cat/0.png: an image of 120 pixels, more "
                       r"than dataset.max_image_pixels=100; refused before decoding"):
        make_image_folder(settings(tmp_path / "img", tmp_path, max_image_pixels=100), 0)
    d = make_image_folder(settings(tmp_path / "img", tmp_path, max_image_pixels=120), 0)
    assert len(d.train) + len(d.val) + len(d.test) == 6
    args = ["image_folder", str(tmp_path / "img"), "--root", str(tmp_path / "c2")]
    assert data_main([*args, "--max-image-pixels", "100"]) == 2  # `regablate data image_folder`
    assert "/img/train/cat/0.png: an image of 120 pixels, more than dataset.max_image_pixels=100" \
        in capsys.readouterr().err
    assert data_main([*args, "--max-image-pixels", "0"]) == 2
    assert "--max-image-pixels 0: must be > 0" in capsys.readouterr().err
    assert ImageFolderSettings().max_image_pixels == MAX_IMAGE_PIXELS == 1024**3 // 4 // 3
    for bad in (0, -5, "many", 1.5):
        with pytest.raises(ConfigError, match=rf"^dataset.max_image_pixels={bad!r}: must be"):
            parse(ImageFolderSettings, {"max_image_pixels": bad}, "dataset")
    cfg = compose_cfg("dataset=image_folder", "dataset.path=x", "model=convnet")
    assert load_settings(cfg).dataset.max_image_pixels == MAX_IMAGE_PIXELS
    cfg = compose_cfg("dataset=image_folder", "dataset.path=x", "model=convnet",
                      "dataset.max_image_pixels=0")
    with pytest.raises(ConfigError, match=r"^dataset.max_image_pixels=0: must be > 0$"):
        load_settings(cfg)


def test_cifar10_export_refuses_a_huge_image_before_decoding(tmp_path, capsys, no_big_decode):
    for split in ("train", "test"):
        for cls in cifar10.CLASSES:
            (tmp_path / "export" / split / cls).mkdir(parents=True)
            Image.new("RGB", (32, 32)).save(tmp_path / "export" / split / cls / "1.png")
    bomb = huge_png(tmp_path / "export" / "train" / "cat" / "0.png", 13000, 13000)
    assert data_main(["cifar10", "--root", str(tmp_path / "r"), "--from", str(tmp_path / "export")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train/cat/0.png: an image of 169000000 pixels, CIFAR-10 is " \
        "32x32; refused before decoding" in err, err
    Image.new("RGB", (40, 33)).save(bomb)  # a small one: its size from the header, as before
    assert data_main(["cifar10", "--root", str(tmp_path / "r"), "--from", str(tmp_path / "export")]) == 2
    assert "train/cat/0.png: image is 40x33, CIFAR-10 is 32x32" in capsys.readouterr().err


# ------------------------------------------------------------------------------ tables

def table(tmp_path: Path, rows: int = 20, **columns) -> Path:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"age": rng.normal(50, 9, rows).round(1), "dose": rng.normal(size=rows),
                       "y": rng.normal(size=rows)})
    for name, (row, value) in columns.items():  # row: 1-based data row
        df.loc[row - 1, name] = value
    df.to_csv(tmp_path / "t.csv", index=False)
    return tmp_path / "t.csv"


def test_a_csv_with_only_a_header_has_no_rows(tmp_path):
    (tmp_path / "t.csv").write_text("age,dose,y\n")
    with pytest.raises(UsageError, match=rf"^{tmp_path}/t.csv: no rows \(only a header: age, dose, y\)$"):
        make_tabular(TabularSettings(path=str(tmp_path / "t.csv"), target="y"), 0)


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_an_infinite_feature_names_the_column_and_row(tmp_path, value):
    path = table(tmp_path, dose=(4, value))
    assert (tmp_path / "t.csv").read_text().splitlines()[4].split(",")[1] == str(value)  # line 5
    with pytest.raises(UsageError) as e:
        make_tabular(TabularSettings(path=str(path), target="y", task="regression"), 0)
    assert str(e.value) == (f"{path}: column 'dose' has a non-finite value ({value}) in data row 4; "
                            "data rows count from 1, the header excluded: values must be finite numbers")


def test_rows_keep_their_numbers_when_rows_without_a_target_are_dropped(tmp_path):
    path = table(tmp_path, y=(2, np.nan), age=(7, 1e308))
    s = TabularSettings(path=str(path), target="y", task="regression", impute="median")
    with pytest.raises(UsageError, match=r": column 'age' is too large to standardise \(1e\+308\) "
                       r"in data row 7; "):
        make_tabular(s, 0)


def test_an_infinite_target_names_the_target_and_row(tmp_path):
    path = table(tmp_path, y=(9, np.inf))
    with pytest.raises(UsageError, match=rf"^{path}: target column 'y' has a non-finite value "
                       r"\(inf\) in data row 9; data rows count from 1"):
        make_tabular(TabularSettings(path=str(path), target="y", task="regression"), 0)
    path = table(tmp_path, y=(3, 1e39))  # finite in the file, not in float32
    with pytest.raises(UsageError, match=r"target column 'y' is too large to hold in float32 "
                       r"\(1e\+39\) in data row 3"):
        make_tabular(TabularSettings(path=str(path), target="y", task="regression",
                                     scale_target=False), 0)


# ------------------------------------------------------------------------------ through the CLI

def _one_line_exit_2(out) -> str:
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("regablate: error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "Traceback" not in out.stderr and "Warning" not in out.stderr
    return out.stderr


def test_cli_refuses_an_infinite_target_in_one_line(tmp_path):
    table(tmp_path, rows=30, y=(12, -np.inf))
    err = _one_line_exit_2(run_cli("run", "dataset=tabular", "dataset.path=t.csv", "dataset.target=y",
                                   "trainer.max_epochs=1", "trainer.progress=none", cwd=tmp_path))
    assert "t.csv: target column 'y' has a non-finite value (-inf) in data row 12;" in err


def test_cli_refuses_a_2_gib_member_in_one_line(tmp_path):
    archive = tar_gz_of_zeros(tmp_path / "img.tar.gz", "photos/train/cat/big.jpg", 2 * GiB)
    err = _one_line_exit_2(run_cli("run", "dataset=image_folder", f"dataset.path={archive}",
                                   f"dataset.root={tmp_path / 'cache'}", "model=convnet",
                                   "trainer.max_epochs=1", cwd=tmp_path))
    assert f"{archive}: member photos/train/cat/big.jpg: 2147483648 bytes, more than an image " \
        "file may take" in err
