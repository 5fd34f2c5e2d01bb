"""Bounded memory: the batch ``wsol localize`` can afford at an image size, and one-line out-of-memory errors.

Activation memory grows with batch x size^2. :func:`activation_bytes` measures a model's per-pixel cost once,
with one small probe image (the bytes of every layer's output, what a gradient method keeps; a plain forward
pass keeps less, so the estimate errs on the safe side), and :func:`fit_batch_size` shrinks the batch to what
the free memory of the device holds, or refuses in one line with the image size that fits. Whatever still
runs out of memory (CPU or CUDA, torch or numpy) is turned into one line naming the setting to change by
:func:`out_of_memory_message`.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from wsol.errors import WSOLError

if TYPE_CHECKING:
    import torch
    from torch import nn

PROBE_SIZE = 64
BUDGET = 0.7  # of the free memory, for a batch's activations (the rest: weights, workers, fragmentation)
_OOM = re.compile(r"out of memory|not enough memory|can't allocate memory|cannot allocate memory|"
                  r"failed to allocate|std::bad_alloc", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """``"2G"``, ``"512M"``, ``"1.5GiB"``, ``"1000000"`` -> bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)i?b?\s*", str(text), re.IGNORECASE)
    if not match:
        raise WSOLError(f"WSOL_MEMORY_LIMIT={text!r}: expected a size such as 8G, 512M or a number of bytes")
    scale = 1024 ** "kmgt".find(match.group(2).lower()) * 1024 if match.group(2) else 1
    return int(float(match.group(1)) * scale)


def available_memory(device: torch.device) -> int:
    """Bytes a batch may use on ``device``: ``WSOL_MEMORY_LIMIT`` when set; else CUDA's free memory, or on the
    CPU the smaller of the system's available memory and the cgroup's (container) headroom."""
    limit = os.environ.get("WSOL_MEMORY_LIMIT")
    if limit:
        return parse_bytes(limit)
    if device.type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    free = []
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    free.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as file:
            maximum = file.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as file:
            current = int(file.read().strip())
        if maximum != "max":
            free.append(int(maximum) - current)
    except (OSError, ValueError):
        pass
    return min(free) if free else 1 << 62  # unknown (not Linux): no limit


def activation_bytes(model: nn.Module, size: int, probe: int = PROBE_SIZE) -> int:
    """Estimated activation bytes of ONE image at ``size`` x ``size``: every layer's output at a ``probe``
    sized input (run on the CPU, no gradients), scaled by (size / probe)^2; 0 when the model cannot be probed
    (a model that takes only its own input size: then it is no larger than that)."""
    import copy

    import torch

    from wsol.modes import kept_modes

    param = next(model.parameters(), None)
    net = model if param is None or param.device.type == "cpu" else copy.deepcopy(model).cpu()
    dtype = param.dtype if param is not None and param.dtype.is_floating_point else torch.float32
    total = 0

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()

    handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
    try:
        with kept_modes(net), torch.no_grad():
            net.eval()
            net(torch.zeros(1, 3, probe, probe, dtype=dtype))
    except Exception:  # noqa: BLE001 - a model with a fixed input size: no estimate
        return 0
    finally:
        for handle in handles:
            handle.remove()
    return int(total * (size / probe) ** 2)


def fit_batch_size(model: nn.Module, size: int, batch_size: int, device: torch.device,
                   notes: list[str] | None = None, free: int | None = None) -> int:
    """The batch (at most ``batch_size``) whose activations at ``size`` fit ``BUDGET`` of the free memory;
    a note says when it was shrunk. Raises a one-line :class:`WSOLError` naming the largest image size that
    fits when not even one image does."""
    per_image = activation_bytes(model, size)
    free = available_memory(device) if free is None else free
    budget = int(free * BUDGET)
    if per_image <= 0:
        return batch_size
    fits = budget // per_image
    if fits >= batch_size:
        return batch_size
    where = "GPU" if device.type == "cuda" else "memory"
    if fits < 1:
        largest = int(size * math.sqrt(budget / per_image)) // 32 * 32
        hint = f"--image-size {largest} fits" if largest >= 32 else "no image size fits; free some memory"
        raise WSOLError(f"--image-size {size}: one image needs about {_gb(per_image)} of activations, "
                        f"{_gb(free)} {where} is free: {hint} (or set WSOL_MEMORY_LIMIT if this estimate is wrong)")
    if notes is not None:
        notes.append(f"--batch-size {batch_size} lowered to {fits}: at --image-size {size} a batch needs about "
                     f"{_gb(per_image)} per image and {_gb(free)} {where} is free")
    return int(fits)


def _gb(value: float) -> str:
    return f"{value / 2**30:.1f} GB" if value >= 2**30 else f"{value / 2**20:.0f} MB"


def is_out_of_memory(error: BaseException) -> bool:
    """torch's ``OutOfMemoryError`` (CUDA), numpy's ``MemoryError``, and the CPU allocator's RuntimeErrors."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    return isinstance(error, RuntimeError) and bool(_OOM.search(str(error)))


_SETTINGS = {
    "localize": "lower --batch-size or --image-size",
    "train": "lower data.batch_size (or data.eval_batch_size, model input size data.crop_size), e.g. "
             "data.batch_size=16",
    "tune": "lower data.batch_size in the recipe, or --jobs",
    "fcam": "lower data.batch_size (or --batch-size for fcam localize)",
    "evaluate": "evaluate fewer maps at a time (a smaller split), or free some memory",
    "data": "free some memory or use a smaller --set",
}


def out_of_memory_message(error: BaseException, argv: Sequence[str] | None = None) -> str:
    """One line: what ran out (GPU or RAM) and the setting of the command that was running to change."""
    argv = list(sys.argv if argv is None else argv)
    command = next((a for a in argv[1:] if not a.startswith("-")), "")
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    gpu = type(error).__name__ == "OutOfMemoryError" or "CUDA" in text or "cuda" in text
    where = "GPU memory" if gpu else "memory (RAM)"
    setting = _SETTINGS.get(command, "use smaller batches or inputs")
    return f"out of {where}: {setting} ({type(error).__name__}: {text[:160]})"
