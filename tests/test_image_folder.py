"""`dataset=image_folder`: decoding generated images (mixed sizes, modes, PNG/JPEG, a tarball),
the manifest-keyed cache, carved splits, each bad input's one-line error through the real CLI,
and tiny end-to-end runs with the batched augmentation and mixing regularisers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from regablate.data import image_folder
from regablate.data.image_folder import ImageFolderSettings, make_image_folder
from regablate.errors import ConfigError, UsageError
from tests.conftest import ENV

CLASSES = ("cat", "dog", "owl")


def write_images(dest: Path, per_split: dict[str, int], seed: int = 0) -> None:
    """`dest/<split>/<class>/<i>.png|jpg`: sizes from 12 to 40 pixels, grey, RGB, RGBA and
    16-bit grey; PNG and JPEG. Each class has its own mean brightness."""
    rng = np.random.default_rng(seed)
    for split, n in per_split.items():
        for k, cls in enumerate(CLASSES):
            (dest / split / cls).mkdir(parents=True)
            for i in range(n):
                w, h = (int(v) for v in rng.integers(12, 41, 2))
                px = rng.integers(0, 100, (h, w, 3)) + 60 * k
                kind = i % 4
                if kind == 0:
                    Image.fromarray(px.astype(np.uint8)).save(dest / split / cls / f"{i}.jpg")
                elif kind == 1:
                    Image.fromarray(px[..., 0].astype(np.uint8), "L").save(dest / split / cls / f"{i}.png")
                elif kind == 2:
                    rgba = np.concatenate([px, np.full((h, w, 1), 255)], 2).astype(np.uint8)
                    Image.fromarray(rgba, "RGBA").save(dest / split / cls / f"{i}.png")
                else:
                    Image.fromarray((px[..., 0] * 257).astype(np.uint16)).save(dest / split / cls / f"{i}.png")


def settings(path: Path, root: Path, **kw) -> ImageFolderSettings:
    return ImageFolderSettings(path=str(path), root=str(root), n_ood=4, **kw)


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`regablate ARGS` in a fresh process, caches under tmp_path/cache via $REGABLATE_DATA."""
    env = {**ENV, "REGABLATE_DATA": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "regablate", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------------------ decoding

def test_mixed_sizes_modes_and_formats(tmp_path):
    write_images(tmp_path / "img", {"train": 8, "val": 4, "test": 4})
    d = make_image_folder(settings(tmp_path / "img", tmp_path / "c", image_size=16), 0)
    assert d.in_shape == (3, 16, 16) and d.out_dim == 3
    assert [len(s) for s in (d.train, d.val, d.test)] == [24, 12, 12]  # the folders' own splits
    assert d.train.x.dtype == torch.uint8 and d.train.x.shape[1:] == (3, 16, 16)
    assert d.train.y.tolist() == [0] * 8 + [1] * 8 + [2] * 8  # classes in sorted name order
    grey = d.train.x[1]  # 1.png: a greyscale PNG becomes three equal channels
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    means = [d.train.x[d.train.y == k].float().mean().item() for k in range(3)]
    assert means[0] + 40 < means[1] and means[1] + 40 < means[2]  # 16-bit grey scaled, not clipped
    g = make_image_folder(settings(tmp_path / "img", tmp_path / "c", image_size=8, channels=1), 0)
    assert g.in_shape == (1, 8, 8) and g.train.x.shape[1:] == (1, 8, 8)
    x = d.prepare(d.train.x)  # normalised by the training split's statistics
    assert x.dtype == torch.float32 and x.mean((0, 2, 3)).abs().max() < 1e-4
    assert (x.std((0, 2, 3)) - 1).abs().max() < 1e-2


def test_resize_short_side_then_centre_crop():
    px = np.arange(20 * 10 * 3, dtype=np.uint8).reshape(20, 10, 3)  # 10 wide, 20 high
    img = Image.fromarray(px)
    assert np.array_equal(image_folder.to_array(img, 10, 3), px[5:15].transpose(2, 0, 1))
    small = image_folder.to_array(img, 4, 1)
    assert small.shape == (1, 4, 4) and small.dtype == np.uint8


def test_tarball_matches_the_folder(tmp_path):
    write_images(tmp_path / "img", {"train": 4, "test": 2})
    archive = tmp_path / "img.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "img", arcname="xrays")  # one top folder holding train/, test/
    a = make_image_folder(settings(tmp_path / "img", tmp_path / "c", image_size=12), 3)
    b = make_image_folder(settings(archive, tmp_path / "c", image_size=12), 3)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).x, getattr(b, split).x)
        assert torch.equal(getattr(a, split).y, getattr(b, split).y)


def test_missing_splits_are_carved_stratified_from_data_seed(tmp_path):
    write_images(tmp_path / "img", {"train": 10})
    s = settings(tmp_path / "img", tmp_path / "c", image_size=8, val_fraction=0.2,
                 test_fraction=0.3)
    d, again, other = (make_image_folder(s, seed) for seed in (0, 0, 1))
    assert [len(x) for x in (d.train, d.val, d.test)] == [15, 6, 9]
    assert d.val.y.bincount().tolist() == [2, 2, 2] and d.test.y.bincount().tolist() == [3, 3, 3]
    rows = {tuple(x.flatten().tolist()) for split in (d.train, d.val, d.test) for x in split.x}
    assert len(rows) == 30  # disjoint, together the whole folder
    assert torch.equal(d.val.x, again.val.x) and not torch.equal(d.val.x, other.val.x)


