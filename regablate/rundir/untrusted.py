"""Reading what a run dir holds when it may come from someone else: bounded, typed, printable.

    data = read_bounded(run_dir / "summary.json", SMALL_CAP, within=run_dir)   # bytes
    summary = load_json_safe(data)           # plain JSON values, numbers of sane size
    config = load_yaml_safe(text)            # YAML without aliases, plain values only
    print(escape_control(label))             # "\\x1b]0;…" shown, never sent to the terminal

Files are read only when they are regular files (no FIFO, device or socket: opening never
blocks), no larger than a cap, and, with `within`, only when their real path lies inside that
directory. What fails raises `RefusedFile` (an OSError) or `RefusedValue` (a ValueError) with a
one-line reason. Standard library and yaml only.
"""

from __future__ import annotations

import json
import math
import os
import stat
from typing import Any

import yaml

from regablate.errors import escape_control

__all__ = ["RefusedFile", "RefusedValue", "open_regular", "read_bounded", "load_json_safe",
           "load_yaml_safe", "check_tree", "is_sane_number", "escape_control", "SMALL_CAP", "LARGE_CAP",
           "INT_LIMIT", "FLOAT_LIMIT"]

MiB = 1 << 20
SMALL_CAP = 4 * MiB    # summary.json, .hydra/*.yaml, optuna_study.json
LARGE_CAP = 64 * MiB   # metrics.csv
INT_LIMIT = 10**15     # an int must be smaller than this in magnitude
FLOAT_LIMIT = 1e100    # a finite float must be smaller than this in magnitude
MAX_DEPTH = 64         # nesting of dicts and lists


class RefusedFile(OSError):
    """A file not read: not a regular file, too large, or outside the tree it belongs to.
    `path` and `reason` are the two halves of the message."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class RefusedValue(ValueError):
    """Content refused: not valid JSON/YAML, a YAML alias, a number out of range, a value of
    a type a run dir never holds, or nesting too deep. The message says where."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def open_regular(path, *, within=None) -> tuple[int, os.stat_result]:
    """An open descriptor of `path` and its fstat, when it is a regular file (the caller
    closes it). A symbolic link as the last component is refused, unless `within` (a
    directory) is given and the link's real target lies inside it; with `within`, any path
    whose real location is outside it is refused. FIFOs, devices, sockets and directories are
    refused without blocking. Raises RefusedFile (an OSError) for those, FileNotFoundError
    when absent."""
    path = os.fspath(path)
    target = path
    if within is not None:
        target = os.path.realpath(path)
        root = os.path.realpath(os.fspath(within))
        if not os.path.lexists(path):
            raise FileNotFoundError(2, "No such file or directory", path)
        if not _inside(target, root):
            where = "a symbolic link" if os.path.islink(path) else "a path"
            raise RefusedFile(path, f"{where} out of its run dir (to {target}), not read")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
        | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(target, flags)
    except OSError as e:
        if os.path.islink(target):  # ELOOP from O_NOFOLLOW
            raise RefusedFile(path, f"a symbolic link (to {os.path.realpath(target)}), "
                                    "not followed") from None
        if os.path.exists(target) and not os.path.isfile(target):  # a socket: ENXIO
            raise RefusedFile(path, f"{_kind(os.stat(target).st_mode)}, not read") from None
        raise e
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise RefusedFile(path, f"{_kind(info.st_mode)}, not a regular file; not read")
    return fd, info


