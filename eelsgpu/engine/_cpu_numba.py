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
def _moving_average_row(c, half, m, upto, counts, out):
    """out[k] = :func:`_moving_average_at` for k < ``upto``: the whole windows in one loop
    without branches (vectorised), the ends apart."""
    lo_end = min(half, upto)
    for k in range(lo_end):
        out[k] = _moving_average_at(c, k, half, m, counts)
    inner = min(upto, m - half)
    whole = counts[2 * half + 1]
    for k in range(lo_end, inner):
        out[k] = (c[k + half + 1] - c[k - half]) / whole
    for k in range(max(lo_end, inner), upto):
        out[k] = _moving_average_at(c, k, half, m, counts)


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
            for k in range(1, stop):  # (k - 1 < stop - 1)
                p = ph[i, k]
                acc += np.int32(np.rint((p - prev) * c_turn))
                prev = p
                if acc != 0:
                    turn[0] = acc  # (the int in the data's precision, as NumPy casts it)
                    ph[i, k] = p - turn[0] * c_2pi
            if acc != 0:  # above: kept on its branch
                turn[0] = acc
                shift = turn[0] * c_2pi
                for k in range(max(stop, 1), k_all):
                    ph[i, k] = ph[i, k] - shift
        # the smoothed |ln(J~/Z~)|^2, its first minimum above zero frequency
        c[0] = zero
        for k in range(k_all):
            a = lm[i, k]
            b = ph[i, k]
            ell[i, k] = complex(a, b)
            pw[k] = a * a + b * b
            c[k + 1] = c[k] + pw[k]
        ell0[i] = pw[0]
        _moving_average_row(c, half, k_all, k_all, counts, power)
        k_min = 1  # numpy.argmin: the first minimum, or the first NaN
        best = power[1] if k_all > 1 else zero
        if best == best:
            for k in range(2, k_all):
                p = power[k]
                if p < best:
                    k_min = k
                    best = p
                elif p != p:
                    k_min = k
                    break
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
        for k in range(f):
            s2 = _nmax(power[k] - errs[k], zero)
            den = _nmax(errs[k] + s2, tiny)
            wp = one if k == 0 else s2 / den
            run = wp if k == 0 else _nmin(run, wp)
            pw[k] = run
        span = min(k_all, f + 2 * half + 1)
        for k in range(f, span):
            pw[k] = zero
        c[0] = zero
        for k in range(span):
            c[k + 1] = c[k] + pw[k]
        for k in range(span, k_all):
            c[k + 1] = c[k]
        m = min(k_all, f + half)  # (beyond: windows of zeros only, exactly 0)
        wi = w[i]
        _moving_average_row(c, half, k_all, m, counts, wi)
        w0 = wi[0] if m > 0 else zero
        if w0 > zero:
            for k in range(m):
                wi[k] = wi[k] / w0
        for k in range(m, k_all):
            wi[k] = zero


