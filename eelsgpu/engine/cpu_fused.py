"""The CPU side of the fused kernels: numba-compiled forms of the low-loss kernels' hot steps
for NumPy arrays, registered in :mod:`eelsgpu.kernels._fused` as :mod:`eelsgpu.engine.cuda`
registers the CUDA ones.

On NumPy the deconvolution's steps after the transforms are some sixty elementwise passes over
the block that NumPy cannot fuse (issue 13: the Fourier-log at 0.10-0.17 of the speed of its
bare FFTs). Here each is one loop per spectrum (``eelsgpu/engine/_cpu_numba.py``), the row in
the cache, threads in parallel (``nogil``: the eager engine runs a thread per core). Entries:

* ``cpu_fourier_log_rolloff``: the measured-error roll-off
  (:func:`~eelsgpu.kernels.fourier_log.rolloff_twin`, Egerton 2011 eq. 4.16 / kk-theory.md
  eq. 22 with the measured error), which
  :func:`~eelsgpu.kernels.fourier_log.fourier_log_kernel` looks up for NumPy arrays; its twin
  on NumPy is :func:`~eelsgpu.kernels.fourier_log.rolloff_numpy_passes`
  (:func:`~eelsgpu.kernels.fourier_log.rolloff_numpy` calls the compiled form where registered).

* ``cpu_zlp_away_stats``: the statistics of the channels away from the ZLP's core (the channel
  noise from fourth differences, the mean count and level: :func:`eelsgpu.kernels.zlp.
  _away_stats`), which the ZLP's centre and checks ask for on every block.
* ``cpu_zlp_background_sums``: the five sums of the background check (:func:`eelsgpu.kernels.
  zlp.background_check`: the channels far below the ZLP and their counts, the loss channels,
  the window's and the gain side's counts).

Each gives its NumPy twin's bits: the same float operations in the same order, sums in NumPy's
pairwise order, the logs, arctangents and medians by NumPy itself on the block (its SIMD forms
are some 10-30 times numba's scalar calls). So the results do not depend on whether the kernels
ran, and a run need not wait for them: :func:`register_cpu_kernels` (called by the low-loss
analyses) starts loading them in a background thread for a job of at least
:data:`WARM_UP_SPECTRA` spectra (:func:`warm_up`: numba's import and code generator cost some
0.45 s once per process; ``cache=True`` keeps the machine code in ``__pycache__``), and until
they are loaded the providers answer None and the NumPy path runs.
Each kernel is checked once per row length and dtype against its twin on the first block's
first 64 rows (the roll-off also on the probe of the CUDA kernel's check): the same bits, else
one ``RuntimeWarning`` and the NumPy path from then on; where numba is missing or a compilation
fails, one ``RuntimeWarning`` says so and the NumPy path runs. ``EELSGPU_NO_FUSED=1`` (or a
comma-separated list naming a kernel, or ``cpu`` for all of them) turns them off. They apply
to NumPy arrays only: every other namespace (CuPy, the counting stand-in, array-api-strict) is
answered None.

Examples
--------
>>> import numpy as np
>>> from eelsgpu.kernels import _fused
>>> register_cpu_kernels()
>>> ready = warm_up(wait=True)  # (a run does not wait: the NumPy path runs meanwhile)
>>> _fused.lookup(ROLLOFF_NAME, np) is not None or not ready
True
>>> import array_api_strict
>>> _fused.lookup(ROLLOFF_NAME, array_api_strict) is None
True
"""

from __future__ import annotations

import importlib
import math
import os
import threading
import warnings
from typing import Any

import numpy as np

from .._xp import is_numpy, tiny
from ..kernels import _fused
from ..kernels.fourier_log import (
    _NEGLIGIBLE,
    _SNR_MIN,
    CPU_ROLLOFF_NAME,
    KAPPA,
    RolloffConsts,
    rolloff_numpy_passes,
    rolloff_probe,
)
from ..kernels.zlp import CPU_AWAY_STATS_NAME, CPU_BACKGROUND_NAME, _median_rows

