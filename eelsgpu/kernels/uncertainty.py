"""Counting noise and its propagation: pure array-API kernels (issue 14).

The noise model
---------------
A recorded value ``x`` (data units) is ``x = g N`` with ``N`` the number of counted electrons
(photons for SXES), Poisson distributed, and ``g`` the detector **gain in data units per counted
electron** (ADU/e-; ``g = 1`` for data in electron counts). So the electrons are ``N = x / g``
and ``var(x) = g^2 var(N) = g x`` (:func:`poisson_variance`). Data that are not Poisson counts
times a gain (dark-subtracted, gain-normalised, summed with read noise) carry a per-channel
variance instead, in data units squared, which the user measures and gives (the analysis
functions' ``noise_variance=``); it replaces ``g x`` everywhere.

Where the user gives neither, :func:`estimate_gain` measures ``g`` from the data's own
channel-to-channel noise: a difference ``d_i = sum_k c_k x_{i+k}`` of high enough order (the
4th) of a smooth spectrum is pure noise with ``var(d_i) = g sum_k c_k^2 x_{i+k}``, so
``r_i = d_i^2 / sum_k c_k^2 x_{i+k}`` is ``g`` times a chi-square of one degree of freedom; the
median of ``r`` over all channels and pixels divided by the chi-square median 0.4549 is ``g``
(the median ignores the few channels where the spectrum curves sharply, a ZLP, an edge). A detector whose point-spread correlates neighbouring channels (a CCD) shows less
channel noise than it has, so the estimate is then low: give ``gain=`` or ``noise_variance=``.

Two ways to propagate it
------------------------
* **analytic**: an estimator ``Q(x)`` linearised about the data, ``dQ = sum_j a_j dx_j``, has
  ``var(Q) = sum_j a_j^2 var(x_j)`` (:func:`linear_sigma`) and two of them the covariance
  ``sum_j a_j b_j var(x_j)``; a ratio adds its relative variances less twice the relative
  covariance (:func:`ratio_sigma`). The log-ratio has the closed form
  :func:`log_ratio_variance`.
* **replicas**: ``K`` Poisson replicas ``g Poisson(x / g)`` of each spectrum (Gaussian
  ``x + sqrt(v) z`` under a measured variance ``v``) drawn by :func:`draw_replicas`, run as a
  ``K``-times larger batch through the same block kernel, and reduced per pixel to mean and
  standard deviation by :func:`replica_moments` without ever writing the ``K`` cubes. Each
  pixel's replicas come from its own generator seeded by ``(seed, global pixel index)``, so
  the draws do not depend on how the image is cut into blocks and tiles. NumPy's ``Generator``
  draws them on the host (the array API has no random numbers); on a GPU the same kernel would
  draw on the device with CuPy's ``cupy.random.Generator`` on a counter-based bit generator
  (Philox4x32-10) keyed by ``seed`` with the pixel index as the counter's subsequence, which
  keeps the per-pixel streams independent of blocking; here other namespaces take a host round
  trip.

Examples
--------
>>> x = np.array([[100.0, 400.0]])
>>> poisson_variance(x, gain=2.0).tolist()
[[200.0, 800.0]]
>>> round(float(log_ratio_variance(np.array(1e4), np.array(2e4))), 8)
5e-05
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._xp import array_namespace, fast_length, fft_module, is_numpy

__all__ = [
    "CHI2_1_MEDIAN",
    "REPLICA_BATCH_ELEMENTS",
    "draw_replicas",
    "eps_covariance_from_inverse",
    "eps_normalisation_sigmas",
    "normalisation_rel_sigma",
    "plasmon_crossing_shift_eV",
    "estimate_gain",
    "fourier_log_functional_variance",
    "fourier_log_ssd_variance",
    "kk_inverse_eps_covariance",
    "linear_sigma",
    "log_ratio_variance",
    "odd_hilbert",
    "odd_hilbert_transposed",
    "odd_hilbert_variance",
    "poisson_variance",
    "ratio_sigma",
    "refractive_index_variance",
    "replica_moments",
    "replica_sigmas",
    "sandwich_covariance",
    "thickness_sigma_nm",
]

#: Median of a chi-square variable of one degree of freedom (scipy.stats.chi2(1).median()).
CHI2_1_MEDIAN = 0.454936423119572

#: Elements (pixels x replicas x channels) of one replica batch: bounds the memory the replicas
#: take in a block kernel (16 MiB of float64).
REPLICA_BATCH_ELEMENTS = 1 << 21


def poisson_variance(counts: Any, gain: float = 1.0) -> Any:
    """Variance (data units^2) of recorded values ``x = g N``, ``N`` Poisson: ``var = g x``.

    Negative values (dark-subtracted noise) count as zero.

    Parameters
    ----------
    counts : array
        Recorded values ``x`` (data units).
    gain : float
        ``g``, data units per counted electron (1 for electron counts).

    Returns
    -------
    array
        ``g max(x, 0)`` in data units squared, same shape.

    Examples
    --------
    >>> poisson_variance(np.array([-3.0, 0.0, 9.0])).tolist()
    [0.0, 0.0, 9.0]
    """
    xp = array_namespace(counts)
    return float(gain) * xp.clip(counts, 0.0, None)


def _median_where(r: Any, ok: Any) -> tuple[Any, Any]:
    """Median of the entries of ``r`` where ``ok`` (fixed shapes: the others sort as +inf)."""
    xp = array_namespace(r)
    r, ok = xp.reshape(r, (-1,)), xp.reshape(ok, (-1,))
    n_used = xp.sum(xp.astype(ok, xp.int64))
    srt = xp.sort(xp.where(ok, r, xp.inf))
    n = srt.shape[0]
    lo_i = xp.clip(xp.reshape((n_used - 1) // 2, (1,)), 0, n - 1)
    hi_i = xp.clip(xp.reshape(n_used // 2, (1,)), 0, n - 1)
    med = (xp.take(srt, lo_i) + xp.take(srt, hi_i))[0] / 2
    return xp.where(n_used > 0, med, xp.nan), n_used


def estimate_gain(
    block: Any, *, min_electrons: float = 25.0, min_used: int = 100
) -> tuple[Any, Any]:
    """The detector gain (data units per electron) from the channel-to-channel noise of spectra.

    The 4th difference ``d_i = x_{i-2} - 4 x_{i-1} + 6 x_i - 4 x_{i+1} + x_{i+2}`` of a spectrum
    that is locally a cubic is pure noise of variance ``g sum_k c_k^2 x_{i+k}``; the median over
    channels and spectra of ``d_i^2 / sum_k c_k^2 x_{i+k}``, divided by the chi-square(1) median,
    is ``g`` (see the module docstring). Pass 1 uses every channel whose five values are
    positive; pass 2 only those of at least ``min_electrons`` electrons (by pass 1's gain), as
    Poisson counts of a few electrons make the ratio's median low; pass 1 stands where pass 2
    has fewer than ``min_used`` channels. On synthetic Poisson images from 1e4 to 1e8 counts
    (EELS with a ZLP, SXES bands) it is within 10 % of the true gain.

    Parameters
    ----------
    block : array (n_pix, n_E)
        Recorded spectra in data units (at least 5 channels).
    min_electrons : float
        Pass 2's lower bound on the counts of the channels used (electrons).
    min_used : int
        Fewest channels pass 2 needs.

    Returns
    -------
    gain : 0-d array
        The estimate (data units per electron); NaN when no channel qualifies.
    n_used : 0-d array
        The number of channels the median used (int).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = 3.0 * rng.poisson(500.0, size=(50, 400)).astype(float)
    >>> g, n = estimate_gain(x)
    >>> bool(abs(float(g) - 3.0) < 0.3), int(n)
    (True, 19800)
    """
    xp = array_namespace(block)
    x = xp.astype(block, xp.float64)
    m = x.shape[-1] - 4
    parts = [x[:, k : k + m] for k in range(5)]
    d = parts[0] - 4 * parts[1] + 6 * parts[2] - 4 * parts[3] + parts[4]
    den = parts[0] + 16 * parts[1] + 36 * parts[2] + 16 * parts[3] + parts[4]
    low = parts[0]
    for p in parts[1:]:
        low = xp.minimum(low, p)
    ok1 = low > 0
    r = d * d / xp.where(ok1, den, 1.0)
    med1, n1 = _median_where(r, ok1)
    g1 = med1 / CHI2_1_MEDIAN
    ok2 = ok1 & (low >= float(min_electrons) * xp.where(xp.isfinite(g1), g1, 0.0))
    med2, n2 = _median_where(r, ok2)
    pass2 = n2 >= int(min_used)
    gain = xp.where(pass2, med2 / CHI2_1_MEDIAN, g1)
    return gain, xp.where(pass2, n2, n1)


def _to_host(a: Any) -> np.ndarray:
    """A NumPy copy of an array of any namespace (for the host random generator)."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "get") and type(a).__module__.startswith("cupy"):
        return a.get()
    try:
        return np.asarray(a)
    except TypeError:
        return np.from_dlpack(a)


def draw_replicas(
    block: Any,
    n_replicas: int,
    *,
    pixel_index: Any,
    seed: int = 0,
    gain: float = 1.0,
    variance: Any = None,
) -> Any:
    """``K`` noise replicas of each spectrum: ``g Poisson(x / g)``, or ``x + sqrt(v) z``.

    Replica ``k`` of pixel ``p`` is row ``p K + k`` of the result. Pixel ``p`` draws from
    ``numpy.random.default_rng([seed, pixel_index[p]])``, so replicas depend on the global pixel
    index and the seed only, not on blocks or tiles (see the module docstring for the GPU).

    Parameters
    ----------
    block : array (n_pix, n_E)
        Recorded spectra (data units); negative values count as zero counts for Poisson.
    n_replicas : int
        ``K``.
    pixel_index : array (n_pix,)
        Global (flat) index of each pixel in the image.
    seed : int
        The user's seed.
    gain : float
        Data units per electron (Poisson replicas).
    variance : array (n_pix, n_E), optional
        A measured variance (data units^2): Gaussian replicas with it instead of Poisson.

    Returns
    -------
    array (n_pix * K, n_E)
        Float64 replicas in the block's namespace.

    Examples
    --------
    >>> r = draw_replicas(np.full((2, 3), 1e4), 4, pixel_index=np.array([0, 1]))
    >>> r.shape, bool(np.all(np.abs(r - 1e4) < 600))
    ((8, 3), True)
    """
    xp = array_namespace(block)
    k = int(n_replicas)
    host = _to_host(block).astype(np.float64, copy=False)
    index = _to_host(pixel_index).astype(np.int64, copy=False)
    var = None if variance is None else _to_host(variance).astype(np.float64, copy=False)
    n_pix, n_e = host.shape
    out = np.empty((n_pix, k, n_e), dtype=np.float64)
    g = float(gain)
    lam = np.clip(host, 0.0, None) / g
    for p in range(n_pix):
        rng = np.random.default_rng([int(seed), int(index[p])])
        if var is None:
            out[p] = g * rng.poisson(lam[p], size=(k, n_e))
        else:
            out[p] = host[p] + np.sqrt(np.clip(var[p], 0.0, None)) * rng.standard_normal((k, n_e))
    out = out.reshape(n_pix * k, n_e)
    return out if is_numpy(xp) else xp.asarray(out)


def replica_moments(values: Any, n_replicas: int, *, min_fraction: float = 0.5) -> tuple[Any, Any]:
    """Per-pixel mean and standard deviation (ddof 1) of ``K`` replica results, NaN-aware.

    Parameters
    ----------
    values : array (n_pix * K,) or (n_pix * K, m)
        A kernel output on the replica batch (rows ordered pixel-major as
        :func:`draw_replicas` makes them): a map, or a per-pixel spectrum (each column
        reduced on its own).
    n_replicas : int
        ``K`` (>= 2).
    min_fraction : float
        A pixel with fewer finite replicas than this fraction of ``K`` gets NaN.

    Returns
    -------
    mean, std : array (n_pix,) or (n_pix, m)

    Examples
    --------
    >>> m, s = replica_moments(np.array([1.0, 3.0, np.nan, 2.0, 2.0, 2.0]), 3)
    >>> m.tolist(), [round(float(v), 4) for v in s]
    ([2.0, 2.0], [1.4142, 0.0])
    """
    xp = array_namespace(values)
    k = int(n_replicas)
    if is_numpy(xp) and values.dtype.kind == "f" and np.isfinite(values).all():
        # every replica finite (the common case): NumPy's own mean and standard deviation,
        # accumulated in float64 without a float64 copy of the replicas (the NaN-aware form
        # below takes some ten passes over them)
        v = values.reshape((-1, k) + tuple(values.shape[1:]))
        mean = v.mean(axis=1, dtype=np.float64)
        std = v.std(axis=1, ddof=1, dtype=np.float64)
        if k >= 2:
            return mean, std
    vals = xp.astype(values, xp.float64)
    # replicas on axis 1: (n_pix, K) for a map, (n_pix, K, m) for a per-pixel spectrum
    v = xp.reshape(vals, (-1, k)) if vals.ndim == 1 else xp.reshape(vals, (-1, k, vals.shape[1]))
    good = xp.isfinite(v)
    n = xp.sum(xp.astype(good, xp.float64), axis=1)
    vz = xp.where(good, v, 0.0)
    safe_n = xp.where(n > 0, n, 1.0)
    mean = xp.sum(vz, axis=1) / safe_n
    dev = xp.where(good, v - xp.expand_dims(mean, axis=1), 0.0)
    var = xp.sum(dev * dev, axis=1) / xp.where(n > 1, n - 1, 1.0)
    enough = (n >= max(2.0, min_fraction * k)) & (n > 1)
    return xp.where(enough, mean, xp.nan), xp.where(enough, xp.sqrt(var), xp.nan)


def _repeat_rows(a: Any, k: int) -> Any:
    """Each row (pixel) of ``a`` repeated ``k`` times in place: (n, ...) -> (n k, ...)."""
    xp = array_namespace(a)
    shape = tuple(a.shape)
    b = xp.broadcast_to(xp.reshape(a, (shape[0], 1) + shape[1:]), (shape[0], k) + shape[1:])
    return xp.reshape(b, (shape[0] * k,) + shape[1:])


def replica_sigmas(
    kernel: Any,
    block: Any,
    energy_eV: Any,
    targets: Any,
    *,
    n_replicas: int,
    seed: int = 0,
    gain: float = 1.0,
    variance: Any = None,
    pixel_index: Any = None,
    channels: tuple[int, int] | None = None,
    extras: Any = None,
    batch_elements: int = REPLICA_BATCH_ELEMENTS,
    **params: Any,
) -> dict[str, Any]:
    """Replica sigmas of any block kernel: ``K`` replicas per pixel through ``kernel``, reduced.

    The block's pixels go in batches of at most ``batch_elements`` replica values; each batch
    is drawn (:func:`draw_replicas`; cast to float32 for a float32 block), run through
    ``kernel(replicas, energy, **extras, **params)`` as one ``K``-times larger block, and reduced to each target's per-pixel standard deviation
    (:func:`replica_moments`) before the next, so no ``K``-fold cube is ever held. Per-pixel
    ``extras`` (a ZLP cube, a thickness map) are repeated for each replica.

    Parameters
    ----------
    kernel : callable
        A block kernel (``kernel(block, energy_eV, **kw) -> dict``), called with no uncertainty.
    block : array (n_pix, n_E)
    energy_eV : array (n_E,)
    targets : sequence of str
        The outputs whose sigma is wanted.
    n_replicas, seed, gain, variance, pixel_index
        As :func:`draw_replicas` (``pixel_index`` default 0..n_pix-1).
    channels : (i0, i1), optional
        Only these channels are drawn and passed (with ``energy_eV[i0:i1]``): the kernel's
        parameters must then refer to the slice.
    extras : mapping name -> array (n_pix,) or (n_pix, m), optional
        Per-pixel arrays the kernel takes.
    **params
        The kernel's other parameters.

    Returns
    -------
    dict
        ``target -> sigma`` (n_pix,), NaN where fewer than half the replicas are finite.

    Examples
    --------
    >>> def total(b, e):
    ...     return {"sum": b.sum(axis=-1)}
    >>> s = replica_sigmas(total, np.full((2, 100), 100.0), np.arange(100.0), ["sum"],
    ...                    n_replicas=400)
    >>> bool(np.all(np.abs(s["sum"] / 100.0 - 1) < 0.1))
    True
    """
    xp = array_namespace(block)
    n_pix = int(block.shape[0])
    k = int(n_replicas)
    i0, i1 = channels if channels is not None else (0, int(block.shape[1]))
    e = energy_eV[i0:i1]
    if pixel_index is None:
        pixel_index = np.arange(n_pix)
    per = max(1, int(batch_elements) // (k * max(1, i1 - i0)))
    pieces: dict[str, list[Any]] = {t: [] for t in targets}
    for p0 in range(0, n_pix, per):
        p1 = min(n_pix, p0 + per)
        reps = draw_replicas(
            block[p0:p1, i0:i1],
            k,
            pixel_index=pixel_index[p0:p1],
            seed=seed,
            gain=gain,
            variance=None if variance is None else variance[p0:p1, i0:i1],
        )
        if block.dtype == xp.float32:
            # the replicas in the block's own precision: the kernel then does what it does
            # on the data (whole counts below 2^24 are exact in float32), at float32's speed
            reps = xp.astype(reps, xp.float32)
        kw = {n: _repeat_rows(a[p0:p1, ...], k) for n, a in (extras or {}).items()}
        res = kernel(reps, e, **kw, **params)
        for t in targets:
            pieces[t].append(replica_moments(res[t], k)[1])
    return {t: xp.concat(v) if len(v) > 1 else v[0] for t, v in pieces.items()}


def linear_sigma(alpha: Any, variance: Any) -> Any:
    """One standard deviation of a linearised estimator: ``sqrt(sum_j a_j^2 var(x_j))``.

    Parameters
    ----------
    alpha : array (n_pix, n_E)
        Sensitivities ``a_j = dQ/dx_j`` (units of Q per data unit).
    variance : array (n_pix, n_E)
        ``var(x_j)`` (data units^2), channels independent.

    Returns
    -------
    array (n_pix,)
        In the units of Q.

    Examples
    --------
    >>> linear_sigma(np.ones((1, 4)), np.full((1, 4), 25.0)).tolist()
    [10.0]
    """
    xp = array_namespace(alpha)
    return xp.sqrt(xp.sum(alpha * alpha * variance, axis=-1))


def ratio_sigma(a: Any, b: Any, var_a: Any, var_b: Any, cov_ab: Any) -> Any:
    """One standard deviation of ``r = a / b`` to first order, with the covariance of a and b.

    ``var(r) / r^2 = var(a)/a^2 + var(b)/b^2 - 2 cov(a, b)/(a b)`` (NaN where b is not positive).

    Examples
    --------
    >>> round(float(ratio_sigma(np.array(100.0), np.array(400.0), np.array(100.0),
    ...                         np.array(400.0), np.array(0.0))), 6)
    0.027951
    """
    xp = array_namespace(a)
    good = (b > 0) & xp.isfinite(a) & xp.isfinite(b)
    sb = xp.where(good, b, 1.0)
    r = a / sb
    rel = var_a / (sb * sb) + r * r * var_b / (sb * sb) - 2 * r * cov_ab / (sb * sb)
    return xp.where(good, xp.sqrt(xp.clip(rel, 0.0, None)), xp.nan)


def log_ratio_variance(n0: Any, total: Any, gain: float = 1.0) -> Any:
    """Closed-form counting variance of the log-ratio ``t/lambda = ln(I / N0)`` (eq. 16).

    ``I = N0 + M`` with ``N0`` (zero-loss) and ``M`` (inelastic) independent Poisson counts:
    ``var(ln(I/N0)) = M / (N0 I) = 1/N0 - 1/I`` in electrons; in data units of gain ``g``
    (``N0 = n0/g``) it is ``g (1/n0 - 1/I)``. NaN where ``n0`` is not positive or ``I < n0``.

    Parameters
    ----------
    n0 : array
        Zero-loss intensity (data units).
    total : array
        Total intensity ``I`` of the same window (data units).
    gain : float
        Data units per electron.

    Returns
    -------
    array
        The variance of t/lambda (dimensionless squared).

    Examples
    --------
    >>> log_ratio_variance(np.array([100.0]), np.array([200.0]), gain=2.0).tolist()
    [0.01]
    """
    xp = array_namespace(n0)
    good = (n0 > 0) & (total >= n0)
    v = float(gain) * (1.0 / xp.where(good, n0, 1.0) - 1.0 / xp.where(good, total, 1.0))
    return xp.where(good, v, xp.nan)


def thickness_sigma_nm(
    t_over_lambda: Any, t_over_lambda_sigma: Any, mfp_nm: Any, mfp_rel_sigma: float = 0.0
) -> tuple[Any, Any]:
    """Counting and systematic parts of sigma(t) for ``t = lambda t/lambda`` (nm).

    Counting: ``lambda sigma(t/lambda)``; systematic (the mean-free-path formula, the user's
    relative uncertainty ``s`` of lambda: Iakoubovskii et al. 2008 quote about 10 %, Malis et al.
    1988 about 20 %): ``s |t|``. They are reported apart (``thickness_nm_sigma`` and
    ``thickness_nm_sigma_systematic``); the total is their quadrature sum.

    Parameters
    ----------
    t_over_lambda, t_over_lambda_sigma : array
        t/lambda and its counting sigma (dimensionless).
    mfp_nm : array or float
        Inelastic mean free path lambda (nm).
    mfp_rel_sigma : float
        Relative uncertainty of lambda (0.1 = 10 %).

    Returns
    -------
    counting, systematic : array (nm)

    Examples
    --------
    >>> c, s = thickness_sigma_nm(np.array(0.5), np.array(0.01), 120.0, 0.1)
    >>> round(float(c), 6), round(float(s), 6)
    (1.2, 6.0)
    """
    xp = array_namespace(t_over_lambda)
    t = t_over_lambda * mfp_nm
    return t_over_lambda_sigma * mfp_nm, float(mfp_rel_sigma) * xp.abs(t)


def _circular_conv(fft: Any, a_ft: Any, b: Any, n_fft: int) -> Any:
    """``sum_j a(k - j) b_j`` (circular over ``n_fft``) from ``a``'s rfft and ``b`` (zero-padded)."""
    return fft.irfft(a_ft * fft.rfft(b, n=n_fft, axis=-1), n=n_fft, axis=-1)


def fourier_log_ssd_variance(
    spectrum: Any,
    zlp: Any,
    filter_ft: Any,
    variance: Any,
    *,
    n_fft: int,
    zlp_from_data: Any = None,
    ssd: Any = None,
) -> Any:
    """Counting variance of each channel of a Fourier-log SSD, by its linearisation (eqs. 18-22).

    The SSD ``S = N0 F^-1[R~ ln(J~ / Z~)]`` (``J`` the spectrum, ``Z`` the ZLP model, ``N0 = sum Z``,
    ``R~`` the filter the deconvolution applies: a reconvolution with a Gaussian, a roll-off)
    moves, to first order in the data, by ``dS = g_J * dJ - g_Z * dZ + (S / N0) dN0`` with
    ``g_J = N0 F^-1[R~ / J~]``, ``g_Z = N0 F^-1[R~ / Z~]`` and ``*`` the circular convolution
    over the padded length. Where the ZLP model copies the data (``zlp_from_data``: 1 on the
    channels it takes, e.g. a threshold model's channels up to the first minimum; 0 for a fitted
    model, whose parameters move at second order or are treated as fixed),
    ``dZ = m dJ`` and ``dN0 = sum m dJ``; channels independent with variance ``v``. Then

    ``var(S_k) = (g_J^2 * v)_k + ((g_Z^2 - 2 g_J g_Z) * (m v))_k + s_k^2 sum(m v)
    + 2 s_k ((g_J - g_Z) * (m v))_k``, ``s = S / N0``

    -- four FFT convolutions per pixel, the cost of the deconvolution itself. The covariance of
    two channels is the same sums at two lags (not returned). ``spectrum`` and ``zlp`` must be
    on the deconvolution's own origin and padding (channel 0 = the transform's origin).

    Parameters
    ----------
    spectrum, zlp : array (n_pix, n_E)
        ``J`` and ``Z`` (data units per channel), as the deconvolution transformed them.
    filter_ft : array (n_fft // 2 + 1,) or (n_pix, n_fft // 2 + 1)
        ``R~`` (real or complex) on the rfft grid.
    variance : array (n_pix, n_E)
        ``var(J)`` per channel (data units^2; ``g J`` for Poisson counts).
    n_fft : int
        The padded transform length.
    zlp_from_data : array (n_pix, n_E) or (n_E,), optional
        ``m``: 1 where the ZLP model is the data (default: a fixed model, all 0).
    ssd : array (n_pix, n_E)
        The deconvolution's SSD ``S`` on the same grid (needed with ``zlp_from_data``).

    Returns
    -------
    array (n_pix, n_E)
        ``var(S_k)`` in (data units per channel)^2.

    Examples
    --------
    A spectrum that is all ZLP (one channel) and an identity filter: S = 0 whatever the
    counts, so its variance is 0.

    >>> j = np.zeros((1, 8)); j[0, 0] = 100.0
    >>> v = fourier_log_ssd_variance(j, j, np.ones(5), j, n_fft=8, zlp_from_data=j > 0,
    ...                              ssd=np.zeros((1, 8)))
    >>> bool(np.allclose(v, 0.0))
    True
    """
    xp = array_namespace(spectrum)
    fft = fft_module(xp)
    n_e = spectrum.shape[-1]
    jf = fft.rfft(spectrum, n=n_fft, axis=-1)
    zf = fft.rfft(zlp, n=n_fft, axis=-1)
    n0 = xp.sum(zlp, axis=-1)[:, None]
    gj = n0 * fft.irfft(filter_ft / jf, n=n_fft, axis=-1)
    var = _circular_conv(fft, fft.rfft(gj * gj, axis=-1), variance, n_fft)[:, :n_e]
    if zlp_from_data is not None:
        if ssd is None:
            raise ValueError("fourier_log_ssd_variance needs the ssd with zlp_from_data")
        m = xp.astype(zlp_from_data, variance.dtype)
        mv = m * variance
        gz = n0 * fft.irfft(filter_ft / zf, n=n_fft, axis=-1)
        s = ssd / n0
        cross = _circular_conv(fft, fft.rfft(gz * gz - 2 * gj * gz, axis=-1), mv, n_fft)
        lin = _circular_conv(fft, fft.rfft(gj - gz, axis=-1), mv, n_fft)
        var = var + cross[:, :n_e] + s * s * xp.sum(mv, axis=-1)[:, None] + 2 * s * lin[:, :n_e]
    return xp.clip(var, 0.0, None)


def fourier_log_functional_variance(
    weights: Any,
    spectrum: Any,
    zlp: Any,
    filter_ft: Any,
    variance: Any,
    *,
    n_fft: int,
    zlp_from_data: Any = None,
    ssd: Any = None,
) -> Any:
    """Counting variance of ``Q = sum_k a_k S_k``, a linear functional of a Fourier-log SSD.

    With the linearisation of :func:`fourier_log_ssd_variance`,
    ``dQ = sum_j b_j dJ_j`` with ``b = a (*) g_J - m (a (*) g_Z) + m sum_k a_k s_k`` (``(*)`` the
    circular cross-correlation ``(a (*) g)_j = sum_k a_k g(k - j)``), so
    ``var(Q) = sum_j b_j^2 v_j``: two FFT correlations per pixel. The sum-rule (KK) thickness
    integral ``sum S / (E ln(1 + beta^2/theta_E^2))`` (eq. 26), t/lambda from the SSD (eq. 17)
    and any window of the SSD are such functionals.

    Parameters
    ----------
    weights : array (n_E,) or (n_pix, n_E)
        ``a_k`` on the SSD's channels (0 where Q does not look).
    spectrum, zlp, filter_ft, variance, n_fft, zlp_from_data, ssd
        As :func:`fourier_log_ssd_variance`.

    Returns
    -------
    array (n_pix,)
        ``var(Q)``.

    Examples
    --------
    With no ZLP share and an identity filter on a lone ZLP channel, Q = S_0 has g_J = delta:
    its variance is the channel's own.

    >>> j = np.zeros((1, 8)); j[0, 0] = 100.0
    >>> a = np.zeros(8); a[0] = 1.0
    >>> fourier_log_functional_variance(a, j, j, np.ones(5), j, n_fft=8).round(6).tolist()
    [100.0]
    """
    xp = array_namespace(spectrum)
    fft = fft_module(xp)
    n_e = spectrum.shape[-1]
    a = xp.broadcast_to(xp.astype(weights, spectrum.dtype), spectrum.shape)
    af = fft.rfft(a, n=n_fft, axis=-1)
    jf = fft.rfft(spectrum, n=n_fft, axis=-1)
    n0 = xp.sum(zlp, axis=-1)[:, None]
    # correlation: (a (*) g)_j = sum_k a_k g(k - j) = F^-1[conj(A~) G~] at -j... computed as
    # F^-1[A~ conj(G~)] read at j (real g), i.e. sum_k a_k g(k - j)
    b = fft.irfft(af * xp.conj(n0 * filter_ft / jf), n=n_fft, axis=-1)[:, :n_e]
    if zlp_from_data is not None:
        if ssd is None:
            raise ValueError("fourier_log_functional_variance needs the ssd with zlp_from_data")
        zf = fft.rfft(zlp, n=n_fft, axis=-1)
        m = xp.astype(zlp_from_data, spectrum.dtype)
        bz = fft.irfft(af * xp.conj(n0 * filter_ft / zf), n=n_fft, axis=-1)[:, :n_e]
        b = b - m * bz + m * xp.sum(a * ssd / n0, axis=-1)[:, None]
    return xp.sum(b * b * variance, axis=-1)


def sandwich_covariance(jacobian: Any, fit_weights: Any, variance: Any) -> Any:
    """Parameter covariance of a weighted least-squares fit, per pixel (the sandwich form).

    A fit minimising ``sum_i w_i (y_i - f_i(theta))^2`` moves, to first order, by
    ``d theta = (J^T W J)^-1 J^T W dy``, so ``cov(theta) = A^-1 J^T W V W J A^-1`` with
    ``A = J^T W J`` and ``V`` the data's (diagonal) variance; with ``w = 1 / v`` it is the usual
    ``A^-1``. For the band-gap onset ``A (E - Eg)^b`` (and its background), for any model
    fitted per pixel by (Gauss-Newton) least squares, with ``J`` at the solution.

    Parameters
    ----------
    jacobian : array (n_pix, n_E, p)
        ``d f_i / d theta`` at the fitted parameters.
    fit_weights : array (n_pix, n_E) or (n_E,)
        The weights the fit used (0 outside its range).
    variance : array (n_pix, n_E)
        ``var(y_i)``.

    Returns
    -------
    array (n_pix, p, p)

    Examples
    --------
    A straight line fitted with weights 1/v: the textbook covariance of (intercept, slope).

    >>> x = np.arange(5.0)
    >>> jac = np.stack([np.ones(5), x], axis=-1)[None]
    >>> cov = sandwich_covariance(jac, np.ones(5), np.ones((1, 5)))
    >>> cov.round(3).tolist()
    [[[0.6, -0.2], [-0.2, 0.1]]]
    """
    xp = array_namespace(jacobian)
    w = xp.broadcast_to(fit_weights, variance.shape)[..., None]
    wj = w * jacobian
    a = xp.matmul(xp.matrix_transpose(jacobian), wj)
    meat = xp.matmul(xp.matrix_transpose(wj), variance[..., None] * wj)
    a_inv = xp.linalg.inv(a)
    return xp.matmul(xp.matmul(a_inv, meat), a_inv)


# ------------------------------------------------------------ Kramers-Kronig, linearised
def _odd_offsets_power(m: np.ndarray, power: int) -> np.ndarray:
    """Maclaurin's kernel of eq. 32, g(m) = 2/(pi m) for odd m and 0 for even m, to ``power``."""
    m = np.asarray(m, dtype=np.float64)
    odd = (np.abs(m) % 2) == 1
    out = np.zeros_like(m)
    out[odd] = (2.0 / (np.pi * m[odd])) ** power
    return out


def _odd_spectra(n_k: int, m: int, power: int) -> tuple[np.ndarray, np.ndarray]:
    """rfft (length ``m`` >= 2 n_k - 1) of the convolution kernel a[r] = g(-r)^p, r in (-K, K),
    and the correlation kernel b[s] = g(s)^p, s in [0, 2K - 1): ``sum_j v_j g(j - i)^p`` and
    ``sum_j v_j g(j + i)^p`` are then ``irfft(V a~)`` and ``irfft(conj(V) b~)`` (host)."""
    a = np.zeros(m)
    r = np.arange(n_k)
    a[:n_k] = _odd_offsets_power(-r, power)
    a[m - n_k + 1 :] = _odd_offsets_power(np.arange(n_k - 1, 0, -1), power)
    b = np.zeros(m)
    b[: 2 * n_k - 1] = _odd_offsets_power(np.arange(2 * n_k - 1), power)
    return np.fft.rfft(a), np.fft.rfft(b)


def _spectra(xp: Any, n_k: int, m: int, power: int, dtype: Any) -> tuple[Any, Any]:
    from ._device_cache import cached

    cdtype = xp.complex64 if dtype == xp.float32 else xp.complex128

    def make():
        a, b = _odd_spectra(n_k, m, power)
        return xp.asarray(a, dtype=cdtype), xp.asarray(b, dtype=cdtype)

    return cached(xp, ("unc-odd", n_k, m, power, str(cdtype)), make)


def _kernel_rows(xp: Any, n_k: int, lo: int, hi: int, dtype: Any) -> Any:
    """The Hilbert kernel's rows j in [lo, hi): h[j - lo, i] = g(j - i) + g(j + i), (hi - lo, K)
    on the device (cached): ``x @ rows`` is :func:`odd_hilbert` of rows ``x`` zero outside."""
    from ._device_cache import cached

    def make():
        j = np.arange(lo, hi)[:, None]
        i = np.arange(n_k)[None, :]
        return xp.asarray(_odd_offsets_power(j - i, 1) + _odd_offsets_power(j + i, 1), dtype=dtype)

    return cached(xp, ("unc-rows", n_k, lo, hi, str(dtype)), make)


def odd_hilbert(v: Any) -> Any:
    """The discrete Hilbert transform of eq. 32 on the odd extension (Maclaurin's formula),
    ``H[v]_i = sum_j v_j (g(j - i) + g(j + i))``, g(m) = 2/(pi m) for odd m (0 for even), of
    rows ``v`` (..., K) as a linear convolution by FFTs; Re[1/eps] = 1 - H[Im[-1/eps]] (plus
    the tail). Dimensionless kernel: ``H[v]`` has the units of ``v``.

    Examples
    --------
    >>> v = np.zeros((1, 6)); v[0, 2] = 1.0
    >>> np.round(odd_hilbert(v) * np.pi / 2, 6).tolist()  # 1/(j - i) + 1/(j + i), j = 2, odd
    [[0.0, 1.333333, 0.0, -0.8, 0.0, -0.190476]]
    """
    xp = array_namespace(v)
    fft = fft_module(xp)
    n_k = v.shape[-1]
    m = fast_length(2 * n_k - 1)
    a, b = _spectra(xp, n_k, m, 1, v.dtype)
    vh = _padded_spectrum(xp, v, m)
    return fft.irfft(vh * a + xp.conj(vh) * b, n=m, axis=-1)[..., :n_k]


def _padded_spectrum(xp: Any, v: Any, m: int) -> Any:
    """rfft of rows ``v`` (..., K) zero-padded to ``m``: the padding written into one buffer
    (scipy's ``rfft(v, n=m)`` pads by a copy that costs about 2x the transform)."""
    buf = xp.zeros((*v.shape[:-1], m), dtype=v.dtype)
    buf[..., : v.shape[-1]] = v
    return fft_module(xp).rfft(buf, axis=-1)


def odd_hilbert_transposed(v: Any) -> Any:
    """The transpose of :func:`odd_hilbert`: ``sum_m v_m (g(j - m) + g(j + m))`` at j, of rows
    ``v`` (..., K) (eq. 32's kernel, g odd: the correlation part less the convolution part of
    :func:`odd_hilbert`), by one FFT pair. The gradient of H[x] at channels m over the
    channels j; units of ``v``.

    Examples
    --------
    >>> v = np.zeros((1, 6)); v[0, 2] = 1.0
    >>> np.round(odd_hilbert_transposed(v) * np.pi / 2, 6).tolist()  # 1/(j - 2) + 1/(j + 2)
    [[0.0, -0.666667, 0.0, 1.2, 0.0, 0.47619]]
    """
    xp = array_namespace(v)
    n_k = v.shape[-1]
    m = fast_length(2 * n_k - 1)
    a, b = _spectra(xp, n_k, m, 1, v.dtype)
    vh = _padded_spectrum(xp, v, m)
    return fft_module(xp).irfft(xp.conj(vh) * b - vh * a, n=m, axis=-1)[..., :n_k]


def odd_hilbert_variance(variance: Any) -> Any:
    """Variance of :func:`odd_hilbert` of independent channels: ``var(H[x])_i = sum_j (g(j - i)
    + g(j + i))^2 v_j`` (the squared kernel convolved with the channel variance, eq. 32), by
    FFTs. The square's cross term is not a convolution, but for i >= 1 partial fractions make
    it one: ``g(j - i) g(j + i) = (1/(pi i)) (g(j - i) - g(j + i))`` (both odd, else both 0),
    so ``var = G2c + G2r + (2/(pi i)) (Hc - Hr)`` with ``G2`` the squared kernel's convolution
    (c) and correlation (r) parts and ``H`` the kernel's; at i = 0, ``4 sum_j g(j)^2 v_j``.
    ``variance`` (..., K) in units^2, returns the same units.

    Examples
    --------
    Against the explicit sum:

    >>> rng = np.random.default_rng(0)
    >>> v = rng.random((2, 9))
    >>> j, i = np.meshgrid(np.arange(9), np.arange(9))
    >>> g = lambda m: np.where(m % 2 == 1, 2 / (np.pi * np.where(m == 0, 1, m)), 0.0)
    >>> h = g(j - i) + g(j + i)
    >>> bool(np.allclose(odd_hilbert_variance(v), v @ (h**2).T))
    True
    """
    xp = array_namespace(variance)
    fft = fft_module(xp)
    n_k = variance.shape[-1]
    m = fast_length(2 * n_k - 1)
    a1, b1 = _spectra(xp, n_k, m, 1, variance.dtype)
    a2, b2 = _spectra(xp, n_k, m, 2, variance.dtype)
    vh = _padded_spectrum(xp, variance, m)
    cvh = xp.conj(vh)
    sq = fft.irfft(vh * a2 + cvh * b2, n=m, axis=-1)[..., :n_k]
    diff = fft.irfft(vh * a1 - cvh * b1, n=m, axis=-1)[..., :n_k]
    i = xp.arange(n_k, dtype=variance.dtype)
    cross = (2.0 / np.pi) / xp.where(i > 0, i, 1.0)
    out = sq + cross * diff
    out = xp.where(i == 0, 2.0 * sq, out)
    return xp.clip(out, 0.0, None)


def kk_inverse_eps_covariance(
    variance: Any,
    *,
    d: Any,
    u: Any,
    a: Any,
    w: Any,
    ramp: Any,
    tail_shape: Any,
    loss_scaled: Any,
    hilbert_scaled: Any,
    integral: Any,
    kappa: Any,
    normalised: bool,
    diagonal_factor: float = 1.0,
    u_support: tuple[int, int] | None = None,
    a_support: tuple[int, int] | None = None,
) -> tuple[Any, Any, Any, Any]:
    """Counting covariance of Im[-1/eps] and Re[1/eps] at each channel, by the linearisation of
    one Kramers-Kronig pass (kk-theory.md eqs. 31-33) about the data.

    The pass (:func:`eelsgpu.kernels.dielectric.kk_single_pass`) is, per pixel,
    ``Im[-1/eps] = kappa L`` and ``Re[1/eps] = 1 - kappa R`` with ``L`` linear in the SSD ``s``
    (eq. 31: ``L_k = d_k s_k`` above the cut-off, ``c ramp_k`` below it with the slope
    ``c = u . s``), ``R = H[L] + A tail_shape`` (eq. 32: :func:`odd_hilbert` of L plus the
    A/E^3 tail, ``A = a . s``) and, for a sum-rule normalisation (eq. 33, n or a metal),
    ``kappa = C / J`` with ``J = w . s``. To first order, with ``nu = 1`` for the sum rule
    (0 for a known thickness: kappa fixed),

    ``d Im = kappa (dL - nu L dJ / J)``,  ``d Re = -kappa (dR - nu R dJ / J)``;

    with independent channels of variance ``v`` every term is a diagonal product, a rank-one
    sum (``S_xy = sum_j x_j y_j v_j``) or a Hilbert transform: ``var(dR) =
    var_H[d^2 v] + q^2 S_uu + t^2 S_aa + 2 q t S_ua + 2 q H[d u v] + 2 t H[d a v]``
    (``q = H[ramp]``, ``t`` the tail shape, ``var_H`` :func:`odd_hilbert_variance`),
    ``cov(dR, dJ) = H[d w v] + q S_uw + t S_aw``, and so on: three Hilbert transforms and one
    squared-kernel convolution per pixel. The sign constraint and the tail's clamp enter
    through ``d``, ``u``, ``a``, ``w`` (0 where they hold a channel).

    Parameters
    ----------
    variance : array (n, K)
        Channel variance of the SSD on the loss grid (counts^2 per channel^2).
    d, u, a, w : arrays (n, K) (or (K,))
        dL_k/ds_k (1/eV, 0 below the cut-off and on clipped channels), dc/ds, dA/ds and dJ/ds.
    ramp : array (K,) or (n, K)
        E_k (eV) below the cut-off (L = c E there), 0 elsewhere.
    tail_shape : array (K,)
        dR/dA: the A/E^3 tail's term of eq. 32 per unit A (eV^-3).
    loss_scaled, hilbert_scaled : arrays (n, K)
        ``L`` and ``R`` (Im[-1/eps] / kappa and (1 - Re[1/eps]) / kappa).
    integral, kappa : arrays (n,)
        ``J`` and ``kappa``.
    normalised : bool
        kappa from the sum rule (``nu = 1``) or fixed by a known thickness.
    diagonal_factor : float
        var(s_k) / v_k of one channel: ``(1 - f)^2 + f^2`` when the SSD was linearly
        interpolated onto the loss grid by a fraction f of a channel (its neighbours then
        correlate; smooth sums still see ``v``, and Maclaurin's odd offsets never pair two
        neighbours).
    u_support, a_support : (int, int), optional
        Channels [lo, hi) outside which ``u`` (``a``) is 0 for every pixel (the low-energy fit
        range, the tail fit): their Hilbert transforms are then a small matrix product with
        the kernel's rows instead of an FFT pair, and their sums run over the range only.

    Returns
    -------
    var_loss, var_re, cov_loss_re : arrays (n, K)
        Dimensionless^2.
    var_integral : array (n,)
        var(J), (1/eV)^2.

    Examples
    --------
    One channel above the cut-off, no sum rule: var(Im[-1/eps]) = kappa^2 d^2 v.

    >>> z = np.zeros((1, 4)); d = np.array([[0.0, 0.0, 2.0, 0.0]])
    >>> v = np.array([[0.0, 0.0, 3.0, 0.0]])
    >>> out = kk_inverse_eps_covariance(v, d=d, u=z, a=z, w=z, ramp=np.zeros(4),
    ...     tail_shape=np.zeros(4), loss_scaled=z, hilbert_scaled=z, integral=np.ones(1),
    ...     kappa=np.array([0.5]), normalised=False)
    >>> out[0].tolist()
    [[0.0, 0.0, 3.0, 0.0]]
    """
    xp = array_namespace(variance)
    fft = fft_module(xp)
    v = variance
    n_k = v.shape[-1]
    dv = d * v

    def part(x, support):
        """x restricted to its support: (x, v, d v) there."""
        if support is None:
            return x, v, dv, slice(0, n_k)
        sl = slice(*support)
        return x[..., sl], v[..., sl], dv[..., sl], sl

    def ssum(x, y, sx, sy):
        """sum_j x_j y_j v_j over the common support, (n, 1)."""
        lo = max(sx.start, sy.start)
        hi = min(sx.stop, sy.stop)
        if hi <= lo:
            return xp.zeros((v.shape[0], 1), dtype=v.dtype)
        xs = x[..., lo - sx.start : hi - sx.start]
        ys = y[..., lo - sy.start : hi - sy.start]
        return xp.sum(xs * ys * v[..., lo:hi], axis=-1)[:, None]

    uu, _, duv, su = part(u, u_support)
    aa, _, dav, sa = part(a, a_support)
    s_uu = ssum(uu, uu, su, su)
    s_aa = ssum(aa, aa, sa, sa)
    s_ww = xp.sum(w * w * v, axis=-1)[:, None]
    s_ua = ssum(uu, aa, su, sa)
    s_uw = ssum(uu, w[..., su], su, su)
    s_aw = ssum(aa, w[..., sa], sa, sa)
    # the Hilbert transforms: rows with a short support by the kernel's rows (a matrix
    # product), the rest by FFTs, with the squared-kernel variance in the same two calls
    m = fast_length(2 * n_k - 1)
    # the rows to transform, written into one zero-padded buffer: one rfft call for all, and
    # no padding copy inside it (scipy's rfft(x, n=m) of unpadded rows costs about 3x the
    # transform itself)
    longs = [x for x, support in ((u, u_support), (a, a_support)) if support is None]
    buf = xp.zeros((v.shape[0], 2 + len(longs), m), dtype=v.dtype)
    w_row = dv * w
    var_row = d * dv
    if diagonal_factor != 1.0:
        var_row = diagonal_factor * var_row
    buf[:, 0, :n_k] = w_row
    buf[:, 1, :n_k] = var_row
    for r, x in enumerate(longs):
        buf[:, 2 + r, :n_k] = dv * x
    a1, b1 = _spectra(xp, n_k, m, 1, v.dtype)
    a2, b2 = _spectra(xp, n_k, m, 2, v.dtype)
    spec = fft.rfft(buf, axis=-1)
    del buf
    cs = xp.conj(spec)
    # the inverse transforms' rows, written in place: 0 H of the w row, 1 the squared kernel's
    # G2c + G2r of the variance row, 2 its Hc - Hr (its H itself is not needed), 3.. the H of
    # the long u / a rows
    back = xp.empty((v.shape[0], 3 + len(longs), spec.shape[-1]), dtype=spec.dtype)
    back[:, 0, :] = spec[:, 0, :] * a1 + cs[:, 0, :] * b1
    back[:, 1, :] = spec[:, 1, :] * a2 + cs[:, 1, :] * b2
    back[:, 2, :] = spec[:, 1, :] * a1 - cs[:, 1, :] * b1
    if longs:
        back[:, 3:, :] = spec[:, 2:, :] * a1 + cs[:, 2:, :] * b1
    del spec, cs
    back = fft.irfft(back, n=m, axis=-1)[..., :n_k]
    h_w = back[:, 0, :]
    i = xp.arange(n_k, dtype=v.dtype)
    cross = (2.0 / np.pi) / xp.where(i > 0, i, 1.0)
    var_h = back[:, 1, :] + cross * back[:, 2, :]
    var_h[:, 0] = 2.0 * back[:, 1, 0]  # i = 0: 4 sum_j g(j)^2 v_j (a column, not a pass)
    var_h = xp.clip(var_h, 0.0, None)
    ramp2 = ramp if ramp.ndim == 2 else ramp[None, :]
    q = odd_hilbert(ramp2)
    t = tail_shape
    var_dl = var_row + ramp * ramp * s_uu
    cov_dl_dj = w_row + ramp * s_uw
    if ramp2.shape[0] == 1 and u_support is not None and a_support is not None:
        # one cut-off for the block (q, t, ramp rows of K): every term that is a short-support
        # Hilbert transform (x @ the kernel's rows) or a rank-one sum is one matrix product per
        # output, the (K,) coefficients folded into the kernel's rows once per block (instead
        # of about ten passes over (n, K) arrays each)
        xu, xa = duv * uu, dav * aa
        hu = _kernel_rows(xp, n_k, su.start, su.stop, v.dtype)
        ha = _kernel_rows(xp, n_k, sa.start, sa.stop, v.dtype)
        t2 = t[None, :]
        m_var = xp.concat([hu * (2.0 * q), ha * (2.0 * t2), q * q, t2 * t2, 2.0 * q * t2], axis=0)
        var_dr = var_h + xp.concat([xu, xa, s_uu, s_aa, s_ua], axis=1) @ m_var
        cov_dr_dj = h_w + xp.concat([s_uw, s_aw], axis=1) @ xp.concat([q, t2], axis=0)
        m_cov = xp.concat([hu * ramp2, q * ramp2, t2 * ramp2], axis=0)
        # dv (q u + t a): u and a are 0 outside their supports
        direct = xp.zeros_like(v)
        direct[:, su] = q[:, su] * uu
        direct[:, sa] = direct[:, sa] + t[sa] * aa
        cov_dl_dr = dv * direct + xp.concat([xu, s_uu, s_ua], axis=1) @ m_cov
    else:
        long_h = iter(back[:, 3 + r, :] for r in range(len(longs)))  # in the order of longs
        h_u, h_a = (
            next(long_h) if support is None
            else x @ _kernel_rows(xp, n_k, sx.start, sx.stop, v.dtype)
            for x, sx, support in ((duv * uu, su, u_support), (dav * aa, sa, a_support))
        )  # fmt: skip
        u_full = u if u_support is None else xp.concat(
            [xp.zeros((u.shape[0], su.start), dtype=v.dtype), uu,
             xp.zeros((u.shape[0], n_k - su.stop), dtype=v.dtype)], axis=-1
        )  # fmt: skip
        var_dr = var_h + q * q * s_uu + t * t * s_aa + 2 * q * t * s_ua + 2 * q * h_u + 2 * t * h_a
        cov_dr_dj = h_w + q * s_uw + t * s_aw
        cov_dl_dr = dv * (q * u_full + t * a) + ramp * (h_u + q * s_uu + t * s_ua)
    k2 = (kappa * kappa)[:, None]
    if normalised:
        r = (1.0 / integral)[:, None]
        lr, rr = loss_scaled * r, hilbert_scaled * r
        # factored to share the products: var_l = var_dl - 2 lr cov_dl_dj + lr^2 S_ww, etc.
        ls = lr * s_ww
        var_l = var_dl + lr * (ls - 2.0 * cov_dl_dj)
        var_r = var_dr + rr * (rr * s_ww - 2.0 * cov_dr_dj)
        cov = cov_dl_dr - rr * (cov_dl_dj - ls) - lr * cov_dr_dj
    else:
        var_l, var_r, cov = var_dl, var_dr, cov_dl_dr
    var_l = xp.clip(k2 * var_l, 0.0, None)
    var_r = xp.clip(k2 * var_r, 0.0, None)
    return var_l, var_r, (-k2) * cov, s_ww[:, 0]


def eps_covariance_from_inverse(
    re_inverse: Any,
    loss: Any,
    var_re: Any,
    var_loss: Any,
    cov_re_loss: Any,
    *,
    covariance: bool = True,
) -> tuple[Any, Any, Any]:
    """(var eps1, var eps2, cov(eps1, eps2)) from the covariance of (Re[1/eps], Im[-1/eps]) by
    the Jacobian of eq. 34, eps1 = R / (R^2 + L^2), eps2 = L / (R^2 + L^2): with
    ``A = (L^2 - R^2)/D^2``, ``B = -2 R L / D^2`` (D = R^2 + L^2) the Jacobian is
    ``[[A, B], [B, -A]]``. Any shape; dimensionless. ``covariance=False``: cov(eps1, eps2) is
    not computed (None).

    Examples
    --------
    At Re[1/eps] = 0 (eps1 = 0): d eps1 = dR / L^2 and d eps2 = -dL / L^2.

    >>> [float(x) for x in eps_covariance_from_inverse(0.0, 2.0, 1.0, 4.0, 0.0)]
    [0.0625, 0.25, 0.0]
    """
    r, lo = re_inverse, loss
    # each product once (these are full cubes: every pass counts)
    r2, l2 = r * r, lo * lo
    dd = r2 + l2
    inv = 1.0 / (dd * dd)
    a = (l2 - r2) * inv
    b = (-2.0 * r) * lo * inv
    aa, bb, ab = a * a, b * b, a * b
    cross = 2.0 * ab * cov_re_loss
    var1 = aa * var_re + bb * var_loss + cross
    var2 = bb * var_re + aa * var_loss - cross
    if not covariance:
        return var1, var2, None
    cov12 = ab * (var_re - var_loss) + (bb - aa) * cov_re_loss
    return var1, var2, cov12


def refractive_index_variance(n: Any, k: Any, var_eps1: Any, var_eps2: Any, cov12: Any) -> Any:
    """var n(E) from the covariance of (eps1, eps2): n + i k = sqrt(eps), so
    ``dn = (n d eps1 + k d eps2) / (2 (n^2 + k^2))``. Any shape; dimensionless.

    Examples
    --------
    >>> float(refractive_index_variance(2.0, 0.0, 16.0, 1.0, 0.0))  # dn = d eps1 / (2 n)
    1.0
    """
    den = 2.0 * (n * n + k * k)
    return (n * n * var_eps1 + k * k * var_eps2 + 2 * n * k * cov12) / (den * den)


#: The largest relative move of 1/eps (|1/eps - 1| dK/K / |1/eps| = |1 - eps| dK/K) for which
#: :func:`eps_normalisation_sigmas` quotes its first-order sigma.
LINEAR_MOVE_MAX = 0.2


def normalisation_rel_sigma(refractive_index: float, rel_sigma: float) -> float:
    """dK/K of the KK normalisation factor K (Im[-1/eps] = K S) for a refractive index n given
    with relative sigma dn/n: kk-theory.md eqs. 28 and 33 make K proportional to 1 - 1/n^2, so
    dK/K = 2 (dn/n) / (n^2 - 1). Dimensionless in and out (a thickness given as the
    normalisation, eq. 31, has dK/K = dt/t itself).

    >>> round(normalisation_rel_sigma(2.0, 0.01), 6)
    0.006667
    """
    n = float(refractive_index)
    return 2.0 * float(rel_sigma) / (n * n - 1.0)


def eps_normalisation_sigmas(eps1: Any, eps2: Any, rel: Any) -> tuple[Any, Any, Any]:
    """First-order sigmas of eps1, eps2 and n(E) when K moves by ``rel`` = dK/K.

    1/eps = 1 + K g (eqs. 31-32: Im[-1/eps] = K S and Re[1/eps] - 1 = -K H[S]), so
    d eps = (eps^2 - eps) dK/K (eq. 34); n = sqrt((|eps| + eps1) / 2) moved along it by a small
    step. NaN where 1/eps would move by more than :data:`LINEAR_MOVE_MAX` (|1 - eps| rel: a
    metal below its plasmon, where first order does not hold). ``eps1``, ``eps2`` (..., K)
    dimensionless, ``rel`` a number or one per spectrum (...); out: (..., K) each.

    >>> s1, s2, sn = eps_normalisation_sigmas(np.array([2.0]), np.array([1.0]), 0.01)
    >>> [round(float(v[0]), 4) for v in (s1, s2, sn)]  # eps^2 - eps = 1 + 3i
    [0.01, 0.03, 0.0056]
    """
    xp = array_namespace(eps1, eps2)
    if getattr(rel, "ndim", 0):  # one dK/K per spectrum
        rel = rel[..., None]
    eps = eps1 + 1j * eps2
    d = eps * eps - eps
    linear = xp.isfinite(eps1) & (xp.abs(eps - 1) * rel <= LINEAR_MOVE_MAX)
    h = 1e-6
    e2 = eps + h * d
    n0 = xp.sqrt((xp.abs(eps) + xp.real(eps)) / 2)
    n1 = xp.sqrt((xp.abs(e2) + xp.real(e2)) / 2)
    return tuple(
        xp.where(linear, v, xp.nan)
        for v in (xp.abs(xp.real(d)) * rel, xp.abs(xp.imag(d)) * rel, xp.abs(n1 - n0) / h * rel)
    )


def plasmon_crossing_shift_eV(
    eps1: Any, d_eps1: Any, plasmon_eV: Any, e0_eV: float, dispersion_eV: float
) -> Any:
    """|dE_p| (eV) of the plasmon energy when eps1 moves by the signed ``d_eps1``.

    E_p is eps1's upward zero crossing interpolated linearly between channels a and b as
    :func:`~eelsgpu.kernels.optics.plasmon_energy_eV` does, E_p = E_a - dE e1_a / (e1_b - e1_a),
    so dE_p = -dE (d_a e1_b - e1_a d_b) / (e1_b - e1_a)^2. ``eps1``, ``d_eps1`` (..., K) on the
    uniform grid E_k = e0 + k dE (eV); ``plasmon_eV`` (...); NaN where it is NaN.

    >>> e1 = np.array([[-1.0, 1.0]])
    >>> float(plasmon_crossing_shift_eV(e1, np.array([[0.1, 0.1]]), np.array([0.5]), 0.0, 1.0)[0])
    0.05
    """
    xp = array_namespace(eps1, d_eps1, plasmon_eV)
    k = eps1.shape[-1]
    ep = xp.where(xp.isfinite(plasmon_eV), plasmon_eV, e0_eV)
    i = xp.astype(xp.clip(xp.floor((ep - e0_eV) / dispersion_eV), 0, k - 2), xp.int64)[..., None]
    a, b = (xp.take_along_axis(eps1, i + j, axis=-1)[..., 0] for j in (0, 1))
    da, db = (xp.take_along_axis(d_eps1, i + j, axis=-1)[..., 0] for j in (0, 1))
    step = b - a
    safe = xp.where(step > 0, step, 1.0)
    out = xp.abs(dispersion_eV * (da * b - a * db) / (safe * safe))
    return xp.where(xp.isfinite(plasmon_eV) & (step > 0), out, xp.nan)
