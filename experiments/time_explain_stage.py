"""Time the explain stage of a run folder (`pneumoxai explain --run RUN`) with phase timers, and summarise.

    python experiments/time_explain_stage.py run RUN OUT.json        # one timed run (writes into RUN)
    python experiments/time_explain_stage.py summarise LOG_DIR COMPARISON.json FIGURE.json

``run`` wraps the stage's private steps with wall-clock timers (nested steps overlap: the layer
choice contains its ROAD and deletion calls) and records the CPU model, its flags, the load
average before and after and the git commit. Run it on a copy of a finished run: it rewrites
the copy's maps and tables. ``summarise`` writes the before/after figure JSON
(``figures/scale/explain_stage.json``) with the equality check of
``experiments/compare_explain_outputs.py``.
"""

import collections
import functools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def machine():
    """CPU model, the flags that matter to TensorFlow's kernels, cores, load average, commit."""
    info = Path("/proc/cpuinfo").read_text()
    model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
    flags = set(next(line for line in info.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return {"cpu": model, "flags": {flag: flag in flags for flag in FLAGS}, "cores": os.cpu_count(),
            "load_average": os.getloadavg(), "commit": commit}


def timed_run(run_dir, out):
    totals, counts = collections.Counter(), collections.Counter()

    def timed(owner, name, label):
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                totals[label] += time.perf_counter() - started
                counts[label] += 1
        setattr(owner, name, wrapper)

    import pneumoxai.data
    import pneumoxai.explain
    import pneumoxai.lungs
    import pneumoxai.pipeline.explanations as stage
    from pneumoxai import cli
    from pneumoxai.explain import _base, choice

    for name in ("_choose_test_split_map", "_test_split_maps", "_gallery_maps", "_ensemble_shap", "_write_gallery",
                 "_faithfulness_summary", "_explain_figures"):
        timed(stage, name, name)
    for name in ("road", "deletion_auc", "_randomized_copies", "_explain_randomized"):
        timed(choice, name, f"layer choice: {name}")
    timed(_base.MapExplainer, "__call__", "MapExplainer.__call__")
    timed(pneumoxai.explain, "shap_maps", "shap_maps")
    timed(pneumoxai.data, "load_images", "load_images")
    timed(pneumoxai.lungs, "lung_mask", "lung_mask")
    before = machine()
    started, cpu_started = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    status = cli.main(["explain", "--run", str(run_dir)])
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    record = {"run": str(run_dir), "status": status, "wall_seconds": time.perf_counter() - started,
              "cpu_seconds": cpu.ru_utime + cpu.ru_stime - cpu_started.ru_utime - cpu_started.ru_stime,
              "machine_before": before, "load_average_after": os.getloadavg(),
              "phases_seconds": {k: round(v, 2) for k, v in totals.most_common()}, "phase_calls": dict(counts)}
    Path(out).write_text(json.dumps(record, indent=1))
    return status


def _time_v(path):
    """User, system and elapsed seconds and peak RSS (MB) from the stderr of ``/usr/bin/time -v``."""
    fields = {}
    for line in Path(path).read_text().splitlines():
        key, _, value = line.strip().rpartition(": ")
        fields[key] = value
    h_m_s = [float(part) for part in fields["Elapsed (wall clock) time (h:mm:ss or m:ss)"].split(":")]
    elapsed = sum(value * 60 ** i for i, value in enumerate(reversed(h_m_s)))
    return {"user_seconds": float(fields["User time (seconds)"]), "system_seconds": float(fields["System time (seconds)"]),
            "elapsed_seconds": elapsed, "peak_rss_mb": int(fields["Maximum resident set size (kbytes)"]) / 1024}


def summarise(log_dir, comparison, out):
    """The figure JSON from ``LOG_DIR/{before,after}{_phases.json,.err,_env.txt}`` and the comparison JSON.

    ``.err`` is the stderr of ``/usr/bin/time -v python ... run RUN OUT.json``; ``_env.txt`` holds
    ``date``, ``uptime`` and the commit before the run, and ``uptime`` and ``date`` after it.
    """
    log_dir = Path(log_dir)
    record = {"what": "explain stage of the CPU-profile run (3 snapshot members of ResNet50 at 128 px, 624 test "
                      "images, 24 gallery images with Grad-CAM, LayerCAM (fused), HiResCAM (fused) and SHAP, "
                      "layer choice on 24 images), re-run with `pneumoxai explain --run` on two copies of one "
                      "finished run, before and after the change",
              "machine": {k: v for k, v in machine().items() if k not in ("load_average", "commit")}}
    for tag in ("before", "after"):
        phases = json.loads((log_dir / f"{tag}_phases.json").read_text())
        env = (log_dir / f"{tag}_env.txt").read_text().splitlines()
        cpu = _time_v(log_dir / f"{tag}.err")
        record[tag] = {"commit": env[2], "started": env[0], "uptime_before": env[1].strip(),
                       "uptime_after": env[3].strip() if len(env) > 3 else None,
                       "finished": env[4] if len(env) > 4 else None,
                       "stage_wall_seconds": phases["wall_seconds"], "stage_wall_minutes": phases["wall_seconds"] / 60,
                       "process_cpu_seconds": cpu["user_seconds"] + cpu["system_seconds"], **cpu,
                       "phases_wall_seconds": {k: v[0] for k, v in phases["phases"].items()},
                       "phase_calls": {k: v[1] for k, v in phases["phases"].items()}}
    record["speedup_wall"] = record["before"]["stage_wall_seconds"] / record["after"]["stage_wall_seconds"]
    record["speedup_cpu"] = record["before"]["process_cpu_seconds"] / record["after"]["process_cpu_seconds"]
    record["outputs_compared"] = json.loads(Path(comparison).read_text())
    Path(out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    sys.exit(timed_run(*args) if command == "run" else summarise(*args))