@numba.njit(**_JIT)
def _pw_block(a, lo, n):
    """NumPy's pairwise sum of at most 128 values (8 interleaved partial sums)."""
    if n < 8:
        res = a[lo]
        for i in range(1, n):
            res += a[lo + i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    end = n - (n % 8)
    while i < end:
        j = lo + i
        r0 += a[j]
        r1 += a[j + 1]
        r2 += a[j + 2]
        r3 += a[j + 3]
        r4 += a[j + 4]
        r5 += a[j + 5]
        r6 += a[j + 6]
        r7 += a[j + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@numba.njit(**_JIT)
def pairwise_sum(a, lo, n, frames, vals):
    """The sum of ``a[lo:lo + n]`` (n >= 1) in NumPy's order (its pairwise summation along a
    row: halves, the first a multiple of 8, down to blocks of at most 128 summed in 8
    interleaved partial sums): the same bits as ``numpy.sum`` along the last axis. NumPy's
    recursion as a loop over an explicit stack (``frames`` (64, 3) int64 and ``vals`` (64,) of
    ``a``'s dtype: scratch; a recursive numba function's cached code is not always found again
    from another compiled function, and each level as a function of its own made the first
    call load a dozen of them, 0.3 s)."""
    if n <= 128:
        return _pw_block(a, lo, n)
    sp = 1
    frames[0, 0], frames[0, 1], frames[0, 2] = lo, n, 0
    vsp = 0
    while sp > 0:
        f = sp - 1
        flo, fn, state = frames[f, 0], frames[f, 1], frames[f, 2]
        if fn <= 128:
            vals[vsp] = _pw_block(a, flo, fn)
            vsp += 1
            sp -= 1
            continue
        n2 = fn // 2
        n2 -= n2 % 8
        if state == 0:  # the first half
            frames[f, 2] = 1
            frames[sp, 0], frames[sp, 1], frames[sp, 2] = flo, n2, 0
            sp += 1
        elif state == 1:  # the second half
            frames[f, 2] = 2
            frames[sp, 0], frames[sp, 1], frames[sp, 2] = flo + n2, fn - n2, 0
            sp += 1
        else:  # both done: their sum
            vals[vsp - 2] = vals[vsp - 2] + vals[vsp - 1]
            vsp -= 1
            sp -= 1
    return vals[0]


@numba.njit(**_JIT)
def _fourth_difference_squared(y, i, j, c4, c6):
    """The squared fourth difference of row ``i`` of ``y`` at channel ``j`` (``zlp._away_stats``'s
    NumPy arithmetic: (y0 + y4) - 4 (y1 + y3) + 6 y2, squared)."""
    t = (y[i, j] + y[i, j + 4]) - (y[i, j + 1] + y[i, j + 3]) * c4
    t = t + y[i, j + 2] * c6
    return t * t


@numba.njit(**_JIT)
def away_quarter(y, cst, out):
    """Every 4th squared fourth difference of each row (the median's sample of
    ``zlp._away_stats``; its median is NumPy's partition, some 10 times numba's)."""
    n = y.shape[0]
    c4, c6 = cst[0], cst[1]
    for i in range(n):
        for q in range(out.shape[1]):
            out[i, q] = _fourth_difference_squared(y, i, 4 * q, c4, c6)


@numba.njit(**_JIT)
def away_stats(y, e, c, w, med, a, b, level, cst, v_out, y_out, lev):
    """``zlp._away_stats`` per row (its NumPy branch's arithmetic, sums in NumPy's pairwise
    order, the median by the same order statistics: the same bits): the channels' noise
    ``v_out``, the mean count ``y_out`` (floored at tiny) and, with ``level``, the mean signed
    count ``lev`` more than 3 FWHM ``w`` from the centres ``c``, the core on channels a:b.
    ``med`` (n,) the median noise (:func:`away_quarter`'s, over 0.4549). ``cst``: 4, 6, 25, 70,
    3, 0, 1, tiny, n_E - 4, n_E (the data's precision)."""
    n, n_e = y.shape
    c4, c6, c25, c70, c3, zero, one, tiny, n_v, n_all = (
        cst[0], cst[1], cst[2], cst[3], cst[4], cst[5], cst[6], cst[7], cst[8], cst[9]
    )  # fmt: skip
    m = max(n_e - 4, 0)
    v = np.empty(m, y.dtype)
    yp = np.empty(n_e, y.dtype)
    prod = np.empty(n_e, y.dtype)
    cf = np.empty(max(b - a, 0), y.dtype)
    frames = np.empty((64, 3), np.int64)
    vals = np.empty(64, y.dtype)
    av, bv = max(a, 2), min(b, n_e - 2)
    for i in range(n):
        cap = c25 * med[i]
        for j in range(m):
            v[j] = _nmin(_fourth_difference_squared(y, i, j, c4, c6), cap)
        for j in range(n_e):
            yp[j] = _nmax(y[i, j], zero)
        for j in range(a, b):
            x = (e[j] - c[i]) / w[i]
            cf[j - a] = one if abs(x) <= c3 else zero
        n_core = pairwise_sum(cf, 0, b - a, frames, vals) if b > a else zero
        for j in range(a, b):
            prod[j - a] = yp[j] * cf[j - a]
        yp_core = pairwise_sum(prod, 0, b - a, frames, vals) if b > a else zero
        v_core = zero
        n_vcore = zero
        if bv > av:
            for j in range(av, bv):
                prod[j - av] = v[j - 2] * cf[j - a]
            v_core = pairwise_sum(prod, 0, bv - av, frames, vals)
            n_vcore = pairwise_sum(cf, av - a, bv - av, frames, vals)
        sv = pairwise_sum(v, 0, m, frames, vals) if m > 0 else zero
        vo = (sv - v_core) / c70 / _nmax(n_v - n_vcore, one)
        n_away = _nmax(n_all - n_core, one)
        yo = (pairwise_sum(yp, 0, n_e, frames, vals) - yp_core) / n_away
        v_out[i] = _nmax(vo, zero)
        y_out[i] = _nmax(yo, tiny)
        if level:
            for j in range(a, b):
                prod[j - a] = y[i, j] * cf[j - a]
            y_core = pairwise_sum(prod, 0, b - a, frames, vals) if b > a else zero
            lev[i] = (pairwise_sum(y[i], 0, n_e, frames, vals) - y_core) / n_away


@numba.njit(**_JIT)
def background_sums(y, e, c, thr, cst, out):
    """The five sums of ``zlp.background_check`` per row, in NumPy's pairwise order (the same
    bits): the channels far below the ZLP (E - c < ``thr``: -max(10 FWHM, 3 eV)), their counts,
    the loss channels (E - c >= 0), the window's counts and the gain side's counts, into
    ``out`` (n, 5). ``cst``: 0, 1 (the data's precision)."""
    n, n_e = y.shape
    zero, one = cst[0], cst[1]
    ff = np.empty(n_e, y.dtype)
    prod = np.empty(n_e, y.dtype)
    gain = np.empty(n_e, y.dtype)
    frames = np.empty((64, 3), np.int64)
    vals = np.empty(64, y.dtype)
    for i in range(n):
        ci = c[i]
        ti = thr[i]
        for k in range(n_e):
            rel = e[k] - ci
            ff[k] = one if rel < ti else zero
            prod[k] = y[i, k] * ff[k]
        out[i, 0] = pairwise_sum(ff, 0, n_e, frames, vals)
        out[i, 1] = pairwise_sum(prod, 0, n_e, frames, vals)
        for k in range(n_e):
            g = one if e[k] - ci < zero else zero
            gain[k] = one - g
            prod[k] = y[i, k] * g
        out[i, 2] = pairwise_sum(gain, 0, n_e, frames, vals)
        out[i, 3] = pairwise_sum(y[i], 0, n_e, frames, vals)
        out[i, 4] = pairwise_sum(prod, 0, n_e, frames, vals)
