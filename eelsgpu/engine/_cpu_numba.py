"""numba-compiled CPU forms of the low-loss kernels' hot steps (imported by
:mod:`eelsgpu.engine.cpu_fused` only, and only when numba is importable).

Each function does, one spectrum (row) at a time, what its NumPy/array-API twin does in many
passes over the whole block: the row's values stay in the L1/L2 cache, and the block's threads
run in parallel (``nogil``). No fastmath: every float32 operation is the twin's, in the twin's
order (constants are passed in the data's precision in ``cst`` so that nothing is promoted to
float64), so the results equal the twin's up to the last bit of the transcendental functions
(libm's ``logf``/``atan2f``/``expf`` against NumPy's SIMD ones) and of sums whose order differs
(stated at each function). ``cache=True``: compiled once per machine, loaded from
``__pycache__`` afterwards.
"""

from __future__ import annotations

import numba
import numpy as np

_JIT = {"nogil": True, "cache": True, "fastmath": False}


@numba.njit(**_JIT)
def _nmax(a, b):  # numpy.maximum: NaN propagates from either side
    if a >= b or a != a:
        return a
    return b


@numba.njit(**_JIT)
def _nmin(a, b):  # numpy.minimum: NaN propagates from either side
    if a <= b or a != a:
        return a
    return b


@numba.njit(**_JIT)
def top_power(jf, zf, q, out):
    """|J~|^2 and |Z~|^2 (rows of ``out`` 0..n-1 and n..2n-1) of the top ``q`` frequencies."""
    n, k_all = jf.shape
    for i in range(n):
        for m in range(q):
            k = k_all - q + m
            a = jf[i, k]
            b = zf[i, k]
            out[i, m] = a.real * a.real + a.imag * a.imag
            out[n + i, m] = b.real * b.real + b.imag * b.imag


@numba.njit(**_JIT)
def _moving_average_at(c, k, half, m, counts):
    """(c[hi] - c[lo]) / (hi - lo): the window mean at ``k`` from running sums ``c`` (m + 1);
    ``counts[j]`` is j in the data's precision (no promotion to float64)."""
    lo = k - half
    if lo < 0:
        lo = 0
    hi = k + half + 1
    if hi > m:
        hi = m
    return (c[hi] - c[lo]) / counts[hi - lo]


@numba.njit(**_JIT)
def rolloff_prep(jf, zf, rf, has_rf, n_j, n_z, cst, sig, ratio, im, re, stops):
    """The roll-off's first pass per row (``fourier_log.rolloff_numpy``'s arithmetic): the
    floored |J~|^2 / |Z~|^2 into ``ratio``, the error power into ``sig``, Im and Re of
    J~ conj(Z~) into ``im``/``re`` (their log and atan2 are NumPy's, on the block: its SIMD
    forms, the twin's bits) and the first frequency with an error above 1 rad into ``stops``.
    ``cst``: floor, 1e-24, 2, 1 (the data's precision)."""
    n, k_all = jf.shape
    floor, e24, c_two, one = cst[0], cst[1], cst[2], cst[3]
    for i in range(n):
        a0 = jf[i, 0]
        b0 = zf[i, 0]
        fj = e24 * (a0.real * a0.real + a0.imag * a0.imag) + floor
        fz = e24 * (b0.real * b0.real + b0.imag * b0.imag) + floor
        nj = n_j[i]
        nz = n_z[i]
        stop = k_all
        for k in range(k_all):
            a = jf[i, k]
            b = zf[i, k]
            jr, ji, zr, zi = a.real, a.imag, b.real, b.imag
            jj = _nmax(jr * jr + ji * ji, fj)
            zz = _nmax(zr * zr + zi * zi, fz)
            s = nj / jj + nz / zz
            if has_rf:
                r = rf[i, k]
                rr = r.real * r.real + r.imag * r.imag
                rr = rr * c_two
                s = s + rr / zz
            sig[i, k] = s
            if stop == k_all and s > one:
                stop = k
            ratio[i, k] = jj / zz
            im[i, k] = ji * zr - jr * zi
            re[i, k] = jr * zr + ji * zi
        stops[i] = stop


