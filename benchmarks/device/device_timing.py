"""What the device benchmarks share: waiting for the device before reading a clock.

The scripts in ``benchmarks/device/`` run as ``python benchmarks/device/NAME.py``, so this folder is on ``sys.path``.
"""

from __future__ import annotations

import torch


def sync(device: torch.device) -> None:
    """Wait until ``device`` has run everything queued (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
