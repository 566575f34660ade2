"""Cost measurement: the peak-memory meter sees an allocation of known size and resets between
steps; the timer counts the block."""

from __future__ import annotations

import time

import torch

from shine_hf.evaluation.costs import MemoryMeter, timed

MIB = 2**20


def test_the_memory_meter_sees_a_known_allocation_and_resets():
    meter = MemoryMeter(torch.device("cpu"))
    meter.start()
    block = torch.ones(16 * MIB)  # 64 MiB of float32, every page written
    block.sum()
    peak = meter.peak_increase()
    del block
    assert peak >= 64 * MIB, (meter.method, peak)
    if meter.method == "rss":  # the kernel's high-water mark is reset by start(): a small step reads small
        meter.start()
        torch.ones(1024).sum()
        assert meter.peak_increase() < 64 * MIB


def test_timed_counts_the_block():
    with timed(torch.device("cpu")) as timing:
        time.sleep(0.05)
    assert timing.seconds >= 0.05
