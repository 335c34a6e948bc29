"""The numerics environment: what makes training bit-reproducible, and how a machine differs.

Training runs with deterministic algorithms, a fixed thread count and seeded draws; the
environment (torch version, CPU capability, threads, device) is recorded with the checkpoints,
because changing any of it changes the bits.
"""

from __future__ import annotations

import os
import platform
from contextlib import contextmanager
from typing import Any, Iterator

from sisa.errors import SisaError
from sisa.settings import Settings


def numerics_environment(settings: Settings) -> dict[str, Any]:
    """What changes the bits of trained weights besides data and settings."""
    import torch

    env = {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": settings.threads,
        "device": settings.device,
        "machine": platform.machine(),
    }
    if settings.device == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["gpu"] = torch.cuda.get_device_name()
    return env


@contextmanager
def deterministic_torch(settings: Settings) -> Iterator[None]:
    """Fixed threads and deterministic kernels for the duration of a job, then restored."""
    import torch

    if settings.device == "cuda":
        if not torch.cuda.is_available():
            raise SisaError("--device cuda was asked for, but torch sees no CUDA device")
        # cuBLAS is deterministic only with a fixed workspace; it must be set before first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    torch.set_num_threads(settings.threads)
    _set_deterministic(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        _set_deterministic(was_deterministic)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn


def _set_deterministic(mode: bool) -> None:
    import sys

    import torch

    # torch.use_deterministic_algorithms also sets the inductor compiler's flag, and importing
    # inductor costs seconds of start-up; sisa never compiles, so set the ATen flag alone
    # unless inductor is already loaded.
    if "torch._inductor.config" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(mode)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=False)



def environment_differences(recorded: dict[str, Any], settings: Settings) -> list[str]:
    """How this machine's numerics differ from those the checkpoints were trained under.

    Any difference means a retrain here would not reproduce the checkpoints bit for bit.
    """
    import torch

    if settings.device == "cuda" and not torch.cuda.is_available():
        return ["device: the checkpoints were trained on cuda, and torch sees no CUDA device here"]
    current = numerics_environment(settings)
    return [f"{key}: trained under {recorded.get(key)!r}, this machine has {current.get(key)!r}"
            for key in sorted(set(recorded) | set(current)) if recorded.get(key) != current.get(key)]

