"""Shared plumbing for the benchmark scripts: ComfyUI + pack import, timing and peak memory.

Benchmarks print ratios against a baseline measured in the same run, never absolute pass/fail
thresholds. Peak memory is the peak above the level before the call: CUDA allocator statistics on a
GPU, the kernel's peak resident set size (reset before each call) on the CPU.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui_hs_diffusion"


def load_comfy_and_pack(cpu: bool | None = None):
    """Import ComfyUI (COMFYUI_DIR or $HS_WORK_DIR/ComfyUI) and this pack as ``comfyui_hs_diffusion``."""
    work = Path(os.environ.get("HS_WORK_DIR", PACK_DIR / ".work"))
    comfy_dir = Path(os.environ.get("COMFYUI_DIR", work / "ComfyUI"))
    if not (comfy_dir / "comfy").is_dir():
        raise SystemExit(f"ComfyUI not found at {comfy_dir}: run scripts/setup.sh or set COMFYUI_DIR")
    sys.path.insert(0, str(comfy_dir))
    from comfy.cli_args import args

    if cpu is None:
        import torch

        cpu = not torch.cuda.is_available()
    args.cpu = cpu
    if PACK_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACK_NAME, PACK_DIR / "__init__.py", submodule_search_locations=[str(PACK_DIR)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)
    return importlib.import_module(PACK_NAME)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


class _PeakRSS:
    """Peak resident set size during a block, read from the kernel (no sampling thread).

    Writing 5 to /proc/self/clear_refs resets the process's peak RSS (VmHWM) to its current RSS, so the
    peak after the block is exact and nothing competes with the measured code for the GIL or a core.
    """

    def __enter__(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.start = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc):
        self.peak = _status_kib("VmHWM")


@dataclass
class Measurement:
    name: str
    seconds: float  # median over repeats
    peak_bytes: int  # peak above the level before the call

    def __str__(self) -> str:
        return f"{self.name}: {self.seconds * 1000:.2f} ms, peak +{self.peak_bytes / 2**20:.1f} MiB"


def measure(name: str, fn: Callable[[], object], repeat: int = 5, warmup: int = 1, device=None) -> Measurement:
    """Median wall time of ``fn()`` and the peak memory it needs above the level before it."""
    import torch

    cuda = device is not None and torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    times, peaks = [], []
    for _ in range(repeat):
        gc.collect()
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
            peaks.append(torch.cuda.max_memory_allocated(device) - before)
        else:
            with _PeakRSS() as rss:
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            peaks.append(rss.peak - rss.start)
    return Measurement(name, statistics.median(times), max(peaks))


def print_ratio(
    candidate: Measurement, baseline: Measurement, goal_time: float | None = None, goal_memory: float | None = None
):
    """Print both measurements and their ratios (time and peak memory), with the goal when one is set."""
    time_ratio = candidate.seconds / baseline.seconds
    memory_ratio = candidate.peak_bytes / max(baseline.peak_bytes, 1)
    print(f"  {baseline}")
    print(f"  {candidate}")
    line = f"  ratio time {time_ratio:.3f}x"
    if goal_time is not None:
        line += f" (goal ≤ {goal_time:.2f}x: {'met' if time_ratio <= goal_time else 'NOT met'})"
    line += f", peak memory {memory_ratio:.3f}x"
    if goal_memory is not None:
        line += f" (goal ≤ {goal_memory:.2f}x: {'met' if memory_ratio <= goal_memory else 'NOT met'})"
    print(line)
    return time_ratio, memory_ratio
