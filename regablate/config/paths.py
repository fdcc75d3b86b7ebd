"""Where the Hydra configs live: inside the wheel (regablate/conf) or the source tree (conf/)."""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # regablate/
CONF_DIR = _PACKAGE / "conf" if (_PACKAGE / "conf").is_dir() else _PACKAGE.parent / "conf"
