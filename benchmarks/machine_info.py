"""The machine a benchmark ran on, printed with every figure (one description for all benchmarks)."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

__all__ = ["cpu_model", "machine", "memory", "python"]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown cpu"


def memory() -> str:
    """``", 24 GiB RAM"``, or empty when /proc/meminfo can't be read."""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return ""
    return f", {kb / 1024 / 1024:.0f} GiB RAM"


def python() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}"


def machine() -> str:
    load = "n/a"
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return (
        f"{python()} on {cpu_model()}, {os.cpu_count()} cores{memory()}, {platform.system()} {platform.release()}, "
        f"load average {load} (other work on the machine skews figures)"
    )
