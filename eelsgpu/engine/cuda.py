"""The device side of the fused kernels: load, compile, check and register ``kernels/*.cu``.

The kernels (:mod:`eelsgpu.kernels`) never import device code; where a step has a fused form
they look it up in :mod:`eelsgpu.kernels._fused`. This module fills that registry
(:func:`register_fused_kernels`, called by :func:`eelsgpu.engine.transfer.cuda_device` when a
CUDA device is set up, and by the low-loss analyses before they run). Today it holds one kernel:

* ``fourier_log_rolloff`` (``kernels/fourier_log.cu``): the measured-error roll-off of the
  Fourier-log deconvolution (kk-theory.md eq. 22) after the transforms, for complex64 CuPy
  arrays: the error power (the noise powers of J~ and Z~ from the medians of the top quarter of
  frequencies, the model's misfit), ln(J~/Z~) with its phase unwrapped, the cut-off and the
  monotone Wiener weight below it, in ONE launch per block that reads J~, Z~ (and the misfit's
  transform) once and writes ln(J~/Z~), the weight and five numbers per spectrum. Its array-API
  twin is :func:`eelsgpu.kernels.fourier_log.rolloff_twin` (NumPy's fast path:
  :func:`~eelsgpu.kernels.fourier_log.rolloff_numpy`).

For CuPy, the kernel is compiled with ``cupy.RawKernel`` on its first use (not at registration)
and compared with its twin at the size of the block it is first asked for (:func:`verified`:
the block's own first spectra at every frequency, and a probe of thick, thin and vacuum spectra
of the same length); any failure (compiler, driver, file missing, a result that differs) is
logged once as a ``RuntimeWarning`` and the twin runs from then on. ``EELSGPU_NO_FUSED=1`` turns
the fused kernels off.

For the counting stand-in (:data:`eelsgpu.engine.counting.xp`, the GPU path run on a CPU) the
provider serves the twin run as ONE counted operation reading the kernel's inputs and writing
its outputs once: what the fused kernel costs on CuPy (one launch, one read and one write), so
that the budgets counted there are the budgets of the GPU path with its fused kernel.

No GPU was available where this was written: the CUDA source is compiled with nvcc for sm_80
and sm_90 by a test, and executed on a CPU by an emulation of the CUDA threads (a test compiles
it with g++ and a header that runs each thread block's threads as host threads with a barrier
for ``__syncthreads``), where it equals the twin; it has never run on a GPU.

Examples
--------
>>> import numpy as np
>>> from eelsgpu.kernels import _fused
>>> register_fused_kernels()
>>> _fused.lookup("fourier_log_rolloff", np) is None  # NumPy arrays: the NumPy fast path runs
True
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import Any

import numpy as np

from ..kernels import _fused
from ..kernels.fourier_log import FUSED_NAME, RolloffConsts, rolloff_probe, rolloff_twin

__all__ = [
    "ROLLOFF_OUTPUTS",
    "cuda_source",
    "fused_fourier_log_rolloff",
    "register_fused_kernels",
    "verified",
]

#: The outputs of the roll-off (:func:`eelsgpu.kernels.fourier_log.rolloff_twin`), in order.
ROLLOFF_OUTPUTS = ("ell", "w", "n_j", "dead", "first", "limit", "floored")

_FUSED: dict[Any, Any] = {}  # K -> the checked launcher, or False after a failure; "kernel"
_CU_FILE = "fourier_log.cu"
_CU_NAME = "fourier_log_rolloff"
_CU_THREADS = 256
#: Shared memory the kernel may use without asking for more (the CUDA default).
_DEFAULT_SHARED = 48 * 1024


def _is_cupy_namespace(xp: Any) -> bool:
    return xp.__name__.split(".")[-1] == "cupy"


def _is_counting_namespace(xp: Any) -> bool:
    from .counting import CountingNamespace

    return isinstance(xp, CountingNamespace)


def cuda_source() -> str:
    """kernels/fourier_log.cu: from the installed package data, else from the source tree."""
    try:
        from importlib.resources import files

        return (files("eelsgpu._cuda") / _CU_FILE).read_text()
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        from pathlib import Path

        return (Path(__file__).resolve().parents[2] / "kernels" / _CU_FILE).read_text()


def shared_bytes(k: int, threads: int = _CU_THREADS) -> int:
    """Dynamic shared memory of one thread block (one spectrum) of ``fourier_log_rolloff`` for
    ``k`` frequencies: four arrays of k + 1 floats, two of ``threads`` words (reductions) and
    eight words (the medians)."""
    return 4 * (4 * (k + 1) + 2 * threads + 8)


def _launcher(kernel: Any) -> Any:
    """Call the compiled kernel like :func:`~eelsgpu.kernels.fourier_log.rolloff_twin` (CuPy
    arrays; ``jf``, ``zf``, ``rf`` complex64, the per-row numbers float32)."""

    def run(
        jf: Any,
        zf: Any,
        rf: Any,
        share: Any,
        n_j_alive: Any,
        fw: Any,
        consts: RolloffConsts,
    ) -> dict[str, Any]:
        import cupy

        n, k = jf.shape
        f32 = cupy.float32
        jf = cupy.ascontiguousarray(jf)
        zf = cupy.ascontiguousarray(zf)
        rf_ = jf if rf is None else cupy.ascontiguousarray(rf)  # (not read when has_rf = 0)
        alive = share if n_j_alive is None else n_j_alive
        out = {
            "ell": cupy.empty((n, k), dtype=cupy.complex64),
            "w": cupy.empty((n, k), dtype=f32),
            "n_j": cupy.empty((n,), dtype=f32),
            "dead": cupy.empty((n,), dtype=cupy.bool_),
            "first": cupy.empty((n,), dtype=cupy.int64),
            "limit": cupy.empty((n,), dtype=f32),
            "floored": cupy.empty((n,), dtype=cupy.bool_),
        }
        smem = shared_bytes(k)
        if smem > _DEFAULT_SHARED:  # more than 2048 channels: ask for the larger carve-out
            kernel.max_dynamic_shared_size_bytes = smem
        args = (
            jf,
            zf,
            rf_,
            cupy.ascontiguousarray(share.astype(f32)),
            cupy.ascontiguousarray(alive.astype(f32)),
            cupy.ascontiguousarray(fw.astype(f32)),
            out["ell"],
            out["w"],
            out["n_j"],
            out["first"],
            out["limit"],
            out["floored"],
            out["dead"],
            np.int32(n),
            np.int32(k),
            np.int32(consts.half),
            np.float64(consts.p * consts.disp),
            np.float32(consts.max_res),
            np.int32(bool(consts.unwrap)),
            np.int32(rf is not None),
            np.int32(n_j_alive is not None),
        )
        if n:
            kernel((n,), (_CU_THREADS,), args, shared_mem=smem)
        return out

    return run


def _agree(want: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> bool:
    """The fused kernel's outputs against the twin's, within float32 rounding of the two
    orders of summation (the moving averages along frequency are differences of running sums:
    a decision at a cut-off can move by a frequency in a rare spectrum, so at most 1 % of the
    spectra may differ there, none by more than a few frequencies)."""
    n = want["first"].shape[0]
    same = (
        (want["dead"] == got["dead"])
        & (np.abs(want["first"] - got["first"]) <= 2)
        & (want["floored"] == got["floored"])
        & np.isclose(want["n_j"], got["n_j"], rtol=1e-4, atol=0.0)
    )
    # ln(J~/Z~) where the phase is unwrapped the same (below both cut-offs) and the weight
    below = (
        np.arange(want["ell"].shape[-1])[None, :] < np.minimum(want["first"], got["first"])[:, None]
    )
    ell_scale = np.max(np.abs(want["ell"]), axis=-1, initial=1e-30)
    ell_ok = np.all(
        (np.abs(want["ell"] - got["ell"]) <= 1e-4 * ell_scale[:, None]) | ~below, axis=-1
    )
    w_ok = np.all(np.abs(want["w"] - got["w"]) <= 2e-2, axis=-1)
    rows = same & ell_ok & w_ok
    return bool(np.sum(~rows) <= max(0, math.floor(0.01 * n)))


def verified(fused: Any, twin: Any, args: tuple[Any, ...]) -> bool:
    """True when ``fused(*args)`` agrees with ``twin(*args)`` (:func:`_agree`) on the arguments
    of :func:`~eelsgpu.kernels.fourier_log.rolloff_twin` (the block's own first spectra at
    every frequency, or a probe)."""
    from .device import to_host

    want = {k: to_host(v) for k, v in twin(*args).items()}
    got = {k: to_host(v) for k, v in fused(*args).items()}
    return _agree(want, got)


def _first_rows(args: tuple[Any, ...], m: int) -> tuple[Any, ...]:
    """The roll-off's arguments restricted to their first ``m`` spectra."""
    jf, zf, rf, share, alive, fw, consts = args
    cut = (lambda a: a) if jf.shape[0] <= m else (lambda a: None if a is None else a[:m])
    return (cut(jf), cut(zf), cut(rf), cut(share), cut(alive), cut(fw), consts)


