"""CIFAR-10 data: the real loader on small files in the genuine format, checksums, the image
folder layout, the cache, splits and normalisation."""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from regablate.cli.data import main
from regablate.data import cifar10
from regablate.data.cifar10 import CLASSES, Cifar10Settings, make_cifar10, stratified
from regablate.errors import UsageError

PER_BATCH, N_TEST = 20, 30


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_python_version(dest: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """`dest/cifar-10-batches-py/` and `dest/cifar-10-python.tar.gz` as the real ones are made:
    protocol-2 pickles of dicts with bytes keys, `data` = uint8 rows of 3072 (R, G, B planes)."""
    rng = np.random.default_rng(seed)
    d = dest / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rows, labels = {}, {}
    for name, n in [*((f"data_batch_{i}", PER_BATCH) for i in range(1, 6)), ("test_batch", N_TEST)]:
        rows[name] = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels[name] = [int(v) for v in rng.permutation(np.arange(n) % 10)]
        batch = {b"batch_label": name.encode(), b"labels": labels[name], b"data": rows[name],
                 b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
        (d / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"num_cases_per_batch": PER_BATCH, b"label_names": [c.encode() for c in CLASSES],
            b"num_vis": 3072}
    (d / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    with tarfile.open(dest / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(d, arcname="cifar-10-batches-py")
    train = [f"data_batch_{i}" for i in range(1, 6)]
    return {"train_rows": np.concatenate([rows[n] for n in train]),
            "train_y": np.concatenate([labels[n] for n in train]),
            "test_rows": rows["test_batch"], "test_y": np.array(labels["test_batch"])}


def genuine_md5(dest: Path, archive: bool = True) -> dict[str, str]:
    table = {p.name: _md5(p) for p in (dest / "cifar-10-batches-py").iterdir()}
    table["cifar-10-python.tar.gz"] = _md5(dest / "cifar-10-python.tar.gz") if archive \
        else cifar10.MD5["cifar-10-python.tar.gz"]
    return table


@pytest.fixture
def src(tmp_path):
    return tmp_path / "src", write_python_version(tmp_path / "src")


def test_reads_the_python_version_into_the_cache(src, tmp_path, monkeypatch, capsys):
    dest, ref = src
    monkeypatch.setattr(cifar10, "MD5", genuine_md5(dest))
    root = tmp_path / "root"
    assert main(["cifar10", "--root", str(root), "--from", str(dest / "cifar-10-python.tar.gz")]) == 0
    out = capsys.readouterr().out
    assert "matches the official archive" in out and "md5 ok" in out
    d = torch.load(root / "cifar10.pt", weights_only=True)
    assert d["train_x"].dtype == torch.uint8 and d["train_x"].shape == (5 * PER_BATCH, 3, 32, 32)
    assert d["test_x"].shape == (N_TEST, 3, 32, 32) and d["verified"] and d["classes"] == CLASSES
    assert torch.equal(d["train_y"], torch.from_numpy(ref["train_y"]))
    assert torch.equal(d["test_y"], torch.from_numpy(ref["test_y"]))
    rows = ref["train_rows"]
    # a row is 1024 red values (row-major 32x32), then 1024 green, then 1024 blue
    assert d["train_x"][7, 0, 0, 0] == rows[7, 0] and d["train_x"][7, 0, 1, 0] == rows[7, 32]
    assert d["train_x"][7, 1, 0, 0] == rows[7, 1024] and d["train_x"][7, 2, 31, 31] == rows[7, 3071]
    assert torch.equal(d["test_x"].reshape(N_TEST, -1), torch.from_numpy(ref["test_rows"]))

    # converted once: a second call leaves the cache alone, even without the source
    (dest / "cifar-10-python.tar.gz").unlink()
    assert main(["cifar10", "--root", str(root)]) == 0
    assert "already exists" in capsys.readouterr().out


def test_checksum_mismatch_is_refused_unless_no_verify(src, tmp_path, capsys):
    dest, _ = src  # the official checksums: the test files cannot match them
    root = tmp_path / "root"
    archive = str(dest / "cifar-10-python.tar.gz")
    assert main(["cifar10", "--root", str(root), "--from", archive]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checksum mismatch" in err and "--no-verify" in err
    assert not (root / "cifar10.pt").exists()
    assert main(["cifar10", "--root", str(root), "--from", archive, "--no-verify"]) == 0
    assert "accepted (--no-verify)" in capsys.readouterr().out
    assert not torch.load(root / "cifar10.pt", weights_only=True)["verified"]


def test_one_altered_file_is_named(src, tmp_path, monkeypatch, capsys):
    dest, _ = src
    monkeypatch.setattr(cifar10, "MD5", genuine_md5(dest))
    batch = dest / "cifar-10-batches-py" / "data_batch_3"
    raw = bytearray(batch.read_bytes())
    raw[-100] ^= 1  # one pixel of the last image
    batch.write_bytes(bytes(raw))
    assert main(["cifar10", "--root", str(tmp_path / "r"), "--from", str(batch.parent)]) == 2
    err = capsys.readouterr().err
    assert "data_batch_3 (md5" in err and "data_batch_1" not in err


def test_extracted_directory_and_repacked_archive(src, tmp_path, monkeypatch, capsys):
    dest, ref = src
    monkeypatch.setattr(cifar10, "MD5", genuine_md5(dest, archive=False))
    # torchvision's layout: the extracted directory, found in the root without --from
    root = tmp_path / "tv"
    root.mkdir()
    (dest / "cifar-10-batches-py").rename(root / "cifar-10-batches-py")
    assert main(["cifar10", "--root", str(root)]) == 0
    x = torch.load(root / "cifar10.pt", weights_only=True)["train_x"]
    assert torch.equal(x.reshape(len(x), -1), torch.from_numpy(ref["train_rows"]))
    # an archive that is not the official one, holding files that are: accepted, said so
    assert main(["cifar10", "--root", str(tmp_path / "r2"), "--from",
                 str(dest / "cifar-10-python.tar.gz")]) == 0
    assert "is not the official archive's, but every file inside matches" in capsys.readouterr().out


def test_pickles_only_build_arrays(src, tmp_path, monkeypatch, capsys):
    dest, _ = src

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (dest / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps({b"data": Evil()}, 2))
    code = main(["cifar10", "--root", str(tmp_path / "r"), "--no-verify",
                 "--from", str(dest / "cifar-10-batches-py")])
    assert code == 2 and not (tmp_path / "pwned").exists()
    assert "refusing to unpickle" in capsys.readouterr().err


def _write_image_folder(dest: Path, per_class: dict[str, int], fmt: str = "png") -> dict:
    rng = np.random.default_rng(1)
    ref: dict[str, list] = {"train": [], "test": []}
    for split, n in per_class.items():
        for label, cls in enumerate(CLASSES):
            (dest / split / cls).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(img).save(dest / split / cls / f"{i:04d}.{fmt}")
                ref[split].append((label, img.transpose(2, 0, 1)))
    return ref


@pytest.mark.parametrize("as_tar", [False, True])
def test_image_folder_layout(tmp_path, as_tar, capsys):
    folder = tmp_path / "export"
    ref = _write_image_folder(folder, {"train": 3, "test": 2})
    source = folder
    if as_tar:
        source = tmp_path / "export.tar.gz"
        with tarfile.open(source, "w:gz") as tar:
            tar.add(folder / "train", arcname="train")
            tar.add(folder / "test", arcname="test")
    root = tmp_path / "root"
    assert main(["cifar10", "--root", str(root), "--from", str(source)]) == 0
    assert "no official checksum applies" in capsys.readouterr().out
    d = torch.load(root / "cifar10.pt", weights_only=True)
    assert not d["verified"] and d["kind"] == "image folder"
    for split in ("train", "test"):
        labels = torch.tensor([label for label, _ in ref[split]])
        images = torch.from_numpy(np.stack([img for _, img in ref[split]]))
        assert torch.equal(d[f"{split}_y"], labels)  # official label order
        assert torch.equal(d[f"{split}_x"], images)  # PNG is lossless: the exact pixels


def test_image_folder_refuses_unknown_class_and_missing_split(tmp_path, capsys):
    folder = tmp_path / "export"
    _write_image_folder(folder, {"train": 1, "test": 1})
    (folder / "train" / "cat").rename(folder / "train" / "kitten")
    assert main(["cifar10", "--root", str(tmp_path / "r"), "--from", str(folder)]) == 2
    assert "'kitten' is not one of CIFAR-10's" in capsys.readouterr().err
    (folder / "train" / "kitten").rename(folder / "train" / "cat")
    for p in (folder / "test" / "dog").iterdir():
        p.unlink()
    assert main(["cifar10", "--root", str(tmp_path / "r"), "--from", str(folder)]) == 2
    assert "test/ lacks images of dog" in capsys.readouterr().err


def test_download_fails_cleanly_without_network(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cifar10, "URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    assert main(["cifar10", "--root", str(tmp_path / "r"), "--download"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "could not download" in err and "--from" in err
    assert not any((tmp_path / "r").iterdir())  # no partial archive left behind


def test_nothing_to_prepare_and_bad_source(tmp_path, capsys):
    assert main(["cifar10", "--root", str(tmp_path / "empty")]) == 2
    assert "--download" in capsys.readouterr().err
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    assert main(["cifar10", "--root", str(tmp_path / "r"), "--from", str(tmp_path / "junk.tar.gz")]) == 2
    assert "not a directory or a readable tar archive" in capsys.readouterr().err


# ------------------------------------------------------------------------------ at run time

@pytest.fixture
def prepared(tmp_path):
    """A cache with 1000 training images (100 per class) and 200 test images."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(1000) % 10
    x = torch.randint(0, 256, (1000, 3, 32, 32), dtype=torch.uint8, generator=g)
    x[:, 0] //= 2  # channels with different statistics
    test_x = torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8, generator=g)
    root = tmp_path / "prepared"
    root.mkdir()
    torch.save({"train_x": x, "train_y": y, "test_x": test_x, "test_y": torch.arange(200) % 10,
                "classes": CLASSES, "source": "test", "kind": "test", "verified": False},
               root / "cifar10.pt")
    return root


def test_missing_data_names_the_data_command(tmp_path):
    with pytest.raises(UsageError, match="regablate data cifar10 --root"):
        make_cifar10(Cifar10Settings(root=str(tmp_path / "nothing")), 0)


def test_splits_are_stratified_disjoint_and_seeded(prepared):
    data = make_cifar10(Cifar10Settings(root=str(prepared), val_fraction=0.1), 0)
    assert (len(data.train), len(data.val), len(data.test)) == (900, 100, 200)
    assert data.val.y.bincount().tolist() == [10] * 10
    train_ids = {tuple(v) for v in data.train.x.flatten(1)[:, :16].tolist()}
    assert not train_ids & {tuple(v) for v in data.val.x.flatten(1)[:, :16].tolist()}
    sub = make_cifar10(Cifar10Settings(root=str(prepared), n_train=250), 0)
    assert len(sub.train) == 250 and sorted(sub.train.y.bincount().tolist()) == [25] * 10
    assert torch.equal(sub.val.x, data.val.x)  # validation does not depend on n_train
    again = make_cifar10(Cifar10Settings(root=str(prepared), n_train=250), 0)
    assert torch.equal(again.train.x, sub.train.x)
    other = make_cifar10(Cifar10Settings(root=str(prepared), n_train=250), 1)
    assert not torch.equal(other.val.x, data.val.x)


def test_stratified_largest_remainder():
    labels = torch.tensor([0] * 7 + [1] * 2 + [2] * 1)
    idx = stratified(labels, 5, torch.Generator().manual_seed(0))
    assert len(idx) == 5 and labels[idx].bincount(minlength=3).tolist() == [4, 1, 0]


def test_too_many_training_images_is_a_config_error(prepared):
    from regablate.errors import ConfigError

    with pytest.raises(ConfigError, match="dataset.n_train"):
        make_cifar10(Cifar10Settings(root=str(prepared), n_train=950), 0)


def test_prepare_normalises_with_train_statistics(prepared):
    data = make_cifar10(Cifar10Settings(root=str(prepared)), 0)
    z = data.prepare(data.train.x)
    assert z.dtype == torch.float32 and z.shape == data.train.x.shape
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z.std((0, 2, 3)), torch.ones(3), atol=1e-3)
    assert data.ood.dtype == torch.uint8 and data.ood.shape[1:] == (3, 32, 32)
    assert data.prepare(data.ood).std() == pytest.approx(1.0, abs=0.15)
    assert data.in_shape == (3, 32, 32) and data.out_dim == 10


def test_root_comes_from_the_environment(monkeypatch):
    from omegaconf import OmegaConf

    from regablate.config.paths import CONF_DIR

    node = OmegaConf.load(CONF_DIR / "dataset" / "cifar10.yaml")
    monkeypatch.setenv("REGABLATE_DATA", "/data/here")
    assert OmegaConf.to_container(node, resolve=True)["root"] == "/data/here/cifar10"
    monkeypatch.delenv("REGABLATE_DATA")
    assert OmegaConf.to_container(node, resolve=True)["root"] == "~/.cache/regablate/cifar10"
    assert cifar10.default_root() == Path("~/.cache/regablate/cifar10").expanduser()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prepare_on_cuda_is_channels_last(prepared):
    data = make_cifar10(Cifar10Settings(root=str(prepared)), 0).to(torch.device("cuda"))
    z = data.prepare(data.train.x[:64])
    assert z.is_cuda and z.is_contiguous(memory_format=torch.channels_last)
    ref = make_cifar10(Cifar10Settings(root=str(prepared)), 0).prepare(data.train.x[:64].cpu())
    assert torch.allclose(z.cpu(), ref, atol=1e-5)


def test_unpickle_accepts_python2_str_keys():
    # Python 2 cPickle wrote str keys as SHORT_BINSTRING; with encoding="latin1" they are str
    raw = b"\x80\x02}q\x00U\x06labelsq\x01]q\x02K\x03as."
    assert cifar10.unpickle(raw) == {"labels": [3]}
    assert cifar10.unpickle(pickle.dumps({b"labels": [3]}, protocol=2)) == {"labels": [3]}
