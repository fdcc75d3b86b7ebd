"""Your own images: `dataset=image_folder dataset.path=DIR_OR_TAR`.

Layout: `train/<class>/<image>` and optionally `val/<class>/...`, `test/<class>/...` (a folder,
or a tar archive with that layout at its top or inside one top folder). Images are any format
Pillow reads (by file suffix; other files are ignored); each is converted to `channels` (1 =
greyscale, 3 = RGB; 16-bit greyscale is scaled to 8 bits), its short side resized to
`image_size` and centre-cropped to a square.

Decoded once into a uint8 cache `<root>/<source id>/<settings id>-<manifest id>.pt`. The
manifest is every image's relative name, size and mtime (for an archive: the archive's own), so
an edited folder is decoded again and an unchanged one is not; the older cache of the same
folder and settings is then removed. At run time missing splits are carved from train,
stratified with `data_seed` (test first, then val; fractions of the train folder), and inputs
are normalised by the training split's per-channel mean and std in `prepare`.

Bad input is a one-line UsageError naming the path (exit 2 through `regablate run`). Sizes are
checked before anything is decoded: an image whose header says it has more than
`max_image_pixels` pixels, or a file (archive member) larger than such an image can take
(`max_file_bytes`), is refused without being decompressed into memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import tarfile
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch

from regablate.config.schema import check, fraction, positive
from regablate.data.base import Data, Split
from regablate.data.memory import available_memory
from regablate.errors import ConfigError, UsageError

SPLITS = ("train", "val", "test")
VERSION = 1  # bump when the decoding changes, so old caches are not reused
MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3  # 89478485: Pillow's own warning threshold
FILE_SLACK = 16 << 20  # bytes an image file may hold beyond its pixels (metadata, ICC, EXIF)


def default_root() -> Path:
    """`$REGABLATE_DATA/image_folder`, or ~/.cache/regablate/image_folder."""
    return Path(os.environ.get("REGABLATE_DATA", "~/.cache/regablate")).expanduser() / "image_folder"


@dataclass
class ImageFolderSettings:
    task: ClassVar[str] = "classification"
    name: Literal["image_folder"] = "image_folder"
    path: str | None = None  # folder or .tar.gz with train/<class>/<image> (val/, test/ optional)
    image_size: int = positive(32)  # short side resized to this, then centre-cropped square
    channels: int = check(lambda v: v in (1, 3), "must be 1 (greyscale) or 3 (RGB)", 3)
    val_fraction: float = fraction(0.1)  # carved from train when there is no val/ folder
    test_fraction: float = fraction(0.1)  # carved from train when there is no test/ folder
    skip_unreadable: bool = False  # skip (and count) images Pillow cannot read, instead of failing
    max_image_pixels: int = positive(MAX_IMAGE_PIXELS)  # a larger image is refused before decoding
    n_ood: int = check(lambda v: v >= 0, "must be >= 0", 1000)  # Gaussian-noise images
    root: str = str(default_root())  # where decoded caches live


# ---------------------------------------------------------------------------- decoding

def max_file_bytes(max_pixels: int) -> int:
    """The largest file (or archive member) read as an image of at most `max_pixels` pixels:
    4 bytes a pixel (RGBA, uncompressed) plus `FILE_SLACK`; larger ones are refused unread."""
    return 4 * max_pixels + FILE_SLACK


class TooLarge(ValueError):
    """An image with more pixels than allowed, found from its header (nothing decoded)."""

    def __init__(self, pixels: int | None, limit: int, size: tuple[int, int] | None = None):
        self.pixels, self.limit, self.size = pixels, limit, size
        dims = f" ({size[0]}x{size[1]})" if size else ""
        self.what = f"an image of {pixels if pixels is not None else 'more'} pixels{dims}"
        super().__init__(f"{self.what}, more than the limit of {limit}")


@contextmanager
def pixel_limit(limit: int) -> Iterator[None]:
    """Pillow's decompression-bomb limit set to `limit` while images are read, its warning an
    error (`open_image` turns both into `TooLarge`); Pillow's own settings are restored after.
    Enter it once around all the reading threads: it sets process-wide state."""
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = limit
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def _too_large(e: Exception, limit: int) -> TooLarge:
    """Pillow's "Image size (N pixels) exceeds limit ..." as `TooLarge`."""
    found = re.search(r"\((\d+) pixels\)", str(e))
    return TooLarge(int(found.group(1)) if found else None, limit)


