"""The device side of the fused kernels: load, compile, check and register ``kernels/*.cu``.

The kernels (:mod:`eelsgpu.kernels`) never import device code; where a step has a fused form
they look it up in :mod:`eelsgpu.kernels._fused`. This module fills that registry
(:func:`register_fused_kernels`, called by :func:`eelsgpu.engine.transfer.cuda_device` when a
CUDA device is set up, and by the low-loss analyses before they run). It holds two kernels:

* ``fourier_log_rolloff`` (``kernels/fourier_log.cu``): the measured-error roll-off of the
  Fourier-log deconvolution (kk-theory.md eq. 22) after the transforms, for complex64 CuPy
  arrays: the error power (the noise powers of J~ and Z~ from the medians of the top quarter of
  frequencies, the model's misfit), ln(J~/Z~) with its phase unwrapped, the cut-off and the
  monotone Wiener weight below it, in ONE launch per block that reads J~, Z~ (and the misfit's
  transform) once and writes ln(J~/Z~), the weight and five numbers per spectrum. Its array-API
  twin is :func:`eelsgpu.kernels.fourier_log.rolloff_twin` (NumPy's fast path:
  :func:`~eelsgpu.kernels.fourier_log.rolloff_numpy`).
* ``tails_solve`` (``kernels/tails.cu``): the power-law tails beyond the window (Egerton 2011,
  section 4.2.1) from their fits' sums, for float32 CuPy arrays: the three exponents by a
  clamped Newton solve, their noise, the trust decision and the counts beyond the window with
  their standard deviation, in ONE launch (one thread per row) where its array-API twin
  :func:`eelsgpu.kernels.tails.tails_twin` takes about 130.

For CuPy, each kernel is compiled with ``cupy.RawKernel`` on its first use (not at
registration) and compared with its twin at the size of the block it is first asked for
(:func:`verified`: the block's own first spectra at every frequency, and a probe of thick, thin
and vacuum spectra of the same length; :func:`verified_tails`: the block's own rows and
:func:`~eelsgpu.kernels.tails.tails_probe`); any failure (compiler, driver, file missing, a
result that differs) is logged once as a ``RuntimeWarning`` and the twin runs from then on.
``EELSGPU_NO_FUSED=1`` turns the fused kernels off (``EELSGPU_NO_FUSED=tails_solve``, a
comma-separated list of names, only those).

For the counting stand-in (:data:`eelsgpu.engine.counting.xp`, the GPU path run on a CPU) the
providers serve the twin run as ONE counted operation reading the kernel's inputs and writing
its outputs once (:meth:`~eelsgpu.engine.counting.CountingNamespace.eelsgpu_fused`): what the
fused kernel costs on CuPy (one launch, one read and one write), so that the budgets counted
there are the budgets of the GPU path with its fused kernels (``EELSGPU_NO_FUSED=1`` counts the
twins' path, which a GPU falls back to).

No GPU was available where this was written: the CUDA sources are compiled with nvcc for sm_80
and sm_90 by a test, and executed on a CPU by emulations of the CUDA threads (tests compile them
with g++ and a header that runs each thread block's threads as host threads, with a barrier for
``__syncthreads``), where they equal their twins; they have never run on a GPU.

Examples
--------
>>> import numpy as np
>>> from eelsgpu.kernels import _fused
>>> register_fused_kernels()
>>> _fused.lookup("fourier_log_rolloff", np) is None  # NumPy arrays: the NumPy fast path runs
True
>>> _fused.lookup("tails_solve", np) is None
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
from ..kernels.tails import FUSED_NAME as TAILS_NAME
from ..kernels.tails import tails_probe, tails_twin

__all__ = [
    "ROLLOFF_OUTPUTS",
    "TAILS_OUTPUTS",
    "cuda_source",
    "fused_fourier_log_rolloff",
    "fused_tails_solve",
    "register_fused_kernels",
    "verified",
    "verified_tails",
]

#: The outputs of the roll-off (:func:`eelsgpu.kernels.fourier_log.rolloff_twin`), in order.
ROLLOFF_OUTPUTS = ("ell", "w", "n_j", "dead", "first", "limit", "floored")

#: The outputs of the tails (:func:`eelsgpu.kernels.tails.tails_twin`), in order.
TAILS_OUTPUTS = ("tail", "trusted", "sd")

_FUSED: dict[Any, Any] = {}  # K -> the checked launcher, or False after a failure; "kernel"
_TAILS: dict[Any, Any] = {}  # the same for tails_solve ("kernel", "failed", ("checked", n))
_TL_FILE = "tails.cu"
_TL_THREADS = 256
#: nvcc/NVRTC options of tails.cu: no a * b + c contracted to one FMA (one rounding less than
#: the twin's two), so that the first-use check compares like with like.
_TL_OPTIONS = ("--fmad=false",)
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


def _disabled(name: str) -> bool:
    """``EELSGPU_NO_FUSED`` is 1 (every fused kernel off) or lists ``name`` (comma-separated)."""
    off = os.environ.get("EELSGPU_NO_FUSED", "")
    return off == "1" or name in {w.strip() for w in off.split(",")}


def cuda_source(file: str = _CU_FILE) -> str:
    """kernels/``file`` (default fourier_log.cu): from the installed package data, else from
    the source tree."""
    try:
        from importlib.resources import files

        return (files("eelsgpu._cuda") / file).read_text()
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        from pathlib import Path

        return (Path(__file__).resolve().parents[2] / "kernels" / file).read_text()


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
    if _disabled(FUSED_NAME) or _FUSED.get("failed"):
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

    def run(*args: Any) -> dict[str, Any]:
        consts = args[-1]
        raw_consts = dataclasses.replace(consts, nu_table=getattr(consts.nu_table, "_a", None))

        def twin(base: Any, *raw: Any) -> dict[str, Any]:
            out = rolloff_twin(base, *raw, raw_consts)
            return {k: out[k] for k in ROLLOFF_OUTPUTS}

        return xp.eelsgpu_fused(FUSED_NAME, twin, args[:-1])

    return run


def fused_fourier_log_rolloff(xp: Any) -> Any:
    """The provider of ``fourier_log_rolloff`` (:mod:`eelsgpu.kernels._fused`): the compiled,
    checked CUDA kernel for CuPy's namespace, the counted twin for the counting stand-in, None
    for any other (and after a failure, or with ``EELSGPU_NO_FUSED=1``)."""
    if _disabled(FUSED_NAME):
        return None
    if _is_cupy_namespace(xp):
        return _cuda_provider(xp)
    if _is_counting_namespace(xp):
        return _counted_provider(xp)
    return None


# --------------------------------------------------------------------------- tails_solve
def _tails_launcher(kernel: Any) -> Any:
    """Call the compiled ``tails_solve`` like :func:`~eelsgpu.kernels.tails.tails_twin` (CuPy
    float32 arrays), one thread per row."""

    def run(parts: Any, edges: Any, var: Any, l_end: Any) -> tuple[Any, Any, Any]:
        import cupy

        n = parts.shape[0]
        f32 = cupy.float32

        def c(a: Any, dt: Any) -> Any:
            return cupy.ascontiguousarray(a.astype(dt, copy=False))

        out = (cupy.empty((n,), f32), cupy.empty((n,), cupy.bool_), cupy.empty((n,), f32))
        if n:
            args = (
                c(parts, f32),
                c(edges, f32),
                c(var, f32),
                c(l_end, f32),
                *out,
                np.int32(n),
            )
            kernel(((n + _TL_THREADS - 1) // _TL_THREADS,), (_TL_THREADS,), args)
        return out

    return run


def tails_agree(want: tuple[Any, ...], got: tuple[Any, ...]) -> bool:
    """The fused tails (host arrays ``(tail, trusted, sd)``) against the twin's, within float32
    rounding: the same trust decision (it compares two exponents from different ratios, so a
    row within an ulp of the threshold may flip: at most 1 % of the rows, rounded up), the same
    counts to 1e-4 and their standard deviation to 3e-2 of itself plus 1e-5 of the counts
    where both trust the power law (the numerical slope is a difference of two logs, and where
    the standard deviation is many times the counts the exponent minus its error sits near its
    bound 1.05, where the counts change fast), and exact zeros where neither does. Measured
    through the CPU emulation of the kernel (host logf/expm1f against NumPy's): counts within
    5.4e-6, standard deviations within 8e-3 of themselves or a float32 ulp of the counts, no
    decision flipped in 40,960 probe rows."""
    w_tail, w_tr, w_sd = (np.asarray(a) for a in want)
    g_tail, g_tr, g_sd = (np.asarray(a) for a in got)
    n = w_tr.shape[0]
    both = w_tr & g_tr
    neither = ~w_tr & ~g_tr
    flipped = int(np.sum(w_tr != g_tr))
    with np.errstate(invalid="ignore"):
        tail_ok = np.abs(g_tail - w_tail) <= 1e-4 * np.abs(w_tail)
        sd_ok = np.abs(g_sd - w_sd) <= 3e-2 * np.abs(w_sd) + 1e-5 * np.abs(w_tail)
    rows_ok = (both & tail_ok & sd_ok) | (neither & (g_tail == 0) & (g_sd == 0))
    return bool(flipped <= math.ceil(0.01 * n) and np.sum(~rows_ok) <= flipped)


def verified_tails(fused: Any, twin: Any, args: tuple[Any, ...]) -> bool:
    """True when ``fused(*args)`` agrees with ``twin(*args)`` (:func:`tails_agree`) on the
    arguments of :func:`~eelsgpu.kernels.tails.tails_twin` (a block's own rows, or
    :func:`~eelsgpu.kernels.tails.tails_probe`)."""
    from .device import to_host

    want = tuple(to_host(v) for v in twin(*args))
    got = tuple(to_host(v) for v in fused(*args))
    return tails_agree(want, got)


def _tails_cuda_provider(xp: Any) -> Any:
    """The compiled ``tails_solve``, checked against its twin on the rows of the first block of
    each size it is called for and on the probe; the twin where either differs."""
    if _disabled(TAILS_NAME) or _TAILS.get("failed"):
        return None
    kernel = _TAILS.get("kernel")
    if kernel is None:
        try:
            import cupy

            kernel = cupy.RawKernel(cuda_source(_TL_FILE), TAILS_NAME, options=_TL_OPTIONS)
            kernel.compile()
        except Exception as exc:  # compiler, driver or file missing: use the twin
            _TAILS["failed"] = True
            _warn(f"{type(exc).__name__}: {exc}", TAILS_NAME)
            return None
        _TAILS["kernel"] = kernel
    fused = _tails_launcher(kernel)

    def twin(*args: Any) -> tuple[Any, Any, Any]:
        return tails_twin(xp, *args)

    def checked(*args: Any) -> tuple[Any, Any, Any]:
        n = args[0].shape[0]
        state = _TAILS.get(("checked", n))
        if state is None:
            try:
                ok = verified_tails(fused, twin, args) and verified_tails(
                    fused, twin, tails_probe(xp)
                )
            except Exception as exc:  # a launch failure: use the twin
                ok = False
                _warn(f"{type(exc).__name__}: {exc}", TAILS_NAME)
            else:
                if not ok:
                    _warn(f"its result differs from the array-API twin at {n} rows", TAILS_NAME)
            state = _TAILS[("checked", n)] = ok
        return fused(*args) if state else twin(*args)

    return checked


def _counted_tails_provider(xp: Any) -> Any:
    """The counting stand-in's fused tails: the twin on the base namespace, counted as ONE
    operation reading the four inputs and writing the three outputs (what tails.cu costs)."""

    def run(*args: Any) -> tuple[Any, Any, Any]:
        return xp.eelsgpu_fused(TAILS_NAME, tails_twin, args)

    return run


def fused_tails_solve(xp: Any) -> Any:
    """The provider of ``tails_solve`` (:mod:`eelsgpu.kernels._fused`): the compiled, checked
    CUDA kernel for CuPy's namespace, the counted twin for the counting stand-in, None for any
    other (and after a failure, or with ``EELSGPU_NO_FUSED``)."""
    if _disabled(TAILS_NAME):
        return None
    if _is_cupy_namespace(xp):
        return _tails_cuda_provider(xp)
    if _is_counting_namespace(xp):
        return _counted_tails_provider(xp)
    return None


def register_fused_kernels() -> None:
    """Register the providers of the fused kernels in :mod:`eelsgpu.kernels._fused` (cheap:
    nothing is compiled until a kernel first asks for one)."""
    _fused.register(FUSED_NAME, fused_fourier_log_rolloff)
    _fused.register(TAILS_NAME, fused_tails_solve)


def _warn(why: str, name: str = FUSED_NAME) -> None:
    warnings.warn(
        f"eelsgpu: the fused CUDA kernel {name} is not used ({why}); "
        "the array-API path runs instead",
        RuntimeWarning,
        stacklevel=4,
    )
