"""CIFAR-10 (Krizhevsky 2009): prepared once into a uint8 tensor cache, split and normalised
at run time, held on the device as uint8.

Sources (`regablate data cifar10`, see `prepare`):
- the "CIFAR-10 python version": `cifar-10-python.tar.gz`, or its extracted
  `cifar-10-batches-py/` (as torchvision leaves it): `data_batch_1..5`, `test_batch` and
  `batches.meta`, Python-2 pickles whose `data` rows are 3072 uint8 = R, G, B planes of 32×32.
  Checked against the published md5 checksums (`MD5`); a mismatch is refused unless
  `verify=False`. Pickles are read by an unpickler that only builds numpy arrays and lists.
- the image-folder layout `train/<class>/*.png|jpg`, `test/<class>/...` (directory or tar
  archive), class order = the official label names; decoded as `dataset=image_folder` decodes
  (`image_folder.open_header`, `load`, `to_array`), every image 32×32 (checked on its header,
  before decoding); no checksum applies.

The cache `<root>/cifar10.pt` holds train_x (50000, 3, 32, 32) uint8, train_y, test_x, test_y,
classes and where they came from. At run time (`make_cifar10`) a stratified validation split
(`val_fraction`) is carved from the training set with `data_seed`, then `n_train` images are
taken from the rest (stratified), so the validation split does not depend on `n_train`.
Inputs are normalised by the training split's per-channel mean and std inside `prepare`,
batch by batch on the device.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch

from regablate.config.schema import check, fraction
from regablate.data.base import Data, Split
from regablate.data.normalize import Normalize, channel_stats
from regablate.data.splits import keep_n_train, stratified
from regablate.errors import ConfigError, UsageError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE = "cifar-10-python.tar.gz"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE, META_FILE = "test_batch", "batches.meta"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CACHE = "cifar10.pt"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Bounds on what is read into memory, checked on sizes (member headers) before reading: a batch
# file is 31 MB (batches.meta 158 bytes), a 32x32 image a few KB, the whole data set ~180 MB.
MAX_BATCH_BYTES = 64 << 20
MAX_IMAGE_BYTES = 1 << 20
MAX_TOTAL_BYTES = 1 << 30

# Published md5 checksums (as torchvision's CIFAR10 lists them). Tests replace this table.
MD5 = {
    ARCHIVE: "c58f30108f718f92721af3b95e74349a",
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}


def default_root() -> Path:
    """`$REGABLATE_DATA/cifar10`, or ~/.cache/regablate/cifar10 (the dataset.root default)."""
    return Path(os.environ.get("REGABLATE_DATA", "~/.cache/regablate")).expanduser() / "cifar10"


def md5(data: bytes | Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    if isinstance(data, Path):
        with open(data, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:
        h.update(data)
    return h.hexdigest()


# ---------------------------------------------------------------------------- reading sources

class _ArrayUnpickler(pickle.Unpickler):
    """Builds only what the CIFAR batches contain (dicts, lists, str/bytes, numpy arrays)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise UsageError(f"refusing to unpickle {module}.{name}: not a CIFAR-10 batch file")
        return super().find_class(module, name)