def open_header(data: bytes, max_pixels: int | None = None):
    """The PIL image of `data` with only its header read; `TooLarge` when the header says it has
    more than `max_pixels` pixels (or than Pillow's limit), OSError/ValueError when unreadable."""
    from PIL import Image

    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    try:
        img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _too_large(e, limit) from None
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise TooLarge(w * h, max_pixels, (w, h))
    return img


def load(img):
    """Decode an image from `open_header`, EXIF orientation applied (Pillow's limit still holds
    for formats whose frames are sized as they load)."""
    from PIL import Image, ImageOps

    try:
        img.load()
        return ImageOps.exif_transpose(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _too_large(e, Image.MAX_IMAGE_PIXELS) from None


def open_image(data: bytes, max_pixels: int | None = None):
    """A loaded PIL image, EXIF orientation applied; `TooLarge` (checked on the header, before
    decoding) for more than `max_pixels` pixels; OSError/ValueError when unreadable."""
    return load(open_header(data, max_pixels))


def to_array(img, size: int, channels: int) -> np.ndarray:
    """(channels, size, size) uint8: converted, short side resized to `size`, centre-cropped."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: full range -> 0..255
        img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8))
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    if min(w, h) != size:
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                         Image.Resampling.BILINEAR)
        w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def decode_image(data: bytes, size: int, channels: int, max_pixels: int | None = None) -> np.ndarray:
    """Image file bytes -> (channels, size, size) uint8 (see `to_array`); `TooLarge` for an
    image of more than `max_pixels` pixels, before it is decoded."""
    img = open_image(data, max_pixels)
    img.draft("L" if channels == 1 else "RGB", (size, size))  # JPEG: decode at a reduced scale
    return to_array(img, size, channels)


# ---------------------------------------------------------------------------- the source

@dataclass
class Source:
    """The images of a folder or archive: `found[split][class]` = relative names (sorted)."""

    path: Path
    found: dict[str, dict[str, list[str]]]
    members: dict = field(default_factory=dict)  # archive: relative name -> TarInfo
    max_bytes: int = max_file_bytes(MAX_IMAGE_PIXELS)  # a larger image file is refused unread

    def size(self, rel: str) -> int:
        return self.members[rel].size if self.members else (self.path / rel).stat().st_size

    def read(self, rel: str, tar: tarfile.TarFile | None) -> bytes:
        """The file's bytes, at most `max_bytes` of them (refused beyond: a file can grow
        between the scan and the read)."""
        if tar is None:
            with open(self.path / rel, "rb") as f:
                data = f.read(self.max_bytes + 1)
        else:
            data = tar.extractfile(self.members[rel]).read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise _oversized(f"{self.path}/{rel}", None, self.max_bytes)
        return data


def _oversized(where: str, size: int | None, limit: int) -> UsageError:
    big = f"{size} bytes" if size is not None else "larger"
    return UsageError(f"{where}: {big}, more than an image file may take ({limit} bytes: 4 a pixel "
                      f"of dataset.max_image_pixels, plus {FILE_SLACK >> 20} MiB); refused before "
                      "reading it")


def _is_image(name: str) -> bool:
    from PIL import Image

    return not name.startswith(".") and Path(name).suffix.lower() in Image.registered_extensions()


def _add(found: dict, parts: list[str], is_file: bool) -> None:
    """Record class folder `parts[:2]`, and the image `parts` if it is one."""
    if parts[0] not in SPLITS or len(parts) < (3 if is_file else 2) or parts[1].startswith("."):
        return
    images = found.setdefault(parts[0], {}).setdefault(parts[1], [])
    if is_file and _is_image(parts[-1]):
        images.append("/".join(parts))


def manifest(path: Path) -> list:
    """What the cache is keyed by: each image's relative name, size and mtime (and each class
    folder's name); for an archive, the archive's own name, size and mtime."""
    if not path.is_dir():
        st = path.stat()
        return [(path.name, st.st_size, st.st_mtime_ns)]
    out = []
    for split in SPLITS:
        if (path / split).is_dir():
            for f in sorted((path / split).rglob("*")):
                rel = f.relative_to(path).as_posix()
                if f.is_dir() and rel.count("/") == 1:
                    out.append((rel + "/", 0, 0))
                elif f.is_file() and _is_image(f.name):
                    st = f.stat()
                    out.append((rel, st.st_size, st.st_mtime_ns))
    return out


def check_source(path: Path, name: str = "dataset.path") -> None:
    """Refuse, in one line naming `name` (the setting or argument the path came from), a path
    that is missing or is neither a folder nor a tar archive (tarfile's own error lists a reason
    per compression, one a line)."""
    if not path.exists():
        raise UsageError(f"{path}: no such folder or archive ({name})")
    if path.is_dir():
        return
    try:
        tar = path.is_file() and tarfile.is_tarfile(path)
    except OSError as e:
        raise UsageError(f"{path}: cannot be read ({e.strerror}; {name})") from None
    if not tar:
        raise UsageError(f"{path}: not a folder or a tar archive ({name} takes a folder, or a .tar, "
                         ".tar.gz, .tgz, .tar.bz2 or .tar.xz archive, laid out as train/<class>/<image>)")


def scan(path: Path, max_bytes: int = max_file_bytes(MAX_IMAGE_PIXELS)) -> Source:
    """The images of a folder or archive by split and class; nothing is decoded. An image file
    (archive member) of more than `max_bytes` is refused, from its size (member header) alone."""
    found: dict[str, dict[str, list[str]]] = {}
    if path.is_dir():
        for rel, size, _ in manifest(path):
            if size > max_bytes:
                raise _oversized(f"{path}/{rel}", size, max_bytes)
            _add(found, rel.rstrip("/").split("/"), not rel.endswith("/"))
        return Source(path, _sorted(found), max_bytes=max_bytes)
    try:
        with tarfile.open(path, "r:*") as tar:
            infos = []
            for m in tar:  # header by header: an oversized image is refused before its data
                if m.isfile() and m.size > max_bytes and _is_image(m.name.rsplit("/", 1)[-1]):
                    raise _oversized(f"{path}: member {m.name}", m.size, max_bytes)
                infos.append(m)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UsageError(f"{path}: not a folder or a readable tar archive ({e})") from e
    names = [m.name.removeprefix("./").rstrip("/") for m in infos]
    tops = {n.split("/")[0] for n in names if n}
    prefix = "" if tops & set(SPLITS) or len(tops) != 1 else tops.pop() + "/"
    members = {}
    for m, name in zip(infos, names, strict=True):
        if name.startswith(prefix) and (m.isfile() or m.isdir()):
            rel = name[len(prefix):]
            _add(found, rel.split("/"), m.isfile())
            if m.isfile():
                members[rel] = m
    return Source(path, _sorted(found), members, max_bytes)


def _sorted(found: dict) -> dict:
    return {s: {c: sorted(found[s][c]) for c in sorted(found[s])} for s in SPLITS if s in found}


def check_layout(src: Source) -> list[str]:
    """The class names (sorted); UsageError for no classes, one class, an empty class,
    differing classes."""
    classes = list(src.found.get("train", {}))
    if not classes:
        raise UsageError(f"{src.path}: no class folders: expected train/<class>/<image> "
                         "(and optionally val/<class>/..., test/<class>/...)")
    if len(classes) < 2:  # every prediction right by construction: loss 0, accuracy 1
        raise UsageError(f"{src.path}: one class ({classes[0]!r}) in train/; classification needs at "
                         "least two class folders")
    for split, by_class in src.found.items():
        for cls, images in by_class.items():
            if not images:
                raise UsageError(f"{src.path}/{split}/{cls}: an empty class (no images Pillow reads)")
        if split != "train" and list(by_class) != classes:
            only_train = sorted(set(classes) - set(by_class))
            only_here = sorted(set(by_class) - set(classes))
            raise UsageError(f"{src.path}: classes differ between train/ and {split}/ (only in "
                             f"train/: {', '.join(only_train) or '-'}; only in {split}/: "
                             f"{', '.join(only_here) or '-'})")
    return classes


def check_memory(src: Source, s: ImageFolderSettings) -> None:
    """Refuse a cache that would not fit: it is held twice while splitting, so 2x must fit."""
    n = sum(len(v) for by_class in src.found.values() for v in by_class.values())
    need, avail = n * s.channels * s.image_size ** 2, available_memory()
    if 2 * need > avail:
        raise UsageError(f"{src.path}: {n} images at {s.channels}x{s.image_size}x{s.image_size} "
                         f"need {need / 2**30:.1f} GiB of memory (twice that while splitting), "
                         f"{avail / 2**30:.1f} GiB is available; lower dataset.image_size (now "
                         f"{s.image_size})" + (" or set dataset.channels=1" if s.channels == 3 else ""))


def decode(src: Source, classes: list[str], s: ImageFolderSettings) -> dict:
    """Decode every image into {split: (x uint8 (N, C, S, S), y)}, images in (class, name)
    order; unreadable images raise UsageError naming them, or are skipped and listed."""
    check_memory(src, s)
    from PIL import Image

    order = {sp: [(c, rel) for c, rels in by_class.items() for rel in rels]
             for sp, by_class in src.found.items()}
    arrays = {sp: np.empty((len(items), s.channels, s.image_size, s.image_size), np.uint8)
              for sp, items in order.items()}
    ok = {sp: np.zeros(len(items), bool) for sp, items in order.items()}
    where = {rel: (sp, i) for sp, items in order.items() for i, (_, rel) in enumerate(items)}
    skipped: list[str] = []

    def one(job: tuple[str, bytes]) -> tuple[str, np.ndarray | Exception]:
        rel, data = job
        try:
            return rel, decode_image(data, s.image_size, s.channels, s.max_image_pixels)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # bad files
            return rel, e

    names = list(src.members) if src.members else list(where)  # archive: in stored order
    names = [n for n in names if n in where]
    tar = tarfile.open(src.path, "r:*") if src.members else None
    try:
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool, pixel_limit(s.max_image_pixels):
            for batch in _batches(names, src):
                jobs = [(rel, src.read(rel, tar)) for rel in batch]
                for rel, out in pool.map(one, jobs):
                    if isinstance(out, TooLarge):  # refused, never skipped: it is not unreadable
                        raise UsageError(f"{src.path}/{rel}: {out.what}, more than dataset."
                                         f"max_image_pixels={s.max_image_pixels}; refused before "
                                         "decoding it (raise the limit to accept it)")
                    if isinstance(out, Exception):
                        if not s.skip_unreadable:
                            reason = str(out).splitlines()[0] if str(out) else type(out).__name__
                            raise UsageError(f"{src.path}/{rel}: unreadable image ({reason}); "
                                             "dataset.skip_unreadable=true skips such images")
                        skipped.append(rel)
                        continue
                    sp, i = where[rel]
                    arrays[sp][i], ok[sp][i] = out, True
    finally:
        if tar is not None:
            tar.close()
    out: dict = {"classes": classes, "skipped": skipped, "source": str(src.path)}
    for sp, items in order.items():
        y = np.array([classes.index(c) for c, _ in items], dtype=np.int64)
        x, y = (arrays[sp], y) if ok[sp].all() else (arrays[sp][ok[sp]], y[ok[sp]])
        for k, cls in enumerate(classes):
            if not (y == k).any():
                raise UsageError(f"{src.path}/{sp}/{cls}: an empty class (no readable images; "
                                 f"{len(skipped)} skipped)")
        out[sp] = {"x": torch.from_numpy(x), "y": torch.from_numpy(y)}
    return out


def _batches(names: list[str], src: Source, most: int = 256, bytes_: int = 256 << 20):
    """`names` in order, in batches of at most `most` files and about `bytes_` bytes (a batch
    is read into memory whole)."""
    batch, total = [], 0
    for rel in names:
        size = src.size(rel)
        if batch and (len(batch) == most or total + size > bytes_):
            yield batch
            batch, total = [], 0
        batch.append(rel)
        total += size
    if batch:
        yield batch


# ---------------------------------------------------------------------------- the cache

def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(path: Path, s: ImageFolderSettings) -> Path:
    """`<root>/<source id>/<settings id>-<manifest id>.pt`."""
    settings = [VERSION, s.image_size, s.channels, s.skip_unreadable]
    return (Path(s.root).expanduser() / _digest(str(path.resolve()))
            / f"{_digest(settings)}-{_digest(manifest(path))}.pt")


def load_or_decode(path: Path, s: ImageFolderSettings) -> dict:
    """The cached decode for this manifest and these settings, made (once) if missing."""
    cache = cache_path(path, s)
    if cache.exists():
        try:
            return torch.load(cache, weights_only=True)
        except Exception:  # a truncated or foreign file: decode again
            pass
    src = scan(path, max_file_bytes(s.max_image_pixels))
    classes = check_layout(src)
    n = sum(len(v) for by_class in src.found.values() for v in by_class.values())
    print(f"regablate: decoding {n} images of {path} at {s.channels}x{s.image_size}x"
          f"{s.image_size} into {cache}", flush=True)
    d = decode(src, classes, s)
    from regablate.rundir.atomic import write_atomic

    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cache, lambda f: torch.save(d, f), mode="wb")
    stem = cache.name.split("-")[0]
    for old in cache.parent.glob(f"{stem}-*.pt"):  # the same folder and settings, edited since
        if old != cache:
            old.unlink(missing_ok=True)
    return d


# ---------------------------------------------------------------------------- at run time

def _carve(y: torch.Tensor, keep: torch.Tensor, n: int, g: torch.Generator, key: str,
           value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices `keep` into (carved: n stratified, rest)."""
    from regablate.data.splits import stratified

    if not 0 < n < len(keep):
        raise ConfigError(key, value, f"leaves no images in a split ({len(keep)} to carve from)")
    picked = keep[stratified(y[keep], n, g)]
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[picked] = False
    return picked, keep[rest[keep]]


