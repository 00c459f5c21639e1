"""The CUDA side of the fused kernels: load, compile, check and register ``kernels/*.cu``.

The kernels (:mod:`eelsgpu.kernels`) never import device code; where a step has a fused CUDA form
they look it up in :mod:`eelsgpu.kernels._fused`. This module fills that registry
(:func:`register_fused_kernels`, called by :func:`eelsgpu.engine.transfer.cuda_device` when a
CUDA device is set up). Today it holds one kernel:

* ``fourier_log_ratio`` (``kernels/fourier_log.cu``): the core ``ln(J~/Z~)`` of the Fourier-log
  deconvolution (kk-theory.md eq. 22) in one pass, for complex64 CuPy arrays; its array-API twin
  is :func:`eelsgpu.kernels.fourier_log.log_spectrum_ratio_twin`.

  **Not used by the analyses until it is ported (issue 13).** It computes the roll-off of
  before issue 11 (fixed at 1e-3 of ``Z~(0)``); the deconvolution now weights each pixel's log
  by its measured misfit and noise (:func:`eelsgpu.kernels.fourier_log.fourier_log_kernel`) and
  no longer calls :func:`~eelsgpu.kernels.fourier_log.log_spectrum_ratio`, the only function
  that looks this kernel up. It is registered, compiled and checked as before, so the port has
  its loader, probe check and fallback ready; on a GPU today ``deconvolve``, ``thickness`` and
  ``kk`` run the array-API path.

A fused kernel is compiled with ``cupy.RawKernel`` on its first use (not at registration), then
compared with its twin on a probe block (:func:`verified`, kernels/README.md); any failure
(compiler, driver, file missing, a result that differs) is logged once as a ``RuntimeWarning``
and the twin runs from then on. ``EELSGPU_NO_FUSED=1`` turns the fused kernels off.

Examples
--------
>>> import numpy as np
>>> from eelsgpu.kernels import _fused
>>> register_fused_kernels()
>>> _fused.lookup("fourier_log_ratio", np) is None  # NumPy arrays: the NumPy fast path runs
True
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from ..kernels import _fused
from ..kernels.fourier_log import (
    FUSED_NAME,
    PHASE_FLOOR,
    ROLLOFF,
    SNR2,
    log_spectrum_ratio_twin,
    noise_power,
    probe_spectra,
)

__all__ = [
    "cuda_source",
    "fused_fourier_log_ratio",
    "register_fused_kernels",
    "verified",
]

_FUSED: dict[str, Any] = {}  # "state": the checked fused callable, or False after a failure
_CU_FILE = "fourier_log.cu"
_CU_NAME = "fourier_log_ratio"
_CU_THREADS = 256


def _is_cupy_namespace(xp: Any) -> bool:
    return xp.__name__.split(".")[-1] == "cupy"


def cuda_source() -> str:
    """kernels/fourier_log.cu: from the installed package data, else from the source tree."""
    try:
        from importlib.resources import files

        return (files("eelsgpu._cuda") / _CU_FILE).read_text()
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        from pathlib import Path

        return (Path(__file__).resolve().parents[2] / "kernels" / _CU_FILE).read_text()


def _launcher(kernel: Any) -> Any:
    """Call the compiled kernel like :func:`log_spectrum_ratio_twin` (complex64 CuPy arrays)."""

    def run(
        jf: Any, zf: Any, noise2: Any, mode: str, gate: float, rolloff: float, unwrap: bool
    ) -> Any:
        import cupy

        jf = cupy.ascontiguousarray(jf)
        zf = cupy.ascontiguousarray(zf)
        noise2 = cupy.ascontiguousarray(noise2.reshape(-1).astype(cupy.float32))
        n, k = jf.shape
        out = cupy.empty_like(jf)
        args = (
            jf,
            zf,
            noise2,
            out,
            np.int32(n),
            np.int32(k),
            np.float32(gate),
            np.float32(rolloff),
            np.float32(SNR2),
            np.int32(mode == "zlp"),
            np.int32(bool(unwrap)),
        )
        kernel((n,), (_CU_THREADS,), args, shared_mem=4 * _CU_THREADS)
        return out

    return run


def verified(xp: Any, fused: Any, jf: Any, zf: Any) -> bool:
    """True when ``fused`` agrees with the twin on the probe, in every mode (to 1e-4 of max)."""
    from .device import to_host

    noise2 = noise_power(xp, jf, zf)
    for mode in ("rolloff", "zlp"):
        for unwrap in (True, False):
            args = (noise2, mode, PHASE_FLOOR[4] ** 2, ROLLOFF**2, unwrap)
            want = to_host(log_spectrum_ratio_twin(xp, jf, zf, *args))
            got = to_host(fused(jf, zf, *args))
            scale = float(np.max(np.abs(want))) or 1.0
            if got.shape != want.shape or not np.all(np.abs(got - want) <= 1e-4 * scale):
                return False
    return True


def _fused_kernel(xp: Any) -> Any:
    """The compiled, checked ``fourier_log_ratio`` kernel, or None (then the twin is used).

    Compiled with ``cupy.RawKernel`` on first use and compared with the twin on a probe block
    (kernels/README.md); any failure is logged once as a warning and the twin is used from then
    on. ``EELSGPU_NO_FUSED=1`` turns the fused kernel off.
    """
    state = _FUSED.get("state")
    if state is None:
        state = False
        if os.environ.get("EELSGPU_NO_FUSED") != "1":
            try:
                import cupy

                fused = _launcher(cupy.RawKernel(cuda_source(), _CU_NAME))
                if verified(xp, fused, *probe_spectra(xp)):
                    state = fused
                else:
                    _warn("its result differs from the array-API twin on the probe block")
            except Exception as exc:  # compiler, driver or file missing: use the twin
                _warn(f"{type(exc).__name__}: {exc}")
        _FUSED["state"] = state
    return state or None


def fused_fourier_log_ratio(xp: Any) -> Any:
    """The provider of ``fourier_log_ratio`` (:mod:`eelsgpu.kernels._fused`): the compiled,
    checked kernel for CuPy's namespace, None for any other (and after a failure)."""
    if not _is_cupy_namespace(xp):
        return None
    return _fused_kernel(xp)


def register_fused_kernels() -> None:
    """Register the providers of the fused CUDA kernels in :mod:`eelsgpu.kernels._fused`
    (cheap: nothing is compiled until a kernel first asks for one). ``fourier_log_ratio`` is
    asked for only by the pre-issue-11 core ``log_spectrum_ratio``, which no analysis calls
    until issue 13 ports the kernel (module docstring)."""
    _fused.register(FUSED_NAME, fused_fourier_log_ratio)


def _warn(why: str) -> None:
    warnings.warn(
        f"eelsgpu: the fused CUDA Fourier-log kernel is not used ({why}); "
        "the array-API path runs instead",
        RuntimeWarning,
        stacklevel=5,  # _warn < _fused_kernel < the provider < _fused.lookup < the kernel
    )
