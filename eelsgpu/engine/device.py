"""Where arrays live: the choice between NumPy (CPU) and CuPy (CUDA GPU).

Every numeric kernel in eelsgpu is written once against the Python array API standard and
receives its namespace ``xp`` from :func:`array_api_compat.array_namespace`; this module is the
only place that knows about devices. It

* probes the GPU for real (a small CuPy allocation, an FFT and a comparison with NumPy) instead of
  trusting that ``import cupy`` works, because CuPy installs break in many ways (driver too old,
  wrong CUDA wheel, no device visible in a container);
* resolves ``device="auto" | "cpu" | "gpu"`` to a concrete device, with a clear error when a GPU is
  asked for and none is usable;
* moves blocks to the device and results back to the host.

Examples
--------
>>> from eelsgpu.engine import device as backend
>>> backend.resolve_device("cpu")
'cpu'
>>> xp = backend.namespace("cpu")
>>> float(xp.sum(xp.ones(3)))
3.0
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from ..errors import EelsgpuError

__all__ = [
    "DeviceError",
    "GPUStatus",
    "array_namespace",
    "gpu_status",
    "namespace",
    "resolve_device",
    "to_device",
    "to_host",
]

DEVICES = ("auto", "cpu", "gpu")


class DeviceError(EelsgpuError, RuntimeError):
    """A device was asked for that cannot be used here (the command line prints it as one line)."""


@dataclass(frozen=True)
class GPUStatus:
    """Outcome of the GPU probe: ``usable`` and, when not, why not."""

    usable: bool
    reason: str
    name: str = ""


@functools.cache
def gpu_status() -> GPUStatus:
    """Probe CuPy and the GPU once per process.

    The probe allocates a small array on the device, runs a real FFT on it and compares the result
    with NumPy's, so that a broken install is found here and not in the middle of a run.
    """
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA library raising at import
        return GPUStatus(False, f"CuPy is not importable ({type(exc).__name__}: {exc})")
    try:
        if not cupy.is_available():
            return GPUStatus(False, "CuPy is installed but reports no usable CUDA device")
        x = np.linspace(0.0, 1.0, 64, dtype=np.float32)
        got = cupy.asnumpy(cupy.fft.rfft(cupy.asarray(x)))
        if not np.allclose(got, np.fft.rfft(x), rtol=1e-4, atol=1e-4):
            return GPUStatus(False, "the GPU's FFT disagrees with NumPy's on a probe array")
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props.get("name", b"").decode(errors="replace")
    except Exception as exc:  # a driver or runtime error surfaces here
        return GPUStatus(False, f"the GPU probe failed ({type(exc).__name__}: {exc})")
    return GPUStatus(True, "ok", name)


def resolve_device(device: str = "auto") -> str:
    """Turn ``"auto" | "cpu" | "gpu"`` into ``"cpu"`` or ``"gpu"``.

    ``auto`` takes the GPU when the probe says it is usable, else the CPU. ``gpu`` without a
    usable GPU raises :class:`DeviceError` saying why.
    """
    if device not in DEVICES:
        from ..errors import InputError

        raise InputError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "cpu":
        return "cpu"
    status = gpu_status()
    if device == "gpu" and not status.usable:
        raise DeviceError(
            f"device='gpu' was asked for but no GPU is usable: {status.reason}. "
            "Install the extra with `pip install eelsgpu[gpu]` on a machine with a CUDA GPU, "
            "or use device='cpu'."
        )
    return "gpu" if status.usable else "cpu"


def namespace(device: str = "cpu") -> Any:
    """The array namespace for a resolved device: NumPy's or CuPy's (array-API compatible)."""
    if resolve_device(device) == "gpu":
        import cupy

        return array_namespace(cupy.empty(0))
    return array_namespace(np.empty(0))


def to_device(array: Any, device: str) -> Any:
    """Copy a host array to ``device`` (no copy for the CPU)."""
    if resolve_device(device) == "gpu":
        import cupy

        return cupy.asarray(array)
    return np.asarray(array)


def to_host(array: Any) -> np.ndarray:
    """Bring an array of any supported namespace back to a NumPy array on the host."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "get") and type(array).__module__.startswith("cupy"):
        return array.get()
    # array-api-strict and other standard arrays support the buffer / __array__ protocols or
    # DLPack; np.asarray handles both.
    try:
        return np.asarray(array)
    except TypeError:
        return np.from_dlpack(array)
