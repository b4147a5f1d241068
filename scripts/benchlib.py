"""Shared plumbing for the benchmark scripts: ComfyUI + pack import, timing and peak memory.

Benchmarks print ratios against a baseline measured in the same run, never absolute pass/fail
thresholds. Peak memory is the peak above the level before the call: CUDA allocator statistics on a
GPU, resident set size sampled every millisecond on the CPU.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import statistics
import sys
import threading
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


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRSS:
    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.start = _rss_bytes()
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


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