def _cuda_provider(xp: Any) -> Any:
    """The compiled kernel, checked at the size of each block it is first called for."""
    if os.environ.get("EELSGPU_NO_FUSED") == "1" or _FUSED.get("failed"):
        return None
    kernel = _FUSED.get("kernel")
    if kernel is None:
        try:
            import cupy

            kernel = cupy.RawKernel(cuda_source(), _CU_NAME)
            kernel.compile()
        except Exception as exc:  # compiler, driver or file missing: use the twin
            _FUSED["failed"] = True
            _warn(f"{type(exc).__name__}: {exc}")
            return None
        _FUSED["kernel"] = kernel
    fused = _launcher(kernel)

    def twin(*args: Any) -> dict[str, Any]:
        return rolloff_twin(xp, *args)

    def checked(*args: Any) -> dict[str, Any]:
        k = args[0].shape[-1]
        state = _FUSED.get(("checked", k))
        if state is None:
            try:
                probe = rolloff_probe(xp, k, args[-1])
                ok = verified(fused, twin, _first_rows(args, 64)) and verified(fused, twin, probe)
            except Exception as exc:  # a launch failure: use the twin
                ok = False
                _warn(f"{type(exc).__name__}: {exc}")
            else:
                if not ok:
                    _warn(f"its result differs from the array-API twin at {k} frequencies")
            state = _FUSED[("checked", k)] = ok
        return fused(*args) if state else twin(*args)

    return checked