__all__ = [
    "AWAY_STATS_NAME",
    "BACKGROUND_NAME",
    "ROLLOFF_NAME",
    "available",
    "away_stats_cpu",
    "background_sums_cpu",
    "register_cpu_kernels",
    "rolloff_cpu",
]

ROLLOFF_NAME = CPU_ROLLOFF_NAME
AWAY_STATS_NAME = CPU_AWAY_STATS_NAME
BACKGROUND_NAME = CPU_BACKGROUND_NAME

_STATE: dict[Any, Any] = {}  # "numba": the module or False; "warming": the warm-up thread;
# (name, "checked", ...): the first-use check's verdict; (name, "failed"): a compilation failed
_LOCK = threading.Lock()


def _disabled(name: str) -> bool:
    off = os.environ.get("EELSGPU_NO_FUSED", "")
    names = {w.strip() for w in off.split(",")}
    return off == "1" or name in names or "cpu" in names


def _numba() -> Any:
    """The compiled kernels' module, or None (numba missing: warned once). Imports it here and
    now where the warm-up has not (see :func:`warm_up`)."""
    mod = _STATE.get("numba")
    if mod is None:
        with _LOCK:
            mod = _STATE.get("numba")
            if mod is None:
                try:
                    mod = importlib.import_module(f"{__package__}._cpu_numba")
                except Exception as exc:  # numba missing or broken: the NumPy path
                    mod = False
                    _warn("numba", f"{type(exc).__name__}: {exc}")
                _STATE["numba"] = mod
    return mod or None


def _load() -> None:
    """Import numba and load (or compile) every kernel on a tiny block: a process's first
    use costs some 0.45 s (numba's import and its code generator's start), once."""
    if _numba() is None:
        return
    try:
        for dt in (np.float32, np.float64):
            y = np.ones((2, 16), dtype=dt)
            e = np.arange(16, dtype=dt)
            away_stats_cpu(y, e, np.zeros(2, dt), np.ones(2, dt), True, (0, 4))
            background_sums_cpu(y, e, np.zeros(2, dt), np.full(2, -3.0, dt))
            k = 9
            nu = (np.arange(k) / 0.8).astype(dt)
            consts = RolloffConsts(16, 0.05, 1.0, True, 2, nu)
            jf = np.ones((2, k), dtype=np.result_type(dt, np.complex64))
            rolloff_cpu(jf, jf, jf, np.ones(2, dt), None, np.ones(2, dt), consts)
            rolloff_cpu(jf, jf, None, np.ones(2, dt), np.ones(2, dt), np.ones(2, dt), consts)
    except Exception as exc:  # a compilation failure: the NumPy path
        _STATE["numba"] = False
        _warn("numba", f"{type(exc).__name__}: {exc}")


def warm_up(wait: bool = False) -> bool:
    """Start loading the compiled kernels in a background thread (once per process); with
    ``wait``, wait for it. Returns whether they are ready. Until they are, the providers answer
    None and the NumPy path runs (the same results: every kernel here gives its NumPy twin's
    bits), so a run never waits for numba's start-up."""
    with _LOCK:
        thread = _STATE.get("warming")
        if thread is None:
            thread = threading.Thread(target=_load, name="eelsgpu-numba-warm-up", daemon=True)
            _STATE["warming"] = thread
            thread.start()
    if wait:
        thread.join()
    return not thread.is_alive() and bool(_STATE.get("numba"))


def _ready() -> bool:
    """The kernels are loaded (the warm-up ran to its end and numba imported)."""
    thread = _STATE.get("warming")
    return thread is not None and not thread.is_alive() and bool(_STATE.get("numba"))


def available() -> bool:
    """True when numba imports and the kernels load (they may still fail their check)."""
    return warm_up(wait=True)


_LOCAL = threading.local()


def _scratch(shape: tuple[int, ...], dtype: Any, count: int) -> list[np.ndarray]:
    """``count`` work arrays of ``shape`` and ``dtype``, reused by the calls of one thread (a
    fresh 0.5 MB array is fresh pages: their faults cost as much as the roll-off's loops on
    this machine, measured); the caller must not keep them beyond its call."""
    key = (shape, np.dtype(dtype).str, count)
    cache = getattr(_LOCAL, "arrays", None)
    if cache is None or cache[0] != key:
        cache = _LOCAL.arrays = (key, [np.empty(shape, dtype=dtype) for _ in range(count)])
    return cache[1]


