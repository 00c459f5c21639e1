"""Replica sigmas for any declared block kernel, without touching it (issue 14).

:func:`with_replicas` turns a :class:`~eelsgpu.kernels.declare.BlockKernel` into one that returns
the same outputs plus ``<name>_sigma`` for each target output: one standard deviation of the
counting noise, from ``K`` noise replicas of every spectrum (Poisson ``g Poisson(x / g)``, or
Gaussian with a measured variance) run through the wrapped kernel as one ``K``-times larger batch
and reduced per pixel (:func:`eelsgpu.kernels.uncertainty.replica_sigmas`, in memory-bounded
batches; no ``K``-fold cube is written). Each pixel's replicas are seeded by ``(seed, its global
pixel index)``, so the sigmas do not depend on blocks or tiles. A target may be a map ``(n,)`` or
a per-pixel spectrum ``(n, m)`` (the SSD per channel).

The log-ratio thickness with the truncation ZLP (:data:`~.blocks_lowloss.LOG_RATIO`,
``method="threshold"``) has a path of its own, :func:`log_ratio_replica_sigmas`: a few pilot
replicas through the whole kernel, then, where they show that the tail beyond the window cannot
move t/lambda, window-only replicas that draw and redo only what the noise moves (the window's
sum, the first minimum, N0): 6-8 times the throughput (benchmarks/bench_uncertainty.py), the
same sigmas to their own scatter.

The wrapped kernel's parameters and extras pass through unchanged; the wrapper adds the
parameters ``n_replicas``, ``seed``, ``gain`` and the extras ``variance`` (a cube, optional) and
``pixel_index`` (a map) that :meth:`eelsgpu.analysis._uncertainty.UncertaintyRequest.extras`
gives. Per-pixel extras of the wrapped kernel (``per_pixel``, e.g. a ZLP cube) are repeated for
each replica; everything else is a parameter shared by all.

Examples
--------
>>> import numpy as np
>>> from eelsgpu.kernels.declare import BlockKernel, Output
>>> def total(block, energy_eV):
...     return {"total": block.sum(axis=-1)}
>>> decl = with_replicas(BlockKernel(total, outputs=(Output("total", "counts"),)), ["total"])
>>> [o.name for o in decl.outputs_for({"n_replicas": 200})]
['total', 'total_sigma']
>>> out = decl.kernel(np.full((2, 100), 100.0), np.arange(100.0), n_replicas=200,
...                   pixel_index=np.arange(2))
>>> bool(np.all(np.abs(out["total_sigma"] / 100.0 - 1) < 0.15))
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

from .._xp import array_namespace
from .declare import BlockKernel, Output
from .uncertainty import replica_sigmas

__all__ = [
    "KK_ANALYTIC_TARGETS",
    "kk_analytic_sigmas",
    "kk_with_analytic",
    "log_ratio_replica_sigmas",
    "with_replicas",
]

#: Parameters the wrapper takes for itself (the rest go to the wrapped kernel).
_OWN = ("n_replicas", "seed", "gain", "uncertainty")


def with_replicas(
    decl: BlockKernel,
    targets: Sequence[str],
    *,
    per_pixel: Sequence[str] = ("zlp_cube",),
    batch_elements: int | None = None,
    fast_path: bool = True,
) -> BlockKernel:
    """``decl`` with ``<target>_sigma`` outputs from noise replicas run through its own kernel.

    Parameters
    ----------
    decl : BlockKernel
        Any declared block kernel (called with its own parameters, no uncertainty).
    targets : sequence of str
        Outputs of ``decl`` that get a sigma (maps or per-pixel spectra).
    per_pixel : sequence of str
        Names of ``decl``'s per-pixel extras (repeated for each replica); other keyword
        arguments are shared parameters.
    batch_elements : int, optional
        Replica values per batch (default
        :data:`eelsgpu.kernels.uncertainty.REPLICA_BATCH_ELEMENTS`).
    fast_path : bool
        For :data:`~.blocks_lowloss.LOG_RATIO` with ``method="threshold"``: the replicas of
        :func:`log_ratio_replica_sigmas` (the window-only estimator where the tail's part is
        proven negligible by pilot replicas). False: every replica through the whole kernel.

    Returns
    -------
    BlockKernel
        Kernel ``kernel(block, energy_eV, *, n_replicas, seed=0, gain=1.0, variance=None,
        pixel_index=None, **decl's)`` returning ``decl``'s outputs and ``<target>_sigma`` (same
        shape and units; NaN where fewer than half the replicas give a finite value or the value
        itself is not finite). Outputs declared with attrs ``sigma_of``, ``part="counting"``,
        ``uncertainty="replicas:K"``.
    """
    targets = tuple(targets)
    per_pixel = tuple(per_pixel)
    inner = decl.kernel
    from .blocks_lowloss import LOG_RATIO

    # the log-ratio thickness with the truncation ZLP has its own replica path (issue 14 speed)
    fast = log_ratio_replica_sigmas if decl is LOG_RATIO and fast_path else None

    def kernel(
        block: Any,
        energy_eV: Any,
        *,
        n_replicas: int,
        seed: int = 0,
        gain: float = 1.0,
        variance: Any = None,
        pixel_index: Any = None,
        uncertainty: str | None = "replicas",
        **kw: Any,
    ) -> dict[str, Any]:
        xp = array_namespace(block)
        values = dict(inner(block, energy_eV, **kw))
        extras = {n: kw[n] for n in per_pixel if kw.get(n) is not None}
        params = {n: v for n, v in kw.items() if n not in extras}
        if batch_elements is not None:
            params["batch_elements"] = int(batch_elements)
        common = dict(
            n_replicas=int(n_replicas),
            seed=int(seed),
            gain=float(gain),
            variance=variance,
            pixel_index=pixel_index,
        )
        if fast is not None and _log_ratio_fast_applies(kw, targets):
            sig = fast(inner, block, energy_eV, values, targets, kw=kw, **common)
        else:
            sig = replica_sigmas(
                inner, block, energy_eV, targets, extras=extras, **common, **params
            )
        for t in targets:
            values[f"{t}_sigma"] = xp.where(xp.isfinite(values[t]), sig[t], xp.nan)
        return values

    kernel.__name__ = f"{decl.label}_with_replicas"

    def outputs(params: Mapping[str, Any]) -> tuple[Output, ...]:
        inner_params = {k: v for k, v in params.items() if k not in _OWN}
        base = decl.outputs_for(inner_params)
        by_name = {o.name: o for o in base}
        label = f"replicas:{int(params.get('n_replicas', 0))}"
        extra = []
        for t in targets:
            o = by_name[t]
            extra.append(
                replace(
                    o,
                    name=f"{t}_sigma",
                    long_name=f"sigma of {o.long_name or t} (counting)",
                    dtype="float",
                    attrs={"sigma_of": t, "part": "counting", "uncertainty": label},
                )
            )
        return (*base, *extra)

    return BlockKernel(
        kernel,
        outputs=outputs,
        # K replicas per spectrum: keep the CPU tiles small so a tile's replicas stay bounded
        tile_pixels=decl.tile_pixels,
        extras=(*decl.extras, "variance", "pixel_index"),
        name=f"{decl.label}_with_replicas",
        peak_bytes_per_spectrum=decl.peak_bytes_per_spectrum,
        min_block_pixels=decl.min_block_pixels,
    )


# ------------------------------------------------------------ log-ratio replicas (issue 14)
#: Replicas per pixel run through the whole log-ratio kernel (the pilots) by
#: :func:`log_ratio_replica_sigmas` before it decides whether the tail beyond the window can
#: move a replica's t/lambda.
LOG_RATIO_PILOT_REPLICAS = 6
#: The largest move of the tail's part of t/lambda, ln(I_t / I_w), between the measured
#: spectrum and any pilot replica, in closed-form counting sigmas, for the other replicas to
#: hold the measured tail: the tail's own scatter is then below about 0.15 sigma, which adds
#: under 1.2 % to sigma in quadrature.
LOG_RATIO_TAIL_SPREAD_SIGMAS = 0.2
#: The largest tail the measured spectrum could add (its power law's counts, its Fourier-log
#: SSD's ln(I_t / I_w), the tail it added), in closed-form sigmas, for the same: an add-or-not
#: flip the pilots did not see then moves a replica by at most this.
LOG_RATIO_TAIL_POTENTIAL_SIGMAS = 0.5
#: Channels drawn one by one past the measured spectrum's first minimum (and twice the
#: smoothing's half-width) by the window-only replicas; a replica whose minimum lies further
#: draws the rest of its channels from their sum (exact, only slower).
LOG_RATIO_NEAR_CHANNELS = 16


def _log_ratio_fast_applies(kw: Mapping[str, Any], targets: Sequence[str]) -> bool:
    """The replica path of :func:`log_ratio_replica_sigmas` serves the truncation ZLP only (its
    N0 is a sum of counts; the other models' N0 moves with the centre, which the path holds)."""
    return (
        kw.get("method", "threshold") == "threshold"
        and kw.get("zlp_cube") is None
        and set(targets) <= {"t_over_lambda", "zlp_intensity"}
    )


class _WindowDraws(NamedTuple):
    """Window-only replicas of a batch of pixels (:func:`_window_draws`): ``near`` (m k, H)
    the channels ``lo .. lo + h1`` of each pixel drawn one by one (``dtype``; zero past the
    pixel's own ``h1``), ``low`` / ``far`` / ``total`` (m k,) float64 the counts below ``lo``,
    from ``lo + h1`` to the window's end, and the whole window; for :func:`_full_rows`, each
    pixel's ``mean`` (m, n_E) (Poisson: in electrons), ``var`` (or None), ``lo`` and ``h1``."""

    near: Any
    low: Any
    far: Any
    total: Any
    mean: Any
    var: Any
    lo: Any
    h1: Any


def _window_draws(
    x: Any,
    var: Any,
    k: int,
    lo: Any,
    h1: Any,
    *,
    index: Any,
    seed: int,
    gain: float,
    dtype: Any,
) -> _WindowDraws:
    """``k`` replicas of the spectra ``x`` (m, n_E; finite) as the log-ratio's N0 and window
    read them: the channels ``lo[p] .. lo[p] + h1[p]`` of pixel ``p`` one by one, and three
    sums, below ``lo``, from ``lo + h1`` to the end, and the whole. Poisson ``g Poisson(x / g)``:
    a sum of independent Poisson channels is Poisson of the summed means (the same distribution
    as the sum of the channels' draws), and the far channels, where needed, follow from their
    sum by a multinomial split (:func:`_full_rows`: exact). Gaussian ``x + sqrt(v) z`` under a
    measured variance ``var``: the sums are Gaussian of the summed means and variances. Pixel
    ``p`` draws from ``default_rng([seed, index[p], 1])`` (a stream apart from the pilots'),
    whatever else the batch holds."""
    import numpy as np

    m, n_e = x.shape
    near = np.zeros((m, k, int(h1.max())), dtype=dtype)
    low = np.empty((m, k))
    far = np.empty((m, k))
    mean = np.clip(x, 0.0, None) / gain if var is None else x
    for p in range(m):
        rng = np.random.default_rng([int(seed), int(index[p]), 1])
        a = int(lo[p])
        b = min(n_e, a + int(h1[p]))
        if var is None:
            near[p, :, : b - a] = gain * rng.poisson(mean[p, a:b], size=(k, b - a))
            low[p] = gain * rng.poisson(mean[p, :a].sum(), size=k)
            far[p] = gain * rng.poisson(mean[p, b:].sum(), size=k)
        else:
            sd = np.sqrt(var[p])
            near[p, :, : b - a] = mean[p, a:b] + sd[a:b] * rng.standard_normal((k, b - a))
            low[p] = mean[p, :a].sum() + np.sqrt(var[p, :a].sum()) * rng.standard_normal(k)
            far[p] = mean[p, b:].sum() + np.sqrt(var[p, b:].sum()) * rng.standard_normal(k)
    near = near.reshape(m * k, -1)
    low, far = low.reshape(-1), far.reshape(-1)
    total = low + near.sum(axis=-1, dtype=np.float64) + far
    return _WindowDraws(near, low, far, total, mean, var, lo, h1)


def _full_rows(
    draws: _WindowDraws, rows: Any, k: int, *, index: Any, seed: int, gain: float
) -> Any:
    """The replica ``rows`` of :func:`_window_draws` with every channel from ``lo`` to the end
    (float64, (len(rows), n_E - min(lo)), zero past the spectrum's end): the near channels as
    drawn, the far ones from their drawn sum, Poisson channels given their sum being
    multinomial with the channels' shares of the mean, Gaussian ones ``y_j + (v_j / V)
    (S - sum y)`` with ``y_j`` drawn afresh (the conditional law given the sum ``S``). Pixel
    ``p``'s rows draw from ``default_rng([seed, index[p], 2])``, in the order of ``rows``."""
    import numpy as np

    m, n_e = draws.mean.shape
    out = np.zeros((rows.size, n_e - int(draws.lo.min())))
    pix = rows // k
    for p in np.unique(pix):
        sel = np.flatnonzero(pix == p)
        rng = np.random.default_rng([int(seed), int(index[p]), 2])
        a, h = int(draws.lo[p]), int(draws.h1[p])
        b = min(n_e, a + h)
        out[sel, : b - a] = draws.near[rows[sel], : b - a]
        lam = draws.mean[p, b:]
        s = draws.far[rows[sel]]
        if lam.size == 0:
            continue
        if draws.var is None:
            tot = lam.sum()
            if tot > 0:
                n = np.rint(s / gain).astype(np.int64)
                out[sel, b - a : n_e - a] = gain * rng.multinomial(n, lam / tot)
        else:
            v = draws.var[p, b:]
            y = lam + np.sqrt(v) * rng.standard_normal((sel.size, lam.size))
            big_v = v.sum()
            if big_v > 0:
                y = y + (v / big_v) * (s - y.sum(axis=-1))[:, None]
            out[sel, b - a : n_e - a] = y
    return out


def log_ratio_replica_sigmas(
    inner: Any,
    block: Any,
    energy_eV: Any,
    values: Mapping[str, Any],
    targets: Sequence[str],
    *,
    kw: Mapping[str, Any],
    n_replicas: int,
    seed: int = 0,
    gain: float = 1.0,
    variance: Any = None,
    pixel_index: Any = None,
) -> dict[str, Any]:
    """Replica sigmas of the log-ratio thickness (eq. 16) with the truncation ZLP, fast.

    ``t/lambda = ln((I_w + X) / N0)``: ``I_w`` the window's counts, ``N0`` the counts below the
    first minimum after the ZLP (of the spectrum smoothed over about FWHM/2), ``X`` the counts
    beyond the window (a power law or the Fourier-log SSD's tail, where trusted). Per pixel:

    1. :data:`LOG_RATIO_PILOT_REPLICAS` pilot replicas run through the whole kernel ``inner``
       (every decision of the estimator made afresh);
    2. where the tail's part ln(I_t / I_w) of every pilot lies within
       :data:`LOG_RATIO_TAIL_SPREAD_SIGMAS` closed-form sigmas of the measured spectrum's, and
       the tail the measured spectrum could add is at most
       :data:`LOG_RATIO_TAIL_POTENTIAL_SIGMAS` of them, the other replicas hold ``X`` at the
       measured value and redo what the noise moves: ``I_w`` (one Poisson draw of the channels
       past the first minimum's search range: a sum of Poisson counts is Poisson), the first
       minimum and N0 (the channels up to the end of its search range drawn one by one), and
       the rule that a t/lambda below 0 within 3 of its standard deviations is 0;
    3. elsewhere every replica runs the whole kernel (:func:`~.uncertainty.replica_sigmas`).

    Held from the measured spectrum, as structural decisions of the pixel and not parts of the
    estimate's counting noise: the ZLP's peak channel and FWHM (which set the first minimum's
    search start and smoothing width; N0 does not depend on the sub-channel centre), the
    pixel's validity and checks (the quality map is the measured spectrum's), the standard
    deviation the negative-t/lambda rule compares with. Computed on the host (NumPy) for any
    namespace, as the replicas themselves are drawn there.

    Returns ``{target: sigma (n,)}`` for ``targets`` (``t_over_lambda``, ``zlp_intensity``).
    """
    import numpy as np

    from ._sync import host_axis
    from .blocks_lowloss import _tail_from_ssd, _zlp_for_block
    from .log_ratio import log_ratio_maps
    from .tails import TAIL_FIT_FRACTION, solve_tails, tail_sums
    from .uncertainty import _to_host, draw_replicas, replica_moments
    from .zlp import _first_minimum

    xp = array_namespace(block)
    k = int(n_replicas)
    k_pilot = LOG_RATIO_PILOT_REPLICAS
    host = _to_host(block)
    n, n_e = host.shape
    index = np.arange(n) if pixel_index is None else _to_host(pixel_index).astype(np.int64)
    var = None if variance is None else _to_host(variance).astype(np.float64)
    e = _to_host(energy_eV)
    dtype = host.dtype if host.dtype.kind == "f" else np.dtype(np.float64)
    host = host.astype(dtype, copy=False)
    inner_kw = dict(kw)

    def whole(rows: Any) -> dict[str, Any]:
        """Every replica of these pixels through the whole kernel."""
        sub_var = None if var is None else var[rows]
        return replica_sigmas(
            inner, host[rows], e, targets, n_replicas=k, seed=seed, gain=gain,
            variance=sub_var, pixel_index=index[rows], **inner_kw,
        )  # fmt: skip

    out = {t: np.full((n,), np.nan) for t in targets}
    tl_m = _to_host(values["t_over_lambda"]).astype(np.float64)
    if k <= k_pilot + 1 or n == 0:
        res = whole(np.arange(n))
        return {t: xp.asarray(res[t]) for t in targets}

    tail = kw.get("tail", "auto")
    fit_fraction = kw.get("tail_fit_fraction", TAIL_FIT_FRACTION)
    e0, d = host_axis(e, kw.get("axis_eV"))
    zz = _zlp_for_block(
        host, e, method="threshold", reference=None, zlp_cube=None,
        search_eV=kw.get("search_eV"), axis_shift_eV=float(kw.get("axis_shift_eV", 0.0)),
        axis_eV=kw.get("axis_eV"),
    )  # fmt: skip
    z = zz.z
    valid = np.asarray(z["valid"]) & np.isfinite(tl_m)
    maps = log_ratio_maps(
        np, host, zz.e_block, z, tail="none", noise=zz.checks["noise"], axis_eV=zz.axis
    )
    sd_tl = np.asarray(maps["t_over_lambda_sd"], dtype=np.float64)
    y = np.where(valid[:, None] & np.isfinite(host), host, 0.0).astype(np.float64)
    window = y.sum(axis=-1)
    n0 = np.asarray(z["zlp_intensity"], dtype=np.float64)
    cut = np.asarray(z["cut_index"])
    # the closed-form counting sigma of ln(I_w / N0) (its variance: var(M)/I^2 + var(N0)
    # (1/N0 - 1/I)^2, M = I - N0): the scale the tail's part is compared with
    v = gain * np.clip(y, 0.0, None) if var is None else np.where(valid[:, None], var, 0.0)
    below = np.arange(n_e)[None, :] < cut[:, None]
    var_n0 = np.where(below, v, 0.0).sum(axis=-1)
    var_m = v.sum(axis=-1) - var_n0
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = np.sqrt(var_m / window**2 + var_n0 * (1.0 / n0 - 1.0 / window) ** 2)
        total_m = _to_host(values["total_intensity"]).astype(np.float64)
        part_m = np.log(total_m / window)  # the measured tail's part ln(I_t / I_w)
    ok = valid & np.isfinite(sigma) & (sigma > 0) & np.isfinite(part_m)
    # what tail the measured spectrum could add: its power law's counts, its SSD's
    potential = np.where(ok, np.abs(part_m), np.inf)
    if tail in ("auto", "power-law"):
        c = np.where(valid, np.asarray(z["zlp_centre_eV"], dtype=np.float64), 0.0)
        ((pl, _, _),) = solve_tails(np, [tail_sums(np, y, (e0, d, n_e), c, fit_fraction)])
        with np.errstate(divide="ignore", invalid="ignore"):
            potential = np.maximum(potential, np.abs(np.asarray(pl) / window))
    if tail in ("auto", "fourier-log") and ok.any():
        fl = _tail_from_ssd(np, host, zz, "threshold", fit_fraction)(ok)
        potential = np.maximum(potential, np.abs(np.asarray(fl["beyond"], dtype=np.float64)))
    ok &= np.isfinite(potential) & (potential <= LOG_RATIO_TAIL_POTENTIAL_SIGMAS * sigma)
    # 1. the pilots: the first replicas through the whole kernel
    pilots = np.flatnonzero(ok)
    tl_p = np.empty((0, k_pilot))
    n0_p = np.empty((0, k_pilot))
    if pilots.size:
        reps = draw_replicas(
            host[pilots], k_pilot, pixel_index=index[pilots], seed=seed, gain=gain,
            variance=None if var is None else var[pilots],
        ).astype(dtype, copy=False)  # fmt: skip
        res = inner(reps, e, **inner_kw)
        tl_p = np.asarray(res["t_over_lambda"], dtype=np.float64).reshape(-1, k_pilot)
        n0_p = np.asarray(res["zlp_intensity"], dtype=np.float64).reshape(-1, k_pilot)
        w_p = np.where(np.isfinite(reps), reps, 0.0).sum(axis=-1, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            part_p = np.log(np.asarray(res["total_intensity"], dtype=np.float64) / w_p)
        moved = np.abs(part_p.reshape(-1, k_pilot) - part_m[pilots, None])
        held = np.all(moved <= LOG_RATIO_TAIL_SPREAD_SIGMAS * sigma[pilots, None], axis=-1)
        held &= np.all(np.isfinite(tl_p) & np.isfinite(n0_p), axis=-1)
        ok[pilots[~held]] = False
        keep = held
        pilots, tl_p, n0_p = pilots[keep], tl_p[keep], n0_p[keep]
    # 2. the other replicas of the pixels whose tail is held: window, first minimum, N0
    k_fast = k - k_pilot
    if pilots.size:
        p_all = np.asarray(zz.centre["peak_index"], dtype=np.int64)[pilots]
        fwhm_ch = np.asarray(zz.centre["fwhm_eV"], dtype=np.float64)[pilots] / d
        # the first minimum is looked for from the peak + FWHM/2 on, on the spectrum smoothed
        # over +-k channels (k about FWHM/4: _first_minimum's; here a bound): the channels
        # below lo are read by N0's sum only
        k_safe = np.ceil(np.nan_to_num(fwhm_ch, nan=8.0) / 4.0).astype(np.int64) + 2
        lo_all = np.clip(p_all - k_safe, 0, n_e - 1)
        t_m = cut[pilots]
        # drawn one by one: up to well past the measured spectrum's minimum (each pixel its
        # own, so the draws do not depend on the block); a replica whose minimum lies beyond
        # gets the rest of its channels from their drawn sum
        reach = np.where(t_m < n_e, t_m - lo_all, 0)
        h1_all = np.clip(reach + 2 * k_safe + LOG_RATIO_NEAR_CHANNELS, 1, n_e - lo_all)
        extra = np.where(np.isfinite(total_m), total_m - window, 0.0)[pilots]
        tl_f = np.empty((pilots.size, k_fast))
        n0_f = np.empty((pilots.size, k_fast))
        # batches of pixels of bounded memory: a pixel whose measured spectrum has no minimum
        # draws its whole window one by one in every replica (its far channels from their sum)
        cost = k_fast * np.where(t_m < n_e, np.maximum(h1_all, n_e // 8), n_e)
        starts = [0]
        acc = 0
        for i, c_i in enumerate(cost.tolist()):
            if acc and acc + c_i > REPLICA_FAST_ELEMENTS:
                starts.append(i)
                acc = 0
            acc += c_i
        for a, b in zip(starts, [*starts[1:], pilots.size], strict=True):
            rows = pilots[a:b]
            sl = slice(a, b)
            x = np.where(np.isfinite(host[rows]), host[rows], 0.0).astype(np.float64)
            vr = None
            if var is not None:
                vr = np.clip(np.where(np.isfinite(var[rows]), var[rows], 0.0), 0.0, None)
            dr = _window_draws(
                x, vr, k_fast, lo_all[sl], h1_all[sl], index=index[rows], seed=seed,
                gain=gain, dtype=dtype,
            )  # fmt: skip
            lo_r = np.repeat(lo_all[sl], k_fast)
            p_r = np.repeat(p_all[sl], k_fast) - lo_r
            fw_r = np.repeat(fwhm_ch[sl], k_fast)
            every = np.ones(p_r.size, dtype=bool)
            t = _first_minimum(np, dr.near, p_r, fw_r, d, every)
            # found, with the smoothing of it and of every channel before it inside the
            # pixel's drawn channels: the whole spectrum's first minimum
            h_r = np.repeat(h1_all[sl], k_fast)
            sure = t <= h_r - np.repeat(k_safe[sl], k_fast) - 3
            csum = np.cumsum(dr.near, axis=-1, dtype=np.float64)
            at = np.clip(t - 1, 0, csum.shape[1] - 1)[:, None]
            below = np.take_along_axis(csum, at, axis=-1)[:, 0]
            n0_r = dr.low + np.where(t > 0, below, 0.0)
            redo = np.flatnonzero(~sure)
            if redo.size:
                full = _full_rows(dr, redo, k_fast, index=index[rows], seed=seed, gain=gain)
                t2 = _first_minimum(np, full.astype(dtype), p_r[redo], fw_r[redo], d, every[redo])
                cs2 = np.cumsum(full, axis=-1)
                at = np.clip(t2 - 1, 0, full.shape[1] - 1)[:, None]
                b2 = np.take_along_axis(cs2, at, axis=-1)[:, 0]
                t[redo] = np.where(t2 < full.shape[1], t2, n_e)
                n0_r[redo] = dr.low[redo] + np.where(t2 > 0, b2, 0.0)
            # no minimum (or one past the spectrum's last channel but one): N0 is the window
            n0_r = np.where(t + lo_r < n_e - 1, n0_r, dr.total)
            with np.errstate(divide="ignore", invalid="ignore"):
                tl_r = np.log((dr.total + np.repeat(extra[sl], k_fast)) / n0_r)
            # the kernel's rule: t/lambda below 0 within 3 sd is a vacuum pixel's 0
            sd_r = np.repeat(sd_tl[rows], k_fast)
            tl_r = np.where(tl_r < -3.0 * sd_r, tl_r, np.maximum(tl_r, 0.0))
            tl_f[sl] = tl_r.reshape(rows.size, k_fast)
            n0_f[sl] = n0_r.reshape(rows.size, k_fast)
        both = {"t_over_lambda": (tl_p, tl_f), "zlp_intensity": (n0_p, n0_f)}
        for t in targets:
            vals = np.concatenate(both[t], axis=-1).reshape(-1)
            out[t][pilots] = np.asarray(replica_moments(vals, k)[1])
    # 3. the rest: every replica through the whole kernel
    rest = np.flatnonzero(valid & ~ok)
    if rest.size:
        res = whole(rest)
        for t in targets:
            out[t][rest] = np.asarray(_to_host(res[t]), dtype=np.float64)
    return {t: xp.asarray(out[t]) for t in targets}


#: Replica values (pixels x replicas x drawn channels) per batch of the window-only replicas of
#: :func:`log_ratio_replica_sigmas` (float64 cumulative sums: 16 MiB).
REPLICA_FAST_ELEMENTS = 1 << 21


# ------------------------------------------------------------------ analytic KK (issue 14)
#: The KK outputs that get an analytic (linearised) sigma. The loss-peak energy is not among
#: them: it is the maximum channel of a noisy curve refined by a parabola, whose channel jumps
#: (replicas only).
KK_ANALYTIC_TARGETS = (
    "eps1",
    "eps2",
    "loss_function",
    "refractive_index",
    "thickness_nm",
    "plasmon_energy_eV",
)
#: The least electrons per channel (the SSD's mean over 5 channels around it, / gain) for a
#: channel's sigmas (eps1, eps2, Im[-1/eps], n there) to be returned: below it Im[-1/eps]'s
#: relative noise is too large for eq. 34's inverse to be linear and a channel's own variance
#: (its counts) too noisy (measured: sigma/scatter 1.16-1.28 at 1.5-3 electrons, 2.5 at 0.3;
#: 0.93-1.08 from 15 up); NaN there.
KK_MIN_CHANNEL_COUNTS = 10.0
#: The largest relative sigma of 1/eps, sqrt(var Re + var Im) / |1/eps|, at a channel for eq.
#: 34's inverse to be linear (measured: eps1, n honest to 0.2, 1.15-1.9 above); NaN above.
KK_MAX_INVERSE_REL_SIGMA = 0.2
#: The largest plasmon-energy sigma, in channels, for eps1's crossing to be linear in the data
#: (the 2-channel slope there then moves by less than about 30 %; measured: sigma/scatter
#: 0.95-1.04 up to 0.16 channel, 0.70-0.83 at 0.2-0.3, where replicas fail too); NaN above.
KK_MAX_PLASMON_SIGMA_CHANNELS = 0.2
#: Channels over which eps1's slope at the crossing is taken for that criterion.
KK_PLASMON_SLOPE_CHANNELS = 10


def _tail_shape_host(n_k: int, dispersion_eV: float) -> Any:
    import numpy as np

    from .dielectric import tail_re_inverse

    e = np.arange(n_k, dtype=np.float64) * dispersion_eV
    return tail_re_inverse(np, np.ones(1), e, (n_k - 0.5) * dispersion_eV)[0]


def kk_analytic_sigmas(
    block: Any,
    energy_eV: Any,
    values: Mapping[str, Any],
    targets: Sequence[str],
    *,
    gain: float = 1.0,
    variance: Any = None,
    **kw: Any,
) -> dict[str, Any]:
    """Linearised counting sigmas of a Kramers-Kronig block (kk-theory.md eqs. 26, 31-34).

    ``values`` are :func:`~.blocks_kk.kk_kernel`'s outputs of ``block`` (with ``eps1``,
    ``eps2``, ``loss_function`` and ``thickness_nm``) and ``kw`` its parameters and extras;
    without surface iterations (one pass: the linearisation through the Newton steps of eq. 36
    is not built). The channel variance is ``g max(x, 0)`` (or ``variance``), moved onto the
    loss grid as the SSD is. Then :func:`~.uncertainty.kk_inverse_eps_covariance` (Im and Re of
    1/eps), :func:`~.uncertainty.eps_covariance_from_inverse` (eq. 34),
    :func:`~.uncertainty.refractive_index_variance` (n + ik = sqrt(eps)); the thickness (eq. 26,
    t proportional to J) has ``sigma_t / t = sigma_J / J``; the plasmon energy (eps1's zero
    crossing, linear between channels k, k + 1) moves by ``dE = -(dE_ch / slope) ((1 - theta)
    d eps1_k + theta d eps1_k+1)`` (``slope`` eps1's rise per channel over
    :data:`KK_PLASMON_SLOPE_CHANNELS` channels: the 2-channel one is as noisy as the sigma), whose gradient over the SSD channels is built per pixel
    (two rows of the Hilbert kernel) and summed with the channel covariance of the grid
    interpolation. Where a linearisation is not honest, NaN: per-channel sigmas (Im[-1/eps],
    eps2, eps1, n) where the SSD holds fewer than :data:`KK_MIN_CHANNEL_COUNTS` electrons per
    channel around it or 1/eps moves by more than :data:`KK_MAX_INVERSE_REL_SIGMA` of itself;
    the plasmon energy's where its sigma exceeds :data:`KK_MAX_PLASMON_SIGMA_CHANNELS`
    channels (the 2-channel slope then moves by more than about 30 %). Returns
    ``<target>_sigma`` for ``targets`` (maps (n,), cubes (n, K - 1)).
    """
    import math

    from ._device_cache import cached
    from .blocks_kk import _kk_inputs
    from .loss_grid import DEFAULT_LOW_ENERGY_CUTOFF_EV, on_loss_grid
    from .sum_rule import sum_rule_integral_rows

    xp = array_namespace(block)
    names = (
        "zlp_intensity", "thickness_nm", "valid", "zlp_centre_eV", "cutoff_eV",
        "dispersion_eV", "grid", "beam_energy_keV", "collection_angle_mrad",
        "refractive_index", "metal", "iterations", "low_energy_cutoff_eV", "nonnegative",
    )  # fmt: skip
    args = {n: kw.get(n) for n in names}
    args["metal"] = bool(args["metal"])
    args["iterations"] = 0
    args["nonnegative"] = bool(True if args["nonnegative"] is None else args["nonnegative"])
    if args["low_energy_cutoff_eV"] is None:
        args["low_energy_cutoff_eV"] = DEFAULT_LOW_ENERGY_CUTOFF_EV
    inputs = _kk_inputs(block, energy_eV, **args)
    setup, s0 = inputs.setup, inputs.s0
    var_in = gain * xp.clip(block, 0.0, None) if variance is None else variance
    if args["zlp_centre_eV"] is None:  # the variance moved onto the loss grid as the SSD is
        v = on_loss_grid(xp, var_in, setup.grid)
        v = xp.where(xp.isfinite(v), v, 0.0)  # unusable pixels (NaN in the SSD) give NaN
    else:
        v = _kk_inputs(var_in, energy_eV, **{**args, "valid": None}).s0
    grid, kc, kf = setup.grid, setup.kc, setup.kf
    n_k, de = grid.n, grid.dispersion_eV
    w8 = setup.weights
    dtype = s0.dtype
    pos = s0 > 0 if setup.nonnegative else xp.ones_like(s0, dtype=xp.bool)
    s_plus = xp.clip(s0, 0.0, None) if setup.nonnegative else s0
    parts = sum_rule_integral_rows(
        xp, s_plus, setup.e, setup.ang, grid, kc, kf, weights=w8, cut=setup.cut
    )
    j = parts.integral
    j_ok = xp.isfinite(j) & (j > 0)
    j_safe = xp.where(j_ok, j, 1.0)
    k = xp.arange(n_k)
    low = setup.low if setup.low is not None else k < kc
    low2 = low if low.ndim == 2 else low[None, :]
    if isinstance(kc, int):
        in_fit = (k >= kc) & (k < kf)
        width = float(kf - kc)
        low_width: Any = (kc - 0.5) * de
    else:
        in_fit = (k[None, :] >= kc[:, None]) & (k[None, :] < kf[:, None])
        width = xp.astype(kf - kc, dtype)[:, None]
        low_width = ((xp.astype(kc, dtype) - 0.5) * de)[:, None]
    d = xp.where(~low2 & pos, w8.inv, 0.0)
    u = xp.where(in_fit & pos, w8.w_e / width, 0.0)
    kt = w8.tail_start
    tail_full = xp.concat([xp.zeros((kt,), dtype=dtype), w8.tail])
    a = xp.where(pos & (parts.tail_coefficient > 0)[:, None], tail_full, 0.0)
    w = xp.where(~low2 & pos, de * w8.w_e, 0.0) + low_width * u + w8.tail_integral * a
    ramp = xp.where(low2, setup.e, 0.0)
    t_shape = cached(
        xp,
        ("unc-kk-tail", n_k, float(de), str(dtype)),
        lambda: xp.asarray(_tail_shape_host(n_k, de), dtype=dtype),
    )
    normalised = setup.thickness_nm is None
    if normalised:
        kappa = (math.pi * setup.one_minus / 2.0) / j_safe
    else:
        from .dielectric import loss_prefactor_nm_eV

        t_given = xp.where(xp.isfinite(setup.thickness_nm), setup.thickness_nm, 1.0)
        kappa = loss_prefactor_nm_eV(setup.beam_energy_keV) / (setup.n0_safe * t_given)
    kap = kappa[:, None]
    out: dict[str, Any] = {}
    want = set(targets)
    re_out = loss_out = None  # 1/eps as cubes: only the cubes' sigmas need them whole
    if want - {"thickness_nm"}:
        e1, e2 = values["eps1"], values["eps2"]
    if want & {"eps1", "eps2", "loss_function", "refractive_index"}:
        mod2 = e1 * e1 + e2 * e2
        re_out, loss_out = e1 / mod2, e2 / mod2
    frac = float(grid.frac)
    f_diag = (1.0 - frac) ** 2 + frac**2 if kw.get("zlp_centre_eV") is None else 1.0
    cube_targets = want & {"eps1", "eps2", "loss_function", "refractive_index"}
    if not cube_targets:  # maps only: var(J) is one sum (the cubes' FFTs are not needed)
        var_j = xp.sum(w * w * v, axis=-1)
    else:
        out.update(
            _cube_sigmas(
                xp, v, d, u, a, w, ramp, t_shape, kap, kappa, j_safe, normalised,
                f_diag, kc, kf, kt, n_k, s0, gain, variance, re_out, loss_out, e1, e2,
                cube_targets,
            )
        )  # fmt: skip
        var_j = out.pop("_var_j")
    if "thickness_nm" in want:
        t = values["thickness_nm"]
        out["thickness_nm"] = xp.abs(t) * xp.sqrt(var_j) / j_safe if normalised else 0.0 * t
    if "plasmon_energy_eV" in want:
        out["plasmon_energy_eV"] = _plasmon_sigma(
            xp, values, e1, e2, re_out, loss_out, low2, kap, j_safe, normalised,
            d, u, a, w, ramp, t_shape, v, f_diag, frac, de,
        )  # fmt: skip
    return {f"{name}_sigma": val for name, val in out.items()}


def _cube_sigmas(xp, v, d, u, a, w, ramp, t_shape, kap, kappa, j_safe,
                 normalised, f_diag, kc, kf, kt, n_k, s0, gain, variance, re_out, loss_out,
                 e1, e2, want):  # fmt: skip
    """The per-channel sigmas of :func:`kk_analytic_sigmas` (``want`` among eps1, eps2,
    loss_function, refractive_index), and var(J) as ``_var_j``."""
    import math

    from .optics import refractive_index_nk
    from .uncertainty import (
        eps_covariance_from_inverse,
        kk_inverse_eps_covariance,
        refractive_index_variance,
    )

    dtype = s0.dtype
    col0 = xp.zeros((s0.shape[0], 1), dtype=dtype)
    loss_g = xp.concat([col0, loss_out], axis=-1)
    re_g = xp.concat([col0 + 1.0, re_out], axis=-1)
    var_l, var_r, cov_lr, var_j = kk_inverse_eps_covariance(
        v,
        d=d,
        u=u,
        a=a,
        w=w,
        ramp=ramp,
        tail_shape=t_shape,
        loss_scaled=loss_g / kap,
        hilbert_scaled=(1.0 - re_g) / kap,
        integral=j_safe,
        kappa=kappa,
        normalised=normalised,
        diagonal_factor=f_diag,
        u_support=(kc, kf) if isinstance(kc, int) else None,
        a_support=(kt, n_k),
    )
    sl = slice(1, n_k)
    var_l, var_r, cov_lr = var_l[:, sl], var_r[:, sl], cov_lr[:, sl]
    # a channel's sigmas are a linearisation only where it holds enough electrons (the mean of
    # 5 channels around it: its own count would select on the noise) and 1/eps moves little
    pad = xp.zeros((s0.shape[0], 2), dtype=dtype)
    padded = xp.concat([pad, xp.clip(s0, 0.0, None), pad], axis=-1)
    local = sum(padded[:, i : i + n_k] for i in range(5)) / 5.0
    local = local[:, sl]
    if variance is None:
        electrons = local / gain
    else:  # a measured variance: the electrons a Poisson channel of that noise would hold
        vloc = sum(xp.concat([pad, v, pad], axis=-1)[:, i : i + n_k] for i in range(5))[:, sl]
        electrons = local * local / xp.where(vloc > 0, vloc / 5.0, math.inf)
    rel_w = xp.sqrt(var_l + var_r) / xp.sqrt(re_out * re_out + loss_out * loss_out)
    honest = (electrons >= KK_MIN_CHANNEL_COUNTS) & (rel_w <= KK_MAX_INVERSE_REL_SIGMA)
    out: dict[str, Any] = {"_var_j": var_j}
    ve1, ve2, c12 = eps_covariance_from_inverse(
        re_out, loss_out, var_r, var_l, cov_lr, covariance="refractive_index" in want
    )
    if "loss_function" in want:
        out["loss_function"] = xp.where(honest, xp.sqrt(var_l), math.nan)
    if "eps1" in want:
        out["eps1"] = xp.where(honest, xp.sqrt(xp.clip(ve1, 0.0, None)), math.nan)
    if "eps2" in want:
        out["eps2"] = xp.where(honest, xp.sqrt(xp.clip(ve2, 0.0, None)), math.nan)
    if "refractive_index" in want:
        n_e, k_e = refractive_index_nk(e1, e2)
        vn = refractive_index_variance(n_e, k_e, ve1, ve2, c12)
        out["refractive_index"] = xp.where(honest, xp.sqrt(xp.clip(vn, 0.0, None)), math.nan)
    return out


#: The largest loss grid (channels) whose transposed Hilbert kernel :func:`_plasmon_sigma` keeps
#: as a (K, K) table (4 MiB in float32 at this size); above it, one FFT pair per block.
PLASMON_ROW_TABLE_MAX_CHANNELS = 1024


def _transposed_rows_host(n_k: int) -> Any:
    """Rows m of eq. 32's kernel transposed, t[m, j] = g(j - m) + g(j + m), (K, K) (host)."""
    import numpy as np

    from .uncertainty import _odd_offsets_power

    j = np.arange(n_k)[None, :]
    m = np.arange(n_k)[:, None]
    return _odd_offsets_power(j - m, 1) + _odd_offsets_power(j + m, 1)


def _plasmon_sigma(xp, values, e1, e2, re_out, loss_out, low2, kap, j, normalised,
                   d, u, a, w, ramp, t_shape, v, f_diag, frac, de):  # fmt: skip
    """sigma of eps1's upward zero crossing (see :func:`kk_analytic_sigmas`): its gradient over
    the SSD channels, b_j, summed as sum b^2 f v + 2 f'(1 - f') sum b_j b_j+1 v_j (the grid
    interpolation's neighbour covariance)."""
    import math

    from ._device_cache import cached
    from .uncertainty import odd_hilbert, odd_hilbert_transposed

    n_pix, n_out = e1.shape
    n_k = n_out + 1
    ep = values["plasmon_energy_eV"]
    has = xp.isfinite(ep)
    # the crossing's channel on the output grid (E_k = (k + 1) dE): floor((ep - dE) / dE)
    i_out = xp.astype(xp.clip(xp.floor(xp.where(has, ep, de) / de - 1.0), 0, n_out - 2), xp.int64)
    idx = xp.stack([i_out, i_out + 1], axis=-1)
    e1p = xp.take_along_axis(e1, idx, axis=-1)
    delta = e1p[:, 1] - e1p[:, 0]
    ok = has & (delta > 0)
    delta = xp.where(ok, delta, 1.0)
    theta = -e1p[:, 0] / delta
    if re_out is None:  # 1/eps at the two channels only (the same expression as the cubes')
        e2p = xp.take_along_axis(e2, idx, axis=-1)
        mod2p = e1p * e1p + e2p * e2p
        rp, lp = e1p / mod2p, e2p / mod2p
    else:
        rp = xp.take_along_axis(re_out, idx, axis=-1)
        lp = xp.take_along_axis(loss_out, idx, axis=-1)
    dd = rp * rp + lp * lp
    big_a = (lp * lp - rp * rp) / (dd * dd)
    big_b = -2.0 * rp * lp / (dd * dd)
    # eps1's slope over KK_PLASMON_SLOPE_CHANNELS channels around the crossing: the slope of
    # the crossing's own 2 channels is as noisy as the sigma it scales (and selecting pixels on
    # a noisy sigma would keep the low ones); the same slope to first order
    half = KK_PLASMON_SLOPE_CHANNELS // 2
    wide = xp.stack(
        [xp.clip(i_out - half + 1, 0, n_out - 1), xp.clip(i_out + half, 0, n_out - 1)], axis=-1
    )
    e1w = xp.take_along_axis(e1, wide, axis=-1)
    slope = (e1w[:, 1] - e1w[:, 0]) / xp.astype(wide[:, 1] - wide[:, 0], e1.dtype)
    ok = ok & (slope > 0)
    slope = xp.where(ok, slope, 1.0)
    coef = xp.stack([1.0 - theta, theta], axis=-1) * (-de / slope)[:, None]
    m_grid = idx + 1  # grid channels of the two output channels
    # d E / d s = d (.) sum_c alpha_c h_c + g_u u + g_a a + g_w w + sum_c beta_c d delta_{m_c}:
    # alpha the weights of the two channels' Hilbert rows h_c (Re[1/eps]), beta of their own
    # channel (Im[-1/eps]), the rank-one parts collected (see kk_inverse_eps_covariance)
    alpha = -coef * kap * big_a
    beta = coef * kap * big_b
    q = odd_hilbert(ramp if ramp.ndim == 2 else ramp[None, :])
    q_m = xp.take_along_axis(xp.broadcast_to(q, (n_pix, n_k)), m_grid, axis=-1)
    t_m = xp.reshape(xp.take(t_shape, xp.reshape(m_grid, (-1,))), (n_pix, 2))
    g_u = xp.sum(alpha * q_m, axis=-1)[:, None]
    g_a = xp.sum(alpha * t_m, axis=-1)[:, None]
    b = g_u * u + g_a * a
    if normalised:
        rs, ls = (1.0 - rp) / kap, lp / kap  # R and L at the two channels
        b = b - (xp.sum(alpha * rs + beta * ls, axis=-1) / j)[:, None] * w
    # the two Hilbert rows, g(j - m) + g(j + m), gathered from one table of g(o), o in [-K, 2K)
    # sum_c alpha_c (g(j - m_c) + g(j + m_c)): the transposed Hilbert kernel applied to the
    # two spikes alpha_c at m_c; g odd makes it Hr - Hc of the spikes (see odd_hilbert), one
    # FFT pair for the block instead of four gathers of (n, K) index arrays
    jj = xp.arange(n_k)
    on0, on1 = jj[None, :] == m_grid[:, 0:1], jj[None, :] == m_grid[:, 1:2]
    own = xp.where(on0, beta[:, 0:1], 0.0) + xp.where(on1, beta[:, 1:2], 0.0)
    if n_k <= PLASMON_ROW_TABLE_MAX_CHANNELS:
        # up to this grid, the rows come whole from a cached (K, K) table (two row gathers,
        # exact kernel values) rather than an FFT pair
        tab = cached(
            xp,
            ("unc-hilbert-t", n_k, str(e1.dtype)),
            lambda: xp.asarray(_transposed_rows_host(n_k), dtype=e1.dtype),
        )
        hc = alpha[:, 0:1] * xp.take(tab, m_grid[:, 0], axis=0)
        hc = hc + alpha[:, 1:2] * xp.take(tab, m_grid[:, 1], axis=0)
    else:
        spikes = xp.where(on0, alpha[:, 0:1], 0.0) + xp.where(on1, alpha[:, 1:2], 0.0)
        hc = odd_hilbert_transposed(spikes)
    b = b + d * (hc + own)
    var = xp.sum(b * b * v, axis=-1) * f_diag
    if frac > 0.0:  # the grid interpolation's neighbour covariance (0 on a whole-channel grid)
        nb = xp.sum(b[:, :-1] * b[:, 1:] * v[:, :-1], axis=-1)
        var = var + 2.0 * frac * (1.0 - frac) * nb
    sigma = xp.sqrt(xp.clip(var, 0.0, None))
    ok = ok & (sigma <= KK_MAX_PLASMON_SIGMA_CHANNELS * de)
    return xp.where(ok, sigma, math.nan)


def kk_with_analytic(decl: BlockKernel, targets: Sequence[str]) -> BlockKernel:
    """``decl`` (:func:`~.blocks_kk.kk_declaration`) with ``<target>_sigma`` outputs from
    :func:`kk_analytic_sigmas` (attrs ``sigma_of``, ``part="counting"``,
    ``uncertainty="analytic"``). The kernel takes ``gain`` and the extra ``variance`` beside
    the KK kernel's own parameters; it asks the KK kernel for eps1, eps2, the loss function and
    the thickness whatever ``variables`` says, and returns what was asked."""
    targets = tuple(targets)
    inner = decl.kernel
    # what the sigmas read: eps (Re and Im of 1/eps) for the cubes and the plasmon energy
    need = ("thickness_nm",) + tuple(t for t in targets if t == "plasmon_energy_eV")
    if set(targets) - {"thickness_nm"}:
        need += ("eps1", "eps2")

    def kernel(
        block: Any,
        energy_eV: Any,
        *,
        gain: float = 1.0,
        variance: Any = None,
        uncertainty: str | None = "analytic",
        n_replicas: Any = None,
        seed: Any = None,
        **kw: Any,
    ) -> dict[str, Any]:
        from .blocks_kk import DEFAULT_VARIABLES

        asked = tuple(kw.get("variables") or DEFAULT_VARIABLES)
        extra = tuple(n for n in need if n not in asked)
        values = dict(inner(block, energy_eV, **{**kw, "variables": asked + extra}))
        sig = kk_analytic_sigmas(
            block, energy_eV, values, targets, gain=float(gain), variance=variance, **kw
        )
        out = {n: values[n] for n in asked}
        out.update(sig)
        return out

    kernel.__name__ = f"{decl.label}_with_analytic"

    def outputs(params: Mapping[str, Any]) -> tuple[Output, ...]:
        inner_params = {k: v for k, v in params.items() if k not in _OWN}
        base = decl.outputs_for(inner_params)
        by_name = {o.name: o for o in base}
        extra = [
            replace(
                by_name[t],
                name=f"{t}_sigma",
                long_name=f"sigma of {by_name[t].long_name or t} (counting, linearised)",
                dtype="float",
                attrs={"sigma_of": t, "part": "counting", "uncertainty": "analytic"},
            )
            for t in targets
        ]
        return (*base, *extra)

    return BlockKernel(
        kernel,
        outputs=outputs,
        tile_pixels=decl.tile_pixels,
        extras=(*decl.extras, "variance"),
        name=f"{decl.label}_with_analytic",
        peak_bytes_per_spectrum=decl.peak_bytes_per_spectrum,
        min_block_pixels=decl.min_block_pixels,
    )
