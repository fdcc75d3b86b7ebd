"""`regablate data <dataset>`: prepare a data set's cache once, before any run uses it.

    regablate data cifar10 --download                  # the official archive (needs network)
    regablate data cifar10 --from cifar-10-python.tar.gz
    regablate data cifar10 --from cifar-10-batches-py/ --root /data/cifar10
    regablate data cifar10 --from export.tar.gz        # train/<class>/*.png, test/<class>/...
    regablate data image_folder ~/xrays --image-size 64 --channels 1   # decode once, before a sweep

Errors (missing source, checksum mismatch, no network) are one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from regablate.errors import OneLineParser, UsageError


def _parser() -> argparse.ArgumentParser:
    from regablate.data import cifar10

    p = OneLineParser(prog="regablate data", description="Prepare a data set once: read, verify and "
                "convert it into a uint8 tensor cache.")
    sub = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    c = sub.add_parser("cifar10", help="CIFAR-10 (python version, or an image-folder export)",
                       description="Convert CIFAR-10 into <root>/cifar10.pt. Without --from or "
                       f"--download, uses {cifar10.ARCHIVE} or {cifar10.BATCH_DIR}/ in the root.")
    c.add_argument("--root", type=Path, default=None,
                   help=f"cache directory, as dataset.root (default: {cifar10.default_root()}, "
                   "from $REGABLATE_DATA)")
    src = c.add_mutually_exclusive_group()
    src.add_argument("--from", dest="source", type=Path, metavar="ARCHIVE",
                     help=f"{cifar10.ARCHIVE}, an extracted {cifar10.BATCH_DIR}/, or an image "
                     "folder train/<class>/, test/<class>/ (directory or .tar.gz)")
    src.add_argument("--download", action="store_true", help=f"fetch {cifar10.URL}")
    c.add_argument("--no-verify", action="store_true",
                   help="accept files whose md5 differs from the published checksums")
    c.add_argument("--force", action="store_true", help="rebuild an existing cache")
    f = sub.add_parser("image_folder", help="your own images: decode a folder or .tar.gz once",
                       description="Decode train/<class>/<image> (val/, test/ optional) into the "
                       "cache that runs with the same dataset.* settings reuse (also made by the "
                       "first run; decoding it first helps parallel launchers).")
    f.add_argument("path", type=Path, metavar="PATH", help="the folder or archive, as dataset.path")
    f.add_argument("--image-size", type=int, default=32, help="as dataset.image_size (default 32)")
    f.add_argument("--channels", type=int, default=3, choices=(1, 3), help="as dataset.channels")
    f.add_argument("--skip-unreadable", action="store_true", help="as dataset.skip_unreadable")
    f.add_argument("--max-image-pixels", type=int, default=None, help="as dataset.max_image_pixels "
                   "(default 89478485, Pillow's own limit)")
    f.add_argument("--root", type=Path, default=None, help="cache directory, as dataset.root "
                   "(default: $REGABLATE_DATA/image_folder or ~/.cache/regablate/image_folder)")
    return p


def _image_folder(args: argparse.Namespace) -> None:
    from regablate.data import image_folder as imf

    if args.image_size < 1:
        raise UsageError(f"--image-size {args.image_size}: must be > 0")
    pixels = imf.MAX_IMAGE_PIXELS if args.max_image_pixels is None else args.max_image_pixels
    if pixels < 1:
        raise UsageError(f"--max-image-pixels {pixels}: must be > 0")
    root = args.root if args.root is not None else imf.default_root()
    s = imf.ImageFolderSettings(path=str(args.path), image_size=args.image_size,
                                channels=args.channels, skip_unreadable=args.skip_unreadable,
                                max_image_pixels=pixels, root=str(root.expanduser()))
    path = args.path.expanduser()
    imf.check_source(path, "regablate data image_folder PATH")
    cache = imf.cache_path(path, s)
    d = imf.load_or_decode(path, s)
    sizes = ", ".join(f"{split} {len(d[split]['y'])}" for split in imf.SPLITS if split in d)
    print(f"{cache}: {len(d['classes'])} classes; {sizes} images; {len(d['skipped'])} skipped")


def main(argv: list[str]) -> int:
    from regablate.data import cifar10

    try:
        args = _parser().parse_args(argv)
        root = args.root.expanduser() if args.root is not None else cifar10.default_root()
        if args.root is not None:  # a cache is no file of a run's
            from regablate.rundir.claim import within_run

            where = within_run(args.root.expanduser())
            if where:
                raise UsageError(f"--root {args.root}: {where}, which holds only what its run writes; give "
                                 "the cache a folder of its own")
        if args.dataset == "image_folder":
            _image_folder(args)
            return 0
        cifar10.prepare(root, args.source, fetch=args.download, verify=not args.no_verify,
                        force=args.force, log=lambda line: print(line, flush=True))
    except UsageError as e:
        print(f"regablate data: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