def unpickle(data: bytes) -> dict:
    """A Python-2 pickle (`encoding="latin1"`, as torchvision reads them); keys as str."""
    try:
        d = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise UsageError(f"not a CIFAR-10 batch file ({type(e).__name__}: {e})") from e
    if not isinstance(d, dict):
        raise UsageError("not a CIFAR-10 batch file (not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def _is_image(rel: str) -> bool:
    """`.../train|test/<class>/<name>.png|jpg|jpeg`."""
    parts = rel.split("/")
    return len(parts) >= 3 and parts[-3] in ("train", "test") \
        and parts[-1].lower().endswith(IMAGE_SUFFIXES)


def _wanted(rel: str) -> bool:
    return rel.split("/")[-1] in MD5 or _is_image(rel)


def _check_size(where: str, rel: str, size: int, total: int) -> None:
    """Refuse a file larger than CIFAR-10's files are (or too much in all) before reading it."""
    limit = MAX_IMAGE_BYTES if _is_image(rel) else MAX_BATCH_BYTES
    if size > limit:
        raise UsageError(f"{where}: {size} bytes, more than a CIFAR-10 "
                         f"{'image' if _is_image(rel) else 'batch file'} takes (at most {limit}); "
                         "refused before reading it")
    if total + size > MAX_TOTAL_BYTES:
        raise UsageError(f"{where}: the files read so far pass {MAX_TOTAL_BYTES} bytes, more than "
                         "CIFAR-10 takes; refused before reading more")


def read_files(source: Path) -> dict[str, bytes]:
    """The files of interest (batch files, images) of a directory or a tar archive, by path
    relative to it ("/" separated). Tar archives are streamed, never extracted to disk. A file
    (member) larger than CIFAR-10's are is refused from its size, before it is read."""
    out: dict[str, bytes] = {}
    total = 0
    if source.is_dir():
        for p in sorted(source.rglob("*")):
            rel = p.relative_to(source).as_posix()
            if p.is_file() and _wanted(rel):
                _check_size(str(p), rel, p.stat().st_size, total)
                with open(p, "rb") as f:  # at most the limit: the file may grow meanwhile
                    out[rel] = f.read(MAX_BATCH_BYTES + 1)
                _check_size(str(p), rel, len(out[rel]), total)
                total += len(out[rel])
        return out
    if not source.is_file():
        raise UsageError(f"{source}: no such file or directory")
    try:
        with tarfile.open(source, "r|*") as tar:
            for m in tar:
                rel = m.name.removeprefix("./")
                if m.isfile() and _wanted(rel):
                    _check_size(f"{source}: member {m.name}", rel, m.size, total)
                    out[rel] = tar.extractfile(m).read()
                    total += len(out[rel])
        return out
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UsageError(f"{source}: not a directory or a readable tar archive ({e})") from e


def _batch_files(files: dict[str, bytes]) -> dict[str, bytes] | None:
    """The python-version files by name, from the directory that holds data_batch_1."""
    tops = [rel[: -len("data_batch_1")] for rel in files if rel.split("/")[-1] == "data_batch_1"]
    if not tops:
        return None
    if len(tops) > 1:
        raise UsageError(f"several CIFAR-10 batch directories in the source: {sorted(tops)}")
    top = tops[0]
    names = [*TRAIN_FILES, TEST_FILE, META_FILE]
    missing = [n for n in names if top + n not in files]
    if missing:
        raise UsageError(f"incomplete CIFAR-10 python version: missing {', '.join(missing)}")
    return {n: files[top + n] for n in names}


def _rows_to_images(batch: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = np.asarray(batch.get("data")), batch.get("labels")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels is None \
            or len(labels) != len(data):
        raise UsageError(f"{name}: expected 'data' uint8 rows of 3072 and one label per row")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def decode_batches(named: dict[str, bytes]) -> dict:
    """Python-version batch files -> arrays (rows = R, G, B planes of 32×32, row-major)."""
    meta = unpickle(named[META_FILE])
    names = [n.decode() if isinstance(n, bytes) else n for n in meta.get("label_names", [])]
    if names != CLASSES:
        raise UsageError(f"{META_FILE}: label names {names} are not CIFAR-10's {CLASSES}")
    train = [_rows_to_images(unpickle(named[n]), n) for n in TRAIN_FILES]
    test_x, test_y = _rows_to_images(unpickle(named[TEST_FILE]), TEST_FILE)
    return {"train_x": np.concatenate([x for x, _ in train]),
            "train_y": np.concatenate([y for _, y in train]), "test_x": test_x, "test_y": test_y}


def _decode_32(rel: str, data: bytes):
    """The loaded 32x32 image; any other size is refused from its header, before decoding."""
    from regablate.data.image_folder import TooLarge, load, open_header

    try:
        img = open_header(data)
        if img.size != (32, 32):
            raise UsageError(f"{rel}: image is {img.size[0]}x{img.size[1]}, CIFAR-10 is 32x32")
        return load(img)
    except TooLarge as e:
        raise UsageError(f"{rel}: {e.what}, CIFAR-10 is 32x32; refused before decoding") from None
    except UsageError:
        raise
    except (OSError, ValueError, SyntaxError) as e:
        raise UsageError(f"{rel}: cannot decode image ({e})") from e


def decode_image_folder(files: dict[str, bytes]) -> dict:
    """`[prefix/]train|test/<class>/<image>` -> arrays; label = index of the official name;
    images in file-name order within a class."""
    from regablate.data.image_folder import pixel_limit, to_array

    found: dict[str, list[tuple[int, str]]] = {"train": [], "test": []}
    for rel in filter(_is_image, files):
        split, cls, _ = rel.split("/")[-3:]
        if cls not in CLASSES:
            raise UsageError(f"{rel}: class {cls!r} is not one of CIFAR-10's: {' '.join(CLASSES)}")
        found[split].append((CLASSES.index(cls), rel))
    out = {}
    for split, items in found.items():
        present = {label for label, _ in items}
        if len(present) != len(CLASSES):
            missing = [c for i, c in enumerate(CLASSES) if i not in present]
            raise UsageError(f"image folder: {split}/ lacks images of {', '.join(missing)}"
                             " (needs train/<class>/ and test/<class>/ for all ten classes)")
        items.sort()
        images = np.empty((len(items), 3, 32, 32), dtype=np.uint8)
        with pixel_limit(32 * 32 * 4):  # Pillow's limit only backs up the header check below
            for i, (_, rel) in enumerate(items):
                images[i] = to_array(_decode_32(rel, files[rel]), 32, 3)
        out[f"{split}_x"] = images
        out[f"{split}_y"] = np.array([label for label, _ in items], dtype=np.int64)
    return out


# ---------------------------------------------------------------------------- preparing

def checksum_report(named: dict[str, bytes], archive: Path | None) -> tuple[list[str], list[str]]:
    """(notes, mismatches) of the batch files (and the archive, if one) against `MD5`;
    a mismatch reads "name (md5 GOT, published WANT)".

    The files are the authority: an archive that differs from the official one (repacked)
    but whose files all match is accepted with a note."""
    def mismatch(name: str, digest: str) -> str:
        return f"{name} (md5 {digest}, published {MD5[name]})"

    bad = [mismatch(n, md5(b)) for n, b in named.items() if md5(b) != MD5[n]]
    notes = []
    if archive is not None:
        digest = md5(archive)
        if digest == MD5[ARCHIVE]:
            notes.append(f"{archive.name}: md5 {digest} matches the official archive")
        elif not bad:
            notes.append(f"{archive.name}: md5 {digest} is not the official archive's, but every "
                         "file inside matches its published checksum")
        else:
            bad.insert(0, mismatch(ARCHIVE, digest))
    if not bad:
        notes.append(f"md5 ok: {', '.join(named)} match the published checksums")
    return notes, bad


def _mismatch_summary(bad: list[str]) -> str:
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    return f"{bad[0]}{more}"


def download(root: Path, log: Callable[[str], None] = print, timeout: float = 30.0) -> Path:
    """Fetch the official archive into `root` (atomically); UsageError without network."""
    import shutil
    import urllib.error
    import urllib.request

    root.mkdir(parents=True, exist_ok=True)
    dest, part = root / ARCHIVE, root / (ARCHIVE + ".part")
    log(f"downloading {URL}")
    try:
        with urllib.request.urlopen(URL, timeout=timeout) as r, open(part, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
    except (urllib.error.URLError, OSError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise UsageError(f"could not download {URL}: {reason}; fetch the archive elsewhere and "
                         "pass --from path/to/cifar-10-python.tar.gz") from e
    os.replace(part, dest)
    return dest


def prepare(root: Path, source: Path | None = None, fetch: bool = False, verify: bool = True,
            force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Convert a source into `<root>/cifar10.pt` once; returns the cache path.

    `source` None: the official archive or `cifar-10-batches-py/` already in `root`, else
    `fetch` downloads the archive. Checksums are verified for the python version (a mismatch
    raises UsageError unless `verify=False`); the image-folder layout has none to verify."""
    root = Path(root).expanduser()
    cache = root / CACHE
    if cache.exists() and not force:
        log(f"{cache} already exists (use --force to rebuild it)")
        return cache
    if fetch:
        source = download(root, log)
    elif source is None:
        source = next((p for p in (root / ARCHIVE, root / BATCH_DIR) if p.exists()), None)
        if source is None:
            raise UsageError(f"nothing to prepare in {root}: pass --download, or --from "
                             "path/to/cifar-10-python.tar.gz (or an image-folder export)")
    source = Path(source).expanduser()
    log(f"reading {source}")
    files = read_files(source)
    named = _batch_files(files)
    if named is not None:
        notes, bad = checksum_report(named, source if source.is_file() else None)
        if bad and verify:
            raise UsageError(f"checksum mismatch: {_mismatch_summary(bad)}; this is not the "
                             "official CIFAR-10 python version (pass --no-verify to use it anyway)")
        for line in notes if not bad else [f"checksums differ, accepted (--no-verify): "
                                           f"{_mismatch_summary(bad)}"]:
            log(line)
        arrays, verified, kind = decode_batches(named), not bad, "python version"
    else:
        if not any(map(_is_image, files)):
            raise UsageError(f"{source}: neither the CIFAR-10 python version (data_batch_1 ...) "
                             "nor an image folder (train/<class>/*.png, test/<class>/...)")
        arrays, verified, kind = decode_image_folder(files), False, "image folder"
        log("image-folder layout: no official checksum applies, the images are not verified")
    payload = {k: torch.from_numpy(v) for k, v in arrays.items()}
    payload.update(classes=list(CLASSES), source=str(source), kind=kind, verified=verified)
    from regablate.rundir.atomic import write_atomic

    root.mkdir(parents=True, exist_ok=True)
    write_atomic(cache, lambda f: torch.save(payload, f), mode="wb")
    log(f"wrote {cache}: {len(payload['train_y'])} training and {len(payload['test_y'])} test "
        f"images ({kind}{', md5 verified' if verified else ''})")
    return cache


def load_cache(root: Path) -> dict:
    """The prepared tensors; UsageError naming `regablate data cifar10` when there are none."""
    cache = root / CACHE
    if not cache.exists():
        raise UsageError(f"CIFAR-10 is not prepared in {root}: run `regablate data cifar10 "
                         f"--root {root} --download` (or --from path/to/cifar-10-python.tar.gz)")
    try:
        d = torch.load(cache, weights_only=True)
        ok = all(d[f"{s}_x"].dtype == torch.uint8 and d[f"{s}_x"].shape[1:] == (3, 32, 32)
                 and len(d[f"{s}_x"]) == len(d[f"{s}_y"]) for s in ("train", "test"))
    except Exception as e:  # a truncated or foreign file
        raise UsageError(f"{cache} is unreadable ({type(e).__name__}); rebuild it with "
                         f"`regablate data cifar10 --root {root} --force ...`") from e
    if not ok:
        raise UsageError(f"{cache} does not hold CIFAR-10 tensors; rebuild it with "
                         f"`regablate data cifar10 --root {root} --force ...`")
    return d


# ---------------------------------------------------------------------------- at run time

@dataclass
class Cifar10Settings:
    task: ClassVar[str] = "classification"
    name: Literal["cifar10"] = "cifar10"
    root: str = str(default_root())  # the prepared cache (`regablate data cifar10 --root`)
    val_fraction: float = fraction(0.1)  # share of the training set held out for validation
    n_train: int | None = check(lambda v: v > 0, "must be > 0 or null", None)  # null = all
    n_ood: int = check(lambda v: v >= 0, "must be >= 0", 1000)  # Gaussian-noise images


def make_cifar10(s: Cifar10Settings, data_seed: int) -> Data:
    root = Path(s.root).expanduser()
    d = load_cache(root)
    x, y = d["train_x"], d["train_y"].long()
    g = torch.Generator().manual_seed(data_seed)
    n_val = round(len(y) * s.val_fraction)
    if not 0 < n_val < len(y):
        raise ConfigError("dataset.val_fraction", s.val_fraction, f"leaves no validation or no "
                          f"training images of {len(y)}")
    val = stratified(y, n_val, g)
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[val] = False
    train = rest.nonzero().squeeze(1)
    train = keep_n_train(train, y, s.n_train, g, "the training split left after validation")
    mean, std = channel_stats(x[train])
    # OOD: Gaussian noise with the training split's per-channel mean and std (pixel units)
    noise = mean.float().view(1, 3, 1, 1) + std.float().view(1, 3, 1, 1) * torch.randn(
        s.n_ood, 3, 32, 32, generator=g)
    ood = noise.round().clamp(0, 255).to(torch.uint8)
    return Data("classification", Split(x[train], y[train]), Split(x[val], y[val]),
                Split(d["test_x"], d["test_y"].long()), in_shape=(3, 32, 32),
                out_dim=len(CLASSES), prepare=Normalize(mean, std), ood=ood)

