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

from .._xp import array_namespace, fft_module, is_numpy

__all__ = [
    "CHI2_1_MEDIAN",
    "REPLICA_BATCH_ELEMENTS",
    "draw_replicas",
    "estimate_gain",
    "fourier_log_functional_variance",
    "fourier_log_ssd_variance",
    "linear_sigma",
    "log_ratio_variance",
    "poisson_variance",
    "ratio_sigma",
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
    is drawn (:func:`draw_replicas`), run through ``kernel(replicas, energy, **extras, **params)``
    as one ``K``-times larger block, and reduced to each target's per-pixel standard deviation
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