@numba.njit(**_JIT)
def rolloff_rest(lm, ph, sig, stops, half, unwrap, cst, ell, w, first, cut_power, ell0):
    """The rest of the roll-off per row: the phase ``ph`` unwrapped over the trusted steps,
    ln(J~/Z~) into ``ell``, the smoothed power and error, the cut-off ``first``, the smoothed
    power there ``cut_power``, |ln(J~/Z~)(0)|^2 ``ell0`` and the smoothed, normalised Wiener
    weight ``w``. ``cst``: 0.5/pi, 2 pi, 1 + SNR_MIN, 1, 0, tiny. Running sums in the twin's
    order (sequential): the same bits."""
    n, k_all = lm.shape
    c_turn, c_2pi, c_snr, one, zero, tiny = cst[0], cst[1], cst[2], cst[3], cst[4], cst[5]
    pw = np.empty(k_all, cst.dtype)
    power = np.empty(k_all, cst.dtype)
    errs = np.empty(k_all, cst.dtype)
    c = np.empty(k_all + 1, cst.dtype)
    ce = np.empty(k_all + 1, cst.dtype)
    counts = np.arange(2 * half + 2).astype(cst.dtype)
    turn = np.empty(1, cst.dtype)
    for i in range(n):
        stop = stops[i]
        # the phase unwrapped over the trusted steps (k - 1 < stop - 1), kept on its branch above
        if unwrap and stop > 1:
            acc = 0
            prev = ph[i, 0]
            for k in range(1, k_all):
                p = ph[i, k]
                if k - 1 < stop - 1:
                    acc += np.int32(np.rint((p - prev) * c_turn))
                    prev = p
                if acc != 0:
                    turn[0] = acc  # (the int in the data's precision, as NumPy casts it)
                    ph[i, k] = p - turn[0] * c_2pi
        # the smoothed |ln(J~/Z~)|^2, its first minimum above zero frequency
        c[0] = zero
        for k in range(k_all):
            a = lm[i, k]
            b = ph[i, k]
            ell[i, k] = complex(a, b)
            pw[k] = a * a + b * b
            c[k + 1] = c[k] + pw[k]
        ell0[i] = pw[0]
        for k in range(k_all):
            power[k] = _moving_average_at(c, k, half, k_all, counts)
        k_min = 1  # numpy.argmin: the first minimum, or the first NaN
        best = power[1] if k_all > 1 else zero
        for k in range(2, k_all):
            if best != best:
                break
            p = power[k]
            if p < best or p != p:
                k_min = k
                best = p
        if k_min >= k_all - half - 1:
            k_min = k_all
        reach = k_min if k_min < stop else stop
        # the smoothed error and the first frequency where the power falls to (1 + SNR) x it
        ce[0] = zero
        summed = 0
        k_est = k_all
        for k in range(min(k_all, reach + 1)):
            while summed < min(k_all, k + half + 1):
                ce[summed + 1] = ce[summed] + sig[i, summed]
                summed += 1
            errs[k] = _moving_average_at(ce, k, half, k_all, counts)
            if k >= 1 and power[k] <= c_snr * errs[k]:
                k_est = k
                break
        f = min(k_est, k_min, stop)
        first[i] = f
        cut_power[i] = power[min(f, k_all - 1)]
        # the monotone Wiener weight below the cut-off, smoothed, 1 at zero frequency
        run = one
        for k in range(k_all):
            if k < f:
                s2 = _nmax(power[k] - errs[k], zero)
                den = _nmax(errs[k] + s2, tiny)
                wp = one if k == 0 else s2 / den
                run = wp if k == 0 else _nmin(run, wp)
                pw[k] = run
            else:
                pw[k] = zero
        c[0] = zero
        span = min(k_all, f + 2 * half + 1)
        for k in range(span):
            c[k + 1] = c[k] + pw[k]
        for k in range(span, k_all):
            c[k + 1] = c[k]
        w0 = zero
        for k in range(k_all):
            if k < f + half:
                v = _moving_average_at(c, k, half, k_all, counts)
                if k == 0:
                    w0 = v
                w[i, k] = v / w0 if w0 > zero else v
            else:
                w[i, k] = zero