# ------------------------------------------------------------------------------ the cache

def test_cache_is_reused_and_invalidated_by_edits(tmp_path, monkeypatch):
    write_images(tmp_path / "img", {"train": 4})
    s = settings(tmp_path / "img", tmp_path / "c", image_size=8)
    calls = []
    decode = image_folder.decode_image
    monkeypatch.setattr(image_folder, "decode_image", lambda *a: calls.append(1) or decode(*a))
    make_image_folder(s, 0)
    assert len(calls) == 12
    [cache] = (tmp_path / "c").rglob("*.pt")
    mtime = cache.stat().st_mtime_ns
    make_image_folder(s, 1)  # unchanged folder, another data_seed: not decoded again
    assert len(calls) == 12 and cache.stat().st_mtime_ns == mtime
    make_image_folder(settings(tmp_path / "img", tmp_path / "c", image_size=8, val_fraction=0.3), 0)
    assert len(calls) == 12  # split settings are applied at run time, from the same cache

    Image.new("RGB", (9, 9), "white").save(tmp_path / "img" / "train" / "dog" / "new.png")
    d = make_image_folder(s, 0)  # a file added
    assert len(calls) == 25 and sum(len(x) for x in (d.train, d.val, d.test)) == 13
    [cache2] = (tmp_path / "c").rglob("*.pt")  # the stale cache of this folder is removed
    assert cache2 != cache

    edited = tmp_path / "img" / "train" / "cat" / "1.png"
    Image.new("L", (30, 20), 7).save(edited)  # a file edited (new size and mtime)
    make_image_folder(s, 0)
    assert len(calls) == 38
    make_image_folder(settings(tmp_path / "img", tmp_path / "c", image_size=6), 0)
    assert len(calls) == 51  # other decoding settings: another cache, kept beside the first
    assert len(list((tmp_path / "c").rglob("*.pt"))) == 2


def test_data_command_decodes_the_cache_runs_reuse(tmp_path, monkeypatch, capsys):
    from regablate.cli.data import main

    write_images(tmp_path / "img", {"train": 2, "test": 1})
    args = ["image_folder", str(tmp_path / "img"), "--image-size", "8", "--root", str(tmp_path / "c")]
    assert main(args) == 0
    assert "3 classes; train 6, test 3 images; 0 skipped" in capsys.readouterr().out
    monkeypatch.setattr(image_folder, "decode_image", lambda *a: pytest.fail("decoded again"))
    d = make_image_folder(settings(tmp_path / "img", tmp_path / "c", image_size=8), 0)
    assert len(d.test) == 3
    assert main(["image_folder", str(tmp_path / "nothing")]) == 2
    assert "/nothing: no such folder or archive (regablate data image_folder PATH)\n" in capsys.readouterr().err
    (tmp_path / "fake.tar.gz").write_bytes(b"not a tar")  # tarfile's error: a line per compression
    assert main(["image_folder", str(tmp_path / "fake.tar.gz")]) == 2
    assert capsys.readouterr().err == (
        f"regablate data: error: {tmp_path}/fake.tar.gz: not a folder or a tar archive (regablate data "
        "image_folder PATH takes a folder, or a .tar, .tar.gz, .tgz, .tar.bz2 or .tar.xz archive, laid "
        "out as train/<class>/<image>)\n")
    run = tmp_path / "run"  # a finished run's dir: no cache goes in it, or below it
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    for root, said in ((run, "is a run dir"), (run / "cache", f"is inside the run dir {run}")):
        assert main(["image_folder", str(tmp_path / "img"), "--root", str(root)]) == 2
        assert f"--root {root}: {said}, which holds only what its run writes" in capsys.readouterr().err
    assert sorted(p.name for p in run.rglob("*")) == [".hydra", "config.yaml"]