def _applies(y: np.ndarray, others: tuple[Any, ...], min_channels: int) -> bool:
    """Whether a compiled kernel takes ``y``: a C-contiguous 2-D float block of at least
    ``min_channels`` channels with ``others`` in its precision (else the NumPy path runs)."""
    dt = y.dtype
    return (
        y.ndim == 2
        and dt.kind == "f"
        and bool(y.flags.c_contiguous)
        and y.shape[-1] >= min_channels
        and all(np.asarray(a).dtype == dt for a in others)
    )


def rolloff_cpu(
    jf: np.ndarray,
    zf: np.ndarray,
    rf: np.ndarray | None,
    share: np.ndarray,
    n_j_alive: np.ndarray | None,
    fw: np.ndarray,
    consts: RolloffConsts,
) -> dict[str, Any]:
    """:func:`~eelsgpu.kernels.fourier_log.rolloff_numpy_passes` in one compiled loop per spectrum:
    the medians of the top quarter as there (partial sorts), then per row the error power, the
    log with its phase unwrapped, the smoothed power and error, the cut-off and the Wiener
    weight. Same results up to the last bit of ``logf``/``atan2f`` (libm against NumPy's)."""
    nb = _numba()
    n, k_all = jf.shape
    rdt = jf.real.dtype
    jf = np.ascontiguousarray(jf)
    zf = np.ascontiguousarray(zf)
    q = max(1, k_all // 4)
    top = np.empty((2 * n, q), dtype=rdt)
    nb.top_power(jf, zf, q, top)
    med = _median_rows(np, top)
    z0 = zf[:, 0]
    zz0 = z0.real * z0.real + z0.imag * z0.imag
    f_j = med[:n] / math.log(2.0)
    dead = med[n:] < 1e-6 * zz0
    n_j = f_j * share
    if n_j_alive is not None:
        n_j = np.where(dead, n_j, n_j_alive)
    n_z = np.where(dead, med[n:] / math.log(2.0), 0.0).astype(rdt, copy=False)
    has_rf = rf is not None
    rf_ = np.ascontiguousarray(rf) if has_rf else np.zeros((1, 1), dtype=jf.dtype)
    sig, lm, im, re = _scratch((n, k_all), rdt, 4)
    stops = np.empty(n, dtype=np.int64)
    cst = np.array([tiny(str(rdt)), 1e-24, 2.0, 1.0], dtype=rdt)
    n_j_ = np.ascontiguousarray(n_j, dtype=rdt)
    nb.rolloff_prep(
        jf, zf, rf_, has_rf, n_j_, np.ascontiguousarray(n_z), cst, sig, lm, im, re, stops
    )
    # ln|J~/Z~| and the phase of J~ conj(Z~) by NumPy's SIMD log and atan2 (the NumPy path's bits;
    # libm's scalar atan2f is some 30 times slower)
    np.log(lm, out=lm)
    lm *= 0.5
    ph = np.arctan2(im, re, out=im)
    ell = np.empty(jf.shape, dtype=jf.dtype)
    w = np.empty((n, k_all), dtype=rdt)
    first = np.empty(n, dtype=np.int64)
    cut_power = np.empty(n, dtype=rdt)
    ell0 = np.empty(n, dtype=rdt)
    cst = np.array(
        [0.5 / math.pi, 2.0 * math.pi, 1.0 + _SNR_MIN, 1.0, 0.0, tiny(str(rdt))], dtype=rdt
    )
    nb.rolloff_rest(
        lm, ph, sig, stops, int(consts.half), bool(consts.unwrap), cst, ell, w, first, cut_power,
        ell0,
    )  # fmt: skip
    at = np.minimum(first, k_all - 1)
    nu = consts.nu(np, rdt)
    nu_c = nu[at]
    limit = KAPPA / np.maximum(nu_c, nu[1])
    nu_floor = KAPPA / (consts.max_res * fw)
    floored = (first < k_all) & (nu_c < nu_floor) & (cut_power > _NEGLIGIBLE**2 * ell0)
    return {
        "ell": ell,
        "w": w,
        "n_j": n_j,
        "dead": dead,
        "first": first,
        "limit": limit,
        "floored": floored,
    }


def away_stats_cpu(
    y: np.ndarray,
    e: np.ndarray,
    c: np.ndarray,
    w: np.ndarray,
    level: bool,
    slab: tuple[int, int],
) -> dict[str, Any] | None:
    """:func:`eelsgpu.kernels.zlp._away_stats` (its NumPy branch) in one compiled loop per row,
    the same bits (sums in NumPy's pairwise order, the median from the same order statistics);
    None where it does not apply (not a C-contiguous float block of at least 8 channels, or
    mixed precisions): the caller's NumPy path runs."""
    dt = y.dtype
    if not _applies(y, (e, c, w), min_channels=8):
        return None
    nb = _numba()
    n, n_e = y.shape
    a, b = (int(v) for v in slab)
    cst = np.array(
        [4.0, 6.0, 25.0, 70.0, 3.0, 0.0, 1.0, tiny(str(dt)), float(n_e - 4), float(n_e)], dtype=dt
    )
    quarter = np.empty((n, (n_e - 4 + 3) // 4), dtype=dt)
    nb.away_quarter(y, cst, quarter)
    med = _median_rows(np, quarter) / 0.4549  # (NumPy's partition, as the NumPy path)
    v_out = np.empty(n, dtype=dt)
    y_out = np.empty(n, dtype=dt)
    lev = np.empty(n if level else 0, dtype=dt)
    nb.away_stats(y, e, c, w, med, a, b, bool(level), cst, v_out, y_out, lev)
    out: dict[str, Any] = {"noise": (v_out, y_out)}
    if level:
        out["level"] = lev
    return out


def background_sums_cpu(
    y: np.ndarray, e: np.ndarray, c: np.ndarray, thr: np.ndarray
) -> np.ndarray | None:
    """The five sums of :func:`eelsgpu.kernels.zlp.background_check` (channels far below the
    ZLP, their counts, the loss channels, the window's counts, the gain side's counts) as (n, 5)
    in one compiled loop per row, the same bits; None where it does not apply (not a
    C-contiguous float block with everything in its precision): the NumPy path runs."""
    dt = y.dtype
    if not _applies(y, (e, c, thr), min_channels=1):
        return None
    nb = _numba()
    out = np.empty((y.shape[0], 5), dtype=dt)
    nb.background_sums(y, e, c, thr, np.array([0.0, 1.0], dtype=dt), out)
    return out


def _background_twin(y, e, c, thr):  # the NumPy branch of zlp.background_check's sums
    rel = e[None, :] - c[:, None]
    ff = (rel < thr[:, None]).astype(y.dtype)
    gain = (rel < 0.0).astype(y.dtype)
    cols = (ff, y * ff, 1.0 - gain, y, y * gain)
    return np.stack([np.sum(a, axis=-1) for a in cols], axis=-1)


def _background_rows(args: tuple[Any, ...], m: int) -> tuple[Any, ...]:
    y, e, c, thr = args
    return (y[:m], e, c[:m], thr[:m])


def _away_twin(y, e, c, w, level, slab):  # the NumPy branch of zlp._away_stats
    from ..kernels.zlp import _away_stats

    return _away_stats(np, y, None, e, c, w, level=level, slab=slab, compiled=False)


def _same(want: Any, got: Any) -> bool:
    """Equal arrays (NaN where NaN) in nested dicts/tuples."""
    if isinstance(want, dict):
        return set(want) == set(got) and all(_same(want[k], got[k]) for k in want)
    if isinstance(want, tuple):
        return len(want) == len(got) and all(_same(a, b) for a, b in zip(want, got, strict=True))
    return bool(np.array_equal(np.asarray(want), np.asarray(got), equal_nan=True))


def _checked_provider(name: str, fast: Any, twin: Any, rows: Any, probe: Any = None) -> Any:
    """A provider of ``fast`` for NumPy arrays once the kernels are loaded (:func:`warm_up`;
    None before, and for any other namespace), checked once per row length and dtype against
    ``twin`` on the first call's first 64 rows (``rows(args, m)``: the arguments cut to m rows)
    and on ``probe(args)`` (more arguments, or None): the same bits, else one warning and the
    twin from then on."""

    def provider(xp: Any) -> Any:
        if not is_numpy(xp) or _disabled(name) or _STATE.get((name, "failed")):
            return None
        if not _ready():  # (not loaded, or loading: the NumPy path meanwhile)
            return None

        def checked(*args: Any) -> Any:
            key = (name, "checked", args[0].shape[1:], str(args[0].dtype))
            state = _STATE.get(key)
            if state is None:
                try:
                    cases = [rows(args, 64)] + ([] if probe is None else [probe(args)])
                    ok = True
                    for case in cases:
                        got = fast(*case)
                        ok = ok and (got is None or _same(twin(*case), got))
                except Exception as exc:  # a compilation failure: the NumPy path
                    ok = False
                    _STATE[(name, "failed")] = True
                    _warn(name, f"{type(exc).__name__}: {exc}")
                else:
                    if not ok:
                        _warn(name, "its result differs from the NumPy path's")
                state = _STATE[key] = ok
            return fast(*args) if state else twin(*args)

        return checked

    return provider


def _away_rows(args: tuple[Any, ...], m: int) -> tuple[Any, ...]:
    y, e, c, w, level, slab = args
    return (y[:m], e, c[:m], w[:m], level, slab)


def _rolloff_rows(args: tuple[Any, ...], m: int) -> tuple[Any, ...]:
    jf, zf, rf, share, alive, fw, consts = args

    def cut(a):
        return None if a is None else a[:m]

    return (cut(jf), cut(zf), cut(rf), cut(share), cut(alive), cut(fw), consts)


def _rolloff_probe(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The CUDA kernel's probe (thin, thick, vacuum spectra, noise, a misfit) at the block's
    length and precision."""
    jf, consts = args[0], args[-1]
    probe = rolloff_probe(np, jf.shape[-1], consts)
    real = jf.real.dtype
    return (
        *(a.astype(jf.dtype) for a in probe[:3]),
        probe[3].astype(real),
        None,
        probe[5].astype(real),
        consts,
    )


#: The fewest spectra of a job that start the kernels' load (:func:`warm_up`) in a process
#: where they are not loaded yet: numba's start-up costs about 0.45 s of a core once, the
#: kernels save about 0.04 ms per spectrum on one core (a 64 x 64 x 2048 cube, measured), so a
#: smaller job in a fresh process runs on NumPy (the same results) and leaves them unloaded.
WARM_UP_SPECTRA = 10_000


def register_cpu_kernels(n_spectra: int | None = None) -> None:
    """Register the CPU kernels' providers in :mod:`eelsgpu.kernels._fused` and, for a job of
    ``n_spectra`` spectra (None: any), start loading the kernels in the background where that
    pays (:data:`WARM_UP_SPECTRA`; :func:`warm_up`; until they are loaded the NumPy path runs)."""
    _fused.register(
        ROLLOFF_NAME,
        _checked_provider(
            ROLLOFF_NAME, rolloff_cpu, rolloff_numpy_passes, _rolloff_rows, _rolloff_probe
        ),
        cpu=True,
    )
    _fused.register(
        AWAY_STATS_NAME,
        _checked_provider(AWAY_STATS_NAME, away_stats_cpu, _away_twin, _away_rows),
        cpu=True,
    )
    _fused.register(
        BACKGROUND_NAME,
        _checked_provider(BACKGROUND_NAME, background_sums_cpu, _background_twin, _background_rows),
        cpu=True,
    )
    if not _disabled("cpu") and (n_spectra is None or n_spectra >= WARM_UP_SPECTRA):
        warm_up()


def _warn(name: str, why: str) -> None:
    warnings.warn(
        f"eelsgpu: the compiled CPU kernel {name} is not used ({why}); the NumPy path runs instead",
        RuntimeWarning,
        stacklevel=4,
    )
