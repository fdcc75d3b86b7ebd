"""`regablate data <dataset>`: prepare a data set's cache once, before any run uses it.

    regablate data cifar10 --download                  # the official archive (needs network)
    regablate data cifar10 --from cifar-10-python.tar.gz
    regablate data cifar10 --from cifar-10-batches-py/ --root /data/cifar10
    regablate data cifar10 --from export.tar.gz        # train/<class>/*.png, test/<class>/...

Errors (missing source, checksum mismatch, no network) are one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from regablate.errors import UsageError


def _parser() -> argparse.ArgumentParser:
    from regablate.data import cifar10

    p = argparse.ArgumentParser(prog="regablate data", description="Prepare a data set once: "
                                "read, verify and convert it into a uint8 tensor cache.")
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
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from regablate.data import cifar10

    root = args.root.expanduser() if args.root is not None else cifar10.default_root()
    try:
        cifar10.prepare(root, args.source, fetch=args.download, verify=not args.no_verify,
                        force=args.force, log=lambda line: print(line, flush=True))
    except UsageError as e:
        print(f"regablate data: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