@pytest.mark.parametrize("args,said", [
    (["--channels", "2"], "argument --channels: invalid choice: 2 (choose from 1, 3)"),
    (["--image-size", "abc"], "argument --image-size: invalid int value: 'abc'"),
    (["--image-size", "0"], "--image-size 0: must be > 0"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_data_command_bad_flags_are_one_line(tmp_path, capsys, args, said):
    from regablate.cli.data import main

    assert main(["image_folder", str(tmp_path), *args]) == 2
    assert capsys.readouterr().err == f"regablate data: error: {said}\n"  # no usage before it
    assert main(["image_folder"]) == 2
    assert capsys.readouterr().err == "regablate data: error: the following arguments are required: PATH\n"
    with pytest.raises(SystemExit) as e:
        main(["image_folder", "--help"])
    assert e.value.code == 0 and "usage: regablate data image_folder" in capsys.readouterr().out


# ------------------------------------------------------------------------------ bad input

def _no_classes(img: Path) -> None:
    (img / "train").mkdir(parents=True)


def _not_an_archive(img: Path) -> None:
    img.write_text("a,b\n1,2\n")


def _empty_class(img: Path) -> None:
    write_images(img, {"train": 2})
    (img / "train" / "emu").mkdir()


def _classes_differ(img: Path) -> None:
    write_images(img, {"train": 2, "test": 1})
    (img / "test" / "owl").rename(img / "test" / "emu")


def _one_class(img: Path) -> None:
    import shutil

    write_images(img, {"train": 2})
    for d in (img / "train").iterdir():
        if d.name != CLASSES[0]:
            shutil.rmtree(d)


def _unreadable(img: Path) -> None:
    write_images(img, {"train": 2})
    (img / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")


@pytest.mark.parametrize("make,extra,message", [
    (_no_classes, (), "/img: no class folders: expected train/<class>/<image>"),
    (_empty_class, (), "/img/train/emu: an empty class"),
    (_one_class, (), f"/img: one class ({CLASSES[0]!r}) in train/; classification needs at least two class folders"),
    (_classes_differ, (), "/img: classes differ between train/ and test/ (only in train/: owl; "
                          "only in test/: emu)"),
    (_unreadable, (), "/img/train/dog/broken.png: unreadable image ("),
    (_unreadable, ("dataset.image_size=1000000",), "/img: 7 images at 3x1000000x1000000 need "),
    (lambda img: None, (), "/img: no such folder or archive (dataset.path)"),
    (_not_an_archive, (), "/img: not a folder or a tar archive (dataset.path takes a folder, or a .tar, "
                          ".tar.gz, .tgz, .tar.bz2 or .tar.xz archive, laid out as train/<class>/<image>)"),
], ids=["no-classes", "empty-class", "one-class", "classes-differ", "unreadable", "memory", "missing",
        "not-an-archive"])
def test_bad_input_is_one_line_naming_the_path(tmp_path, make, extra, message):
    make(tmp_path / "img")
    r = cli(tmp_path, "run", "dataset=image_folder", f"dataset.path={tmp_path / 'img'}",
            "model=convnet", "trainer.max_epochs=1", *extra)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("regablate: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert f"{tmp_path}{message}" in r.stderr
    if "unreadable" in message:
        assert "dataset.skip_unreadable=true" in r.stderr
    if "need " in message:
        assert "lower dataset.image_size (now 1000000) or set dataset.channels=1" in r.stderr


def test_skip_unreadable_skips_and_counts(tmp_path):
    _unreadable(tmp_path / "img")
    (tmp_path / "img" / "train" / "cat" / "empty.jpg").write_bytes(b"")
    s = settings(tmp_path / "img", tmp_path / "c", image_size=8, skip_unreadable=True)
    d = make_image_folder(s, 0)
    assert sum(len(x) for x in (d.train, d.val, d.test)) == 6
    cached = torch.load(next((tmp_path / "c").rglob("*.pt")), weights_only=True)
    assert cached["skipped"] == ["train/cat/empty.jpg", "train/dog/broken.png"]
    only = tmp_path / "only"
    (only / "train" / "cat").mkdir(parents=True)
    (only / "train" / "cat" / "x.png").write_bytes(b"junk")
    (only / "train" / "dog").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(only / "train" / "dog" / "ok.png")
    with pytest.raises(UsageError, match=r"/only/train/cat: an empty class \(no readable images; 1 skipped"):
        make_image_folder(settings(only, tmp_path / "c", skip_unreadable=True), 0)


def test_a_file_that_is_not_an_archive(tmp_path):
    (tmp_path / "x.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(UsageError, match=r"/x.tar.gz: not a folder or a tar archive \(dataset.path takes"):
        make_image_folder(settings(tmp_path / "x.tar.gz", tmp_path / "c"), 0)


def test_path_is_required(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset.path=None: set it to a folder or .tar.gz"):
        make_image_folder(ImageFolderSettings(root=str(tmp_path)), 0)


# ------------------------------------------------------------------------------ end to end

def test_end_to_end_with_augmentation_and_mixing(tmp_path):
    write_images(tmp_path / "img", {"train": 6})
    archive = tmp_path / "img.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "img" / "train", arcname="train")
    r = cli(tmp_path, "run", "-m", "dataset=image_folder", f"dataset.path={archive}",
            "dataset.image_size=24", "model=convnet", "model.widths=[8,16]", "trainer.max_epochs=1",
            "+reg=none,augment,mixup,cutout,cutmix,dropblock", "trainer.progress=none",
            "trainer.tensorboard=false", "hydra.sweep.dir=sweep")
    assert r.returncode == 0, r.stderr
    summaries = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/summary.json"))]
    assert len(summaries) == 6 and all(s["status"] == "completed" for s in summaries), summaries
    assert {s["dataset"] for s in summaries} == {"image_folder"}
    assert len(list((tmp_path / "cache" / "image_folder").rglob("*.pt"))) == 1  # decoded once
    assert os.environ.get("REGABLATE_DATA") != str(tmp_path / "cache")  # only the child saw it
