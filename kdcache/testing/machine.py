"""What a benchmark report says about the machine it ran on, and CPU time of worker processes."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> list[str]:
    """The report's header: command line, CPU and load, library versions (timings depend on all of them)."""
    import numpy as np
    import PIL
    import timm
    import torch
    from PIL import features

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    turbo = features.version_feature("libjpeg_turbo") if features.check_feature("libjpeg_turbo") else "no"
    return [
        f"command : {shlex.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}",
        f"cpu     : {cpu_model()}, {os.cpu_count()} logical cores ({usable} usable), load avg {load[0]:.2f}",
        f"python  : {platform.python_version()}  torch {torch.__version__} (threads {torch.get_num_threads()})  "
        f"timm {timm.__version__}  pillow {PIL.__version__} (libjpeg-turbo {turbo})  numpy {np.__version__}",
    ]


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (Linux /proc); 0.0 where unavailable. Reads DataLoader workers,
    which RUSAGE_CHILDREN (reaped children only) misses while they are persistent."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
