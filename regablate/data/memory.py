"""Host memory available to a new allocation (for refusing what would not fit)."""

from __future__ import annotations

import os


def available_memory() -> int:
    """Bytes available: MemAvailable of /proc/meminfo on Linux, else free pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
