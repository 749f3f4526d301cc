"""The machine an experiment ran on, recorded beside its results (provenance.json, bench.json)."""

import os
import platform


def machine():
    """CPU count, processor and Python version of this machine."""
    return {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version()}
