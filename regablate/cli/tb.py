"""`regablate tb [DIR ...]`: TensorBoard on the runs' outputs.

Default dirs: ./multirun and ./outputs, those that exist. TensorBoard is shown a view of the
runs under them (`regablate.tensorboard.view`): runs named `<group label>/seed=<s>`, each group's mean
over its seeds as `<group label>/mean` (with its 95% interval as `.../mean/lo`, `.../mean/hi`),
one HParams experiment covering exactly those runs. Runs `python -m tensorboard.main` until Ctrl-C.
Exit codes: TensorBoard's own; 0 after Ctrl-C; 2 for bad input or no dir to show. Run dirs
that cannot be read are skipped with a warning line each; printed text has its control
characters escaped.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import subprocess
import sys
from pathlib import Path

from regablate.errors import OneLineParser, UsageError, escape_control

DEFAULT_ROOTS = ("multirun", "outputs")


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: expected 0-65535")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="regablate tb", hint=" (see --help)", description="Start TensorBoard on the run outputs.")
    p.add_argument("dirs", nargs="*", metavar="DIR",
                   help="folders holding runs (default: ./multirun and ./outputs that exist)")
    p.add_argument("--port", type=_port, default=6006, help="port to serve on (default: 6006)")
    p.add_argument("--host", default="localhost",
                   help="interface to bind (default: localhost; 0.0.0.0 for all)")
    return p


def logdirs(dirs: list[str]) -> list[Path]:
    """The dirs to show: those given (each must exist), else the defaults that exist."""
    for d in dirs:
        if not Path(d).is_dir():
            raise UsageError(f"DIR {d!r}: no such directory")
    found = [Path(d) for d in dirs] or [Path(d) for d in DEFAULT_ROOTS if Path(d).is_dir()]
    if not found:
        raise UsageError("nothing to show: no ./multirun or ./outputs here; run an experiment "
                         "first or pass a DIR")
    return found


def tensorboard_argv(view: Path, host: str, port: int) -> list[str]:
    """The command line that starts TensorBoard on the view (`regablate.tensorboard.view`)."""
    return [sys.executable, "-m", "tensorboard.main", "--logdir", str(view), "--host", host,
            "--port", str(port)]


def means_url(host: str, port: int) -> str:
    """TensorBoard's Time Series on the group means of the val split: each regulariser's mean
    and its 95% band (`/mean/lo`, `/mean/hi`) in one colour, no smoothing."""
    shown = "localhost" if host in ("", "0.0.0.0", "::") else f"[{host}]" if ":" in host else host
    return (f"http://{shown}:{port}/?runFilter=mean.*val&runColorGroup=regex:(.*)/mean"
            "&smoothing=0#timeseries")


def main(argv: list[str]) -> int:
    """Entry point for `regablate tb ...`; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        dirs = logdirs(args.dirs)
        if importlib.util.find_spec("tensorboard") is None:
            raise UsageError("tensorboard is not installed (pip install tensorboard)")
    except UsageError as e:
        print(escape_control(f"regablate tb: error: {e}"), file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    from regablate.tensorboard import view as tb_view

    def say(line: str) -> None:
        print(escape_control(f"regablate tb: {line}"), file=sys.stderr)

    view = tb_view.cache_dir(dirs)
    n_runs, n_groups = tb_view.build(dirs, view, warn=lambda line: say(f"warning: {line}"))
    cmd = tensorboard_argv(view, args.host, args.port)
    say(f"{n_runs} runs in {n_groups} groups from {', '.join(map(str, dirs))}, "
        f"named <group label>/seed=<s>, their means <group label>/mean (view: {view})")
    say(f"{' '.join(cmd[1:])}  (Ctrl-C to stop)")
    say(f"group means with their 95% bands: {means_url(args.host, args.port)}")
    return serve(cmd)


def serve(cmd: list[str]) -> int:
    """Run TensorBoard until it exits, Ctrl-C (exit 0) or SIGTERM (passed on to it)."""
    proc = subprocess.Popen(cmd)
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        rc = proc.wait()
    except KeyboardInterrupt:  # the terminal sent SIGINT to TensorBoard as well
        proc.wait()
        return 0
    return 128 - rc if rc < 0 else rc
