"""Wall time and peak memory of the steps of an evaluation, measured honestly on CPU and GPU.

- Time: ``time.perf_counter`` around the step; on a CUDA device the device is synchronised before
  each reading, so queued kernels are counted in the step that launched them.
- Memory (``MemoryMeter``): the peak *increase* over the memory in use when the step started, in
  bytes — what the step needed on top of the loaded model.
  - CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus
    ``memory_allocated`` at the start (tensors only; the caching allocator's reserve is not counted).
  - CPU on Linux: the process's resident set (RSS). At the start, the C allocator's free pages
    are handed back to the system (glibc ``malloc_trim``), so the RSS is the memory in use rather
    than what earlier steps freed and the allocator kept; then writing
    ``5`` to ``/proc/self/clear_refs`` resets the kernel's high-water mark (``VmHWM``). The peak is
    ``VmHWM`` at the end minus ``VmRSS`` at the start. It counts every allocation of the process
    (Python objects, the allocator's own overhead), so small steps read a few MB of noise.
  - CPU elsewhere: ``resource.getrusage`` ``ru_maxrss`` (a lifetime high-water mark that cannot be
    reset): the increase of the lifetime peak, which is 0 when the step stayed below an earlier peak.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["MemoryMeter", "Timing", "timed"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_rss_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def _release_free_memory() -> None:
    """Hand the C allocator's free pages back to the system (glibc only; torch frees tensors by
    reference counting, so no garbage collection is needed first)."""
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: the RSS keeps the allocator's free pages
        pass


def _lifetime_peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


class MemoryMeter:
    """Peak memory increase on ``device`` between ``start()`` and ``peak_increase()`` (see the module
    docstring for what is counted)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.method = "cuda" if self.device.type == "cuda" else ("rss" if _reset_rss_peak() else "maxrss")

    def start(self) -> None:
        if self.method == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif self.method == "rss":
            _release_free_memory()
            _reset_rss_peak()
            self._start = (_status_kib("VmRSS") or 0) * 1024
        else:
            self._start = _lifetime_peak_bytes()

    def peak_increase(self) -> int:
        if self.method == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "rss":
            peak = (_status_kib("VmHWM") or 0) * 1024
        else:
            peak = _lifetime_peak_bytes()
        return max(0, peak - self._start)


@dataclass
class Timing:
    """What ``timed`` fills in: the block's wall time in seconds."""

    seconds: float = 0.0


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def timed(device: torch.device) -> Iterator[Timing]:
    """Time the block (synchronising a CUDA ``device`` before each reading)."""
    timing = Timing()
    device = torch.device(device)
    _synchronize(device)
    start = time.perf_counter()
    try:
        yield timing
    finally:
        _synchronize(device)
        timing.seconds = time.perf_counter() - start