def _counted_provider(xp: Any) -> Any:
    """The counting stand-in's fused roll-off: the twin on the base namespace, counted as ONE
    operation that reads the inputs and writes the outputs once (what the CUDA kernel costs)."""
    base = xp._base  # the namespace the stand-in counts (array-api-strict)

    def run(*args: Any) -> dict[str, Any]:
        consts = args[-1]
        raw_consts = dataclasses.replace(consts, nu_table=getattr(consts.nu_table, "_a", None))

        def compute() -> tuple[Any, ...]:
            raw = [None if a is None else a._a for a in args[:-1]]
            out = rolloff_twin(base, *raw, raw_consts)
            return tuple(out[k] for k in ROLLOFF_OUTPUTS)

        inputs = tuple(a for a in args[:-1] if a is not None)
        outs = xp._call(FUSED_NAME, compute, inputs)
        return dict(zip(ROLLOFF_OUTPUTS, outs, strict=True))

    return run


def fused_fourier_log_rolloff(xp: Any) -> Any:
    """The provider of ``fourier_log_rolloff`` (:mod:`eelsgpu.kernels._fused`): the compiled,
    checked CUDA kernel for CuPy's namespace, the counted twin for the counting stand-in, None
    for any other (and after a failure, or with ``EELSGPU_NO_FUSED=1``)."""
    if os.environ.get("EELSGPU_NO_FUSED") == "1":
        return None
    if _is_cupy_namespace(xp):
        return _cuda_provider(xp)
    if _is_counting_namespace(xp):
        return _counted_provider(xp)
    return None


def register_fused_kernels() -> None:
    """Register the providers of the fused kernels in :mod:`eelsgpu.kernels._fused` (cheap:
    nothing is compiled until a kernel first asks for one)."""
    _fused.register(FUSED_NAME, fused_fourier_log_rolloff)


def _warn(why: str) -> None:
    warnings.warn(
        f"eelsgpu: the fused CUDA Fourier-log kernel is not used ({why}); "
        "the array-API path runs instead",
        RuntimeWarning,
        stacklevel=4,
    )