def read_bounded(path, cap: int = SMALL_CAP, *, within=None) -> bytes:
    """The bytes of `path`, a regular file (`open_regular`'s rules) of at most `cap` bytes.
    Raises RefusedFile (an OSError) for a file refused or too large, FileNotFoundError when
    absent, another OSError when reading fails."""
    path = os.fspath(path)
    fd, info = open_regular(path, within=within)
    try:
        if info.st_size > cap:
            raise RefusedFile(path, f"{_size(info.st_size)}, over the {_size(cap)} limit; "
                                    "not read")
        chunks, total = [], 0
        while total <= cap:
            chunk = os.read(fd, min(1 << 20, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > cap:  # grew while being read
            raise RefusedFile(path, f"over the {_size(cap)} limit; not read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n} bytes"


def is_sane_number(x: Any) -> bool:
    """An int (not a bool) of magnitude < INT_LIMIT, or a finite float of magnitude
    < FLOAT_LIMIT: a number a run dir legitimately holds and arithmetic can use."""
    if isinstance(x, bool):
        return False
    if isinstance(x, int):
        return -INT_LIMIT < x < INT_LIMIT
    return isinstance(x, float) and math.isfinite(x) and abs(x) < FLOAT_LIMIT


_SCALARS = (str, int, float, bool, type(None))


def check_tree(tree: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise RefusedValue unless `tree` is made of dicts (scalar keys), lists and scalars
    (str, int, float, bool, None), nested at most `max_depth` deep, with every int of
    magnitude < INT_LIMIT and every finite float of magnitude < FLOAT_LIMIT. NaN and
    infinities pass: whether they may be used is the caller's business."""
    stack = [(tree, "", 0)]
    while stack:
        node, where, depth = stack.pop()
        if depth > max_depth:
            raise RefusedValue(f"nested more than {max_depth} deep at {where or 'the top'}")
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, _SCALARS):
                    raise RefusedValue(f"a key of type {type(key).__name__} at {where or 'the top'}")
                stack.append((value, f"{where}.{key}" if where else str(key), depth + 1))
        elif isinstance(node, list):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(node))
        elif isinstance(node, bool) or node is None or isinstance(node, str):
            continue
        elif isinstance(node, int):
            if not -INT_LIMIT < node < INT_LIMIT:
                raise RefusedValue(f"{_place(where)}an integer of {len(str(abs(node)))} digits "
                                   f"(at most 15 are read)")
        elif isinstance(node, float):
            if math.isfinite(node) and abs(node) >= FLOAT_LIMIT:
                raise RefusedValue(f"{_place(where)}{node:g} is out of range (|x| < 1e100)")
        else:
            raise RefusedValue(f"{_place(where)}a value of type {type(node).__name__}")


def _place(where: str) -> str:
    return f"{escape_control(where)}: " if where else ""


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > 15:
        raise RefusedValue(f"an integer of {len(text.lstrip('-'))} digits (at most 15 are read)")
    return int(text)


def load_json_safe(data: bytes | str) -> Any:
    """JSON text (bytes: UTF-8) as plain values, checked by `check_tree`. NaN, Infinity and
    -Infinity are read as floats (the caller decides). Raises RefusedValue."""
    try:
        tree = json.loads(data, parse_int=_json_int)
    except RefusedValue:
        raise
    except RecursionError:
        raise RefusedValue(f"nested more than {MAX_DEPTH} deep") from None
    except UnicodeDecodeError as e:
        raise RefusedValue(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except ValueError as e:  # JSONDecodeError and friends
        raise RefusedValue(f"not valid JSON ({e})") from None
    check_tree(tree)
    return tree


def _no_timestamps(cls):
    """Dates and times stay text, as they would in a config written by OmegaConf."""
    cls.add_constructor("tag:yaml.org,2002:timestamp", cls.construct_yaml_str)
    return cls


@_no_timestamps
class _NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases (`*name`, `<<: *name`): no expansion, no
    billion laughs."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise RefusedValue(f"a YAML alias (*{event.anchor}) on line "
                               f"{event.start_mark.line + 1}; aliases are not read")
        return super().compose_node(parent, index)


_CLoader = getattr(yaml, "CSafeLoader", None)
if _CLoader is not None:
    @_no_timestamps
    class _FastLoader(_CLoader):
        """libyaml's safe loader, used only on text that holds no `*` or `&` (no alias)."""
else:  # pragma: no cover - PyYAML built without libyaml
    _FastLoader = _NoAliasLoader


def load_yaml_safe(text: str | bytes) -> Any:
    """YAML text as plain values: no aliases (refused, never expanded), dates kept as text,
    no binary/set/ordered-map values, checked by `check_tree`. Raises RefusedValue with a
    one-line reason."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RefusedValue(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    loader = _NoAliasLoader if "*" in text or "&" in text else _FastLoader
    try:
        tree = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = "; ".join(x for x in (e.context, e.problem) if x) or "not valid YAML"
        raise RefusedValue(what + (f" (line {mark.line + 1})" if mark else "")) from None
    except yaml.YAMLError as e:
        raise RefusedValue(str(e).split("\n")[0] or "not valid YAML") from None
    except RecursionError:
        raise RefusedValue(f"nested more than {MAX_DEPTH} deep") from None
    check_tree(tree)
    return tree


