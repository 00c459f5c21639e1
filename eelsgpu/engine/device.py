"""Where arrays live: the choice between NumPy (CPU) and CuPy (CUDA GPU).

Every numeric kernel in eelsgpu is written once against the Python array API standard and
receives its namespace ``xp`` from :func:`array_api_compat.array_namespace`; this module is the
only place that knows about devices. It

* probes the GPU for real (a small CuPy allocation, an FFT and a comparison with NumPy) instead of
  trusting that ``import cupy`` works, because CuPy installs break in many ways (driver too old,
  wrong CUDA wheel, no device visible in a container);
* resolves ``device="auto" | "cpu" | "gpu"`` to a concrete device, with a clear error when a GPU is
  asked for and none is usable -- in the process that runs the blocks (a dask worker), never on
  the client that builds the graph (:func:`check_device` is the client's side: it validates and,
  for a local run, fails early, but decides nothing);
* accepts an array-API namespace module (``array_api_strict``, the counting stand-in
  :data:`eelsgpu.engine.counting.xp`) as the device: the GPU code path then runs with that
  namespace standing in for CuPy (:func:`eelsgpu.engine.transfer.namespace_device`);
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
    "check_device",
    "device_spec",
    "is_namespace",
    "GPUStatus",
    "array_namespace",
    "gpu_status",
    "namespace",
    "from_spec",
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


def is_namespace(device: Any) -> bool:
    """True for an array-API namespace given as the device (a module with ``asarray``)."""
    return (
        not isinstance(device, str) and hasattr(device, "asarray") and hasattr(device, "__name__")
    )


def _bad_device(device: Any) -> None:
    from ..errors import InputError

    raise InputError(
        f"device must be one of {', '.join(DEVICES)} or an array-API namespace module "
        f"(e.g. array_api_strict, standing in for CuPy), not {device!r}"
    )


def resolve_device(device: Any = "auto") -> Any:
    """Turn ``"auto" | "cpu" | "gpu"`` into ``"cpu"`` or ``"gpu"``, here (call it in the process
    that runs the blocks); an array-API namespace module is returned as it is.

    ``auto`` takes the GPU when the probe says it is usable, else the CPU. ``gpu`` without a
    usable GPU raises :class:`DeviceError` saying why.
    """
    if is_namespace(device):
        return device
    if device not in DEVICES:
        _bad_device(device)
    if device == "cpu":
        return "cpu"
    status = gpu_status()
    if device == "gpu" and not status.usable:
        raise DeviceError(
            f"device='gpu' was asked for but no GPU is usable: {status.reason}. "
            "Install the extra with `pip install eelsgpu[gpu]` (CUDA 12 drivers; "
            "eelsgpu[gpu-cuda13] for CUDA 13) on a machine with a CUDA GPU, or use device='cpu'."
        )
    return "gpu" if status.usable else "cpu"


def _distributed_client() -> Any:
    """The dask.distributed client the graph will run on, if one is active (not imported here
    unless the caller already did)."""
    import sys

    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import default_client

        return default_client()
    except (ValueError, ImportError):
        return None


def check_device(device: Any = "auto") -> Any:
    """The client's side of the device choice: validate ``device`` and return it UNRESOLVED.

    The device is decided where the blocks run (:func:`resolve_device` on each worker), so that
    ``auto`` on a login node without a GPU still uses the GPUs of the compute nodes. Only
    ``"gpu"`` asked for in a local run (no dask.distributed client active) with no usable GPU here
    fails now, with the reason, rather than in the first block.
    """
    if is_namespace(device):
        return device
    if device not in DEVICES:
        _bad_device(device)
    if device == "gpu" and _distributed_client() is None:
        resolve_device("gpu")  # raises DeviceError here, saying why
    return device


def device_spec(device: Any) -> str:
    """A picklable name of an unresolved device: ``auto``/``cpu``/``gpu``, or ``ns:<ref>`` for a
    namespace (its ``__eelsgpu_ref__`` ``module:attribute``, else its module name)."""
    if is_namespace(device):
        return "ns:" + str(getattr(device, "__eelsgpu_ref__", device.__name__))
    return str(device)


@functools.cache
def _import_ref(ref: str) -> Any:
    import importlib

    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


def from_spec(spec: str) -> Any:
    """The device a :func:`device_spec` names, resolved in this process (a namespace imported)."""
    if spec.startswith("ns:"):
        return _import_ref(spec[3:])
    return resolve_device(spec)


def namespace(device: Any = "cpu") -> Any:
    """The array namespace for a device: NumPy's, CuPy's (array-API compatible), or the
    namespace module given as the device."""
    if is_namespace(device):
        return device
    if resolve_device(device) == "gpu":
        import cupy

        return array_namespace(cupy.empty(0))
    return array_namespace(np.empty(0))


def to_device(array: Any, device: Any) -> Any:
    """Copy a host array to ``device`` (no copy for the CPU)."""
    if is_namespace(device):
        return device.asarray(np.asarray(array))
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
