"""Where the Hydra configs live: inside the wheel (regablate/conf) or the source tree (conf/)."""

from pathlib import Path

_HERE = Path(__file__).resolve().parent
CONF_DIR = _HERE / "conf" if (_HERE / "conf").is_dir() else _HERE.parent / "conf"