def make_image_folder(s: ImageFolderSettings, data_seed: int) -> Data:
    from regablate.data.normalize import Normalize, channel_stats

    if not s.path:
        raise ConfigError("dataset.path", s.path, "set it to a folder or .tar.gz laid out as "
                          "train/<class>/<image>")
    path = Path(s.path).expanduser()
    check_source(path)
    d = load_or_decode(path, s)
    if d["skipped"]:
        print(f"regablate: {path}: skipped {len(d['skipped'])} unreadable images (first: "
              f"{d['skipped'][0]})", file=sys.stderr, flush=True)
    x, y = d["train"]["x"], d["train"]["y"]
    g = torch.Generator().manual_seed(data_seed)
    train = torch.arange(len(y))
    n = len(y)
    if "test" in d:
        test = Split(d["test"]["x"], d["test"]["y"])
    else:
        idx, train = _carve(y, train, round(n * s.test_fraction), g, "dataset.test_fraction",
                            s.test_fraction)
        test = Split(x[idx], y[idx])
    if "val" in d:
        val = Split(d["val"]["x"], d["val"]["y"])
    else:
        idx, train = _carve(y, train, round(n * s.val_fraction), g, "dataset.val_fraction",
                            s.val_fraction)
        val = Split(x[idx], y[idx])
    mean, std = channel_stats(x[train])
    c, size = s.channels, s.image_size
    noise = mean.float().view(1, c, 1, 1) + std.float().view(1, c, 1, 1) * torch.randn(
        s.n_ood, c, size, size, generator=g)
    ood = noise.round().clamp(0, 255).to(torch.uint8)
    return Data("classification", Split(x[train], y[train]), val, test, in_shape=(c, size, size),
                out_dim=len(d["classes"]), prepare=Normalize(mean, std), ood=ood)
