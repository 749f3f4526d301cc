"""The machine an experiment ran on, recorded beside its results (provenance.json, bench.json)."""

import os
import platform
from pathlib import Path


def machine():
    """CPU count, processor and Python version of this machine."""
    return {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version()}


def cpu():
    """CPU model, the flags that decide the speed of a training step, and the load average now.

    The cores are shared, so every timing is recorded with the load it ran under.
    """
    info = {"model": None, "flags": []}
    try:
        text = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and info["model"] is None:
            info["model"] = value.strip()
        elif key.strip() == "flags" and not info["flags"]:
            wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")
            info["flags"] = [flag for flag in value.split() if flag in wanted]
    info["loadavg"] = list(os.getloadavg())
    return info


def write_atomic(path, text):
    """Write ``text`` to a temporary file beside ``path``, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
