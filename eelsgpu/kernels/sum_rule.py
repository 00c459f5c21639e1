"""The Kramers-Kronig sum rule: absolute thickness from the SSD (kk-theory.md eqs. 26-29).

    t = 4 a0 F E0 / (N0 (1 - Re[1/eps(0)])) int_0^inf I_SSD(E) / (E ln(1 + beta^2/theta_E^2)) dE

(eq. 26; Egerton 2011, section 4.2), with Re[1/eps(0)] = 1/n^2 for an insulator or semiconductor
of refractive index n and 0 for a metal (eq. 28); eq. 29 writes the same with a constant
A = 4 a0 F E0 / (1 - Re[1/eps(0)]) calibrated on a region of known thickness, and eq. 26 read
backwards gives n from a known thickness.

* :func:`angular_factor`: ln(1 + beta^2/theta_E^2) on the loss grid (eqs. 26, 29, 31);
* :func:`sum_rule_normalisation`: 1 - Re[1/eps(0)] (eq. 28);
* :func:`sum_rule_prefactor_nm_eV`: 4 a0 F E0 = 4 a0 T (eq. 26), nm eV;
* :func:`sum_rule_integral_rows`: the integral of eqs. 26/29 (and of the sum rule eq. 33), with
  the low-energy and A/E^3 extrapolations of :mod:`eelsgpu.kernels.loss_grid`, as matrix-vector
  products on the SSD rows (one pass each);
* :func:`thickness_from_integral_nm`: eq. 26 itself, the one place it is evaluated (the sum-rule
  thickness and the Kramers-Kronig pass of :mod:`eelsgpu.kernels.dielectric` both call it);
* :func:`sum_rule_thickness_nm` (eq. 26 from an SSD), :func:`kk_sum_rule_integral` (the integral
  of eq. 29 per N0), :func:`refractive_index_from_thickness` (eq. 26 inverted).

Units: SSD in counts per channel, energies in eV, E0 in keV, beta in mrad, thickness in nm.

Examples
--------
>>> import numpy as np
>>> from eelsgpu import synthetic
>>> sim = synthetic.low_loss_spectrum(synthetic.Drude(15.0, 1.0), t_over_lambda=0.5,
...     beam_energy_keV=300.0, collection_angle_mrad=10.0, dtype=np.float64)
>>> ssd = sim["true_ssd"].values[None, :]
>>> t = sum_rule_thickness_nm(ssd, sim["energy"].values,
...     np.array([float(sim["true_zlp_intensity"])]),
...     beam_energy_keV=300.0, collection_angle_mrad=10.0, metal=True)
>>> bool(abs(t[0] / float(sim["true_t_nm"]) - 1) < 0.01)
True
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .. import physics
from .._xp import array_namespace
from ..errors import InputError, MissingParameterError
from .loss_grid import (
    DEFAULT_LOW_ENERGY_CUTOFF_EV,
    LossGrid,
    cutoff_index,
    loss_grid,
    on_loss_grid,
    tail_start,
)

__all__ = [
    "LossGridSSD",
    "SumRuleParts",
    "angular_factor",
    "kk_sum_rule_integral",
    "CutoffChannels",
    "SumRuleWeights",
    "cutoff_channels",
    "refractive_index_from_thickness",
    "ssd_on_loss_grid",
    "sum_rule_integral_rows",
    "sum_rule_weights",
    "sum_rule_normalisation",
    "sum_rule_prefactor_nm_eV",
    "sum_rule_thickness_nm",
    "thickness_from_integral_nm",
]


def angular_factor(xp: Any, e: Any, beam_energy_keV: float, collection_angle_mrad: float) -> Any:
    """ln(1 + (beta/theta_E)^2) on the loss grid (eqs. 26, 29, 31); 1 at E <= 0 (unused there).

    Parameters
    ----------
    e : array
        Energy loss E in eV.
    beam_energy_keV, collection_angle_mrad : float
        E0 (keV; theta_E of eq. 27, relativistic) and the collection semi-angle beta (mrad).

    Returns
    -------
    array
        Dimensionless, the shape and namespace of ``e``.
    """
    positive = e > 0
    e_safe = xp.where(positive, e, xp.ones_like(e))
    theta = physics.characteristic_angle_mrad(e_safe, beam_energy_keV)
    ang = xp.log(1.0 + (float(collection_angle_mrad) / theta) ** 2)
    return xp.where(positive, ang, xp.ones_like(ang))


def sum_rule_normalisation(refractive_index: float | None = None, metal: bool = False) -> float:
    """1 - Re[1/eps(0)] from the static refractive index n (eq. 28: Re[1/eps(0)] = 1/n^2) or a
    metal (Re[1/eps(0)] = 0); dimensionless.

    Raises
    ------
    ValueError
        Both n and ``metal`` given.
    MissingParameterError
        Neither.
    InputError
        n below 1 or NaN.

    Examples
    --------
    >>> sum_rule_normalisation(2.0), sum_rule_normalisation(metal=True)
    (0.75, 1.0)
    """
    if metal:
        if refractive_index is not None:
            raise ValueError("give either refractive_index or metal=True, not both")
        return 1.0
    if refractive_index is None:
        raise MissingParameterError(
            "the Kramers-Kronig sum rule needs refractive_index=n (insulator or semiconductor), "
            "metal=True, or a known thickness"
        )
    n = float(refractive_index)
    if math.isnan(n) or n < 1.0:
        raise InputError(f"refractive_index must be >= 1 (n^2 = eps(0) >= 1), not {n!r}")
    if math.isinf(n):
        return 1.0
    return 1.0 - 1.0 / n**2


def sum_rule_prefactor_nm_eV(beam_energy_keV: float) -> float:
    """4 a0 F E0 of eq. 26, with E0 in eV: nm eV (= 4 a0 T, T = m0 v^2/2 the kinetic energy).

    A of eq. 29 is this over 1 - Re[1/eps(0)] (:func:`sum_rule_normalisation`).

    Examples
    --------
    >>> round(sum_rule_prefactor_nm_eV(200.0), 1)  # 4 x 0.0529 nm x 123.5e3 eV
    26146.5
    """
    return 4.0 * physics.BOHR_RADIUS_NM * physics.kinetic_energy_T_keV(beam_energy_keV) * 1e3


def thickness_from_integral_nm(
    integral: Any, zlp_intensity: Any, one_minus: float, beam_energy_keV: float
) -> Any:
    """Eq. 26: t = 4 a0 F E0 J / (N0 (1 - Re[1/eps(0)])), nm.

    ``integral`` J (n,) is the sum-rule integral per count of SSD (1/eV;
    :func:`sum_rule_integral_rows`), ``zlp_intensity`` N0 (n,) in counts, ``one_minus``
    1 - Re[1/eps(0)] (:func:`sum_rule_normalisation`), E0 in keV. The one place eq. 26 is
    evaluated: the sum-rule thickness and the Kramers-Kronig pass both call it.

    Examples
    --------
    >>> import numpy as np
    >>> t = thickness_from_integral_nm(np.array([1e-3]), np.array([1.0]), 1.0, 200.0)
    >>> round(float(t[0]), 3)  # 4 a0 T x 1e-3 / 1
    26.147
    """
    return integral * (sum_rule_prefactor_nm_eV(beam_energy_keV) / one_minus) / zlp_intensity


class LossGridSSD(NamedTuple):
    """An SSD block on the loss grid with what the sum rule and the KK pass need beside it:
    the namespace, the grid, the low-energy channels ``kc`` (extrapolated below) and ``kf`` (the
    fit of c over [kc, kf)), the rows ``s`` (n, K) in counts per channel, the grid energies ``e``
    (K,) in eV, the angular factor ``ang`` (K,) and all the per-channel vectors of the sum
    rule, ``weights`` (:class:`SumRuleWeights`)."""

    xp: Any
    grid: LossGrid
    kc: int
    kf: int
    s: Any
    e: Any
    ang: Any
    weights: Any


class SumRuleWeights(NamedTuple):
    """The per-channel vectors of the sum rule on one loss grid (:func:`sum_rule_weights`):
    ``e`` (K,) E_k = k dE in eV, ``ang`` (K,) the angular factor of eq. 31, ``inv`` (K,)
    1/(dE ang) (SSD counts per channel to f, 1/eV), ``w_e`` (K,) inv/E (inv at E = 0: never
    used there), ``tail`` (K - kt,) the least-squares weights of the A/E^3 fit over the tail
    channels k >= kt (A = s[kt:] . tail), ``tail_start`` kt and ``tail_integral`` 1/(3 E_m^3)
    (eV^-3, E_m = (K - 1/2) dE: the A/E^3 tail's share of J per unit A)."""

    e: Any
    ang: Any
    inv: Any
    w_e: Any
    tail: Any
    tail_start: int
    tail_integral: float


def _weights_host(
    grid: LossGrid, beam_energy_keV: float, collection_angle_mrad: float
) -> tuple[np.ndarray, ...]:
    """:class:`SumRuleWeights`' vectors in float64 on the host."""
    de = grid.dispersion_eV
    e = np.arange(grid.n, dtype=np.float64) * de
    ang = angular_factor(np, e, beam_energy_keV, collection_angle_mrad)
    inv = 1.0 / (de * ang)
    e_safe = np.where(e > 0, e, 1.0)
    w_e = inv / e_safe
    kt = tail_start(grid.n)
    w3 = e_safe[kt:] ** -3.0
    tail = inv[kt:] * w3 / np.sum(w3 * w3)
    return e, ang, inv, w_e, tail


def sum_rule_weights(
    xp: Any, grid: LossGrid, beam_energy_keV: float, collection_angle_mrad: float, dtype: Any
) -> SumRuleWeights:
    """The sum rule's per-channel vectors (:class:`SumRuleWeights`) for ``grid``, E0 (keV) and
    beta (mrad), in ``dtype`` on ``xp``'s device.

    They depend on the grid and the microscope only, so they are computed once on the host in
    float64 (eq. 27's theta_E, the angular factor of eq. 31, the A/E^3 fit's normal equation)
    and kept on the device (:func:`~._device_cache.cached`): a block then pays no launches for
    them, and they are exact to the dtype's rounding.
    """
    from ._device_cache import cached

    key = (
        "sum-rule-weights",
        grid,
        float(beam_energy_keV),
        float(collection_angle_mrad),
        str(dtype),
    )

    def make():
        return tuple(
            xp.asarray(v, dtype=dtype)
            for v in _weights_host(grid, beam_energy_keV, collection_angle_mrad)
        )

    e, ang, inv, w_e, tail = cached(xp, key, make)
    e_m = (grid.n - 0.5) * grid.dispersion_eV
    return SumRuleWeights(e, ang, inv, w_e, tail, tail_start(grid.n), 1.0 / (3.0 * e_m**3))


class CutoffChannels(NamedTuple):
    """Each pixel's low-energy channels, prepared once per block for :func:`sum_rule_integral_rows`
    (:func:`cutoff_channels`): ``kc`` and ``kf`` (n,) integer, ``at`` (n, 2) the prefix-sum
    indices kc - 1 and kf - 1, ``inv_width`` (n,) 1/(kf - kc) and ``low_width_eV`` (n,)
    (kc - 1/2) dE, the width the low-energy extrapolation c E covers in J (eV)."""

    kc: Any
    kf: Any
    at: Any
    inv_width: Any
    low_width_eV: Any


def cutoff_channels(xp: Any, kc: Any, kf: Any, grid: LossGrid, dtype: Any) -> CutoffChannels:
    """:class:`CutoffChannels` of per-pixel ``kc`` and ``kf`` (integer arrays (n,), 1 <= kc,
    kf <= K // 2)."""
    half = min(grid.n, grid.n // 2 + 1)
    at = xp.clip(xp.stack([kc, kf], axis=-1) - 1, 0, half - 1)
    inv_width = 1.0 / xp.astype(kf - kc, dtype)
    low = (xp.astype(kc, dtype) - 0.5) * grid.dispersion_eV
    return CutoffChannels(kc, kf, at, inv_width, low)


def ssd_on_loss_grid(
    block: Any,
    energy_eV: Any,
    *,
    beam_energy_keV: float,
    collection_angle_mrad: float,
    low_energy_cutoff_eV: float,
    grid: LossGrid | None = None,
) -> LossGridSSD:
    """The SSD rows ``block`` (n, n_E; counts per channel on ``energy_eV``, eV) on the loss grid
    E_k = k dE, with the cut-off channels and the angular factor of eq. 31 (see
    :mod:`eelsgpu.kernels.loss_grid`). ``grid`` (the :func:`~.loss_grid.loss_grid` of the same
    axis, made on the host) spares reading the axis from the device (two host syncs on a GPU).

    Raises
    ------
    EnergyAxisError
        The axis does not reach 1 eV of loss, starts far above 0 eV, or the cut-off is too high
        for it.
    """
    xp = array_namespace(block)
    if grid is None:
        grid = loss_grid(energy_eV)
    kc, kf = cutoff_index(grid, low_energy_cutoff_eV)
    s = on_loss_grid(xp, block, grid)
    w = sum_rule_weights(xp, grid, beam_energy_keV, collection_angle_mrad, s.dtype)
    return LossGridSSD(xp, grid, kc, kf, s, w.e, w.ang, w)


class SumRuleParts(NamedTuple):
    """What :func:`sum_rule_integral_rows` returns, all per pixel (n,) except ``weight``:
    ``integral`` J (1/eV per count of SSD), ``low_slope`` c (f ~ c E below E_c),
    ``tail_coefficient`` A (f ~ A/E^3 beyond the window), and ``weight`` (K,) the per-channel
    factor 1/(dE ln(1 + beta^2/theta_E^2)) that turns the SSD into f (eq. 31, 1/eV)."""

    integral: Any
    low_slope: Any
    tail_coefficient: Any
    weight: Any


def sum_rule_integral_rows(
    xp: Any,
    s: Any,
    e: Any,
    ang: Any,
    grid: LossGrid,
    kc: Any,
    kf: Any,
    *,
    weights: SumRuleWeights | None = None,
    cut: CutoffChannels | None = None,
) -> SumRuleParts:
    """The sum-rule integral of SSD rows ``s`` (n, K) as matrix-vector products on ``s`` itself.

    f = s / (dE ln(1 + beta^2/theta_E^2)) is proportional to Im[-1/eps] (eq. 31); the reductions
    are one pass each over ``s`` (no temporaries), the same sums as
    replacing f below E_c by c E (c the mean of f/E over [E_c, 2 E_c)) and continuing it as A/E^3
    beyond the window (A by least squares over its last :data:`TAIL_FRACTION`; clamped >= 0):
    J = int_0^inf f/E dE = channels >= 1, half channel 0, plus A/(3 E_m^3). ``e`` (K,) is the
    grid in eV, ``ang`` (K,) :func:`angular_factor`; ``weights`` (:func:`sum_rule_weights` of
    the same grid) replaces both and spares recomputing the per-channel vectors.

    ``kc`` and ``kf`` are channel numbers shared by the block (ints), or one per pixel (integer
    arrays (n,), a cut-off that follows each pixel's ZLP width, with kf <= K // 2); then the
    low-energy sums are prefix sums over the first half of the grid, gathered per pixel at
    ``cut`` (:func:`cutoff_channels`, made once per block) or at indices made here.
    """
    de = grid.dispersion_eV
    if weights is None:
        inv = 1.0 / (de * ang)
        e_safe = xp.where(e > 0, e, xp.ones_like(e))
        w_e = inv / e_safe
        kt = tail_start(grid.n)
        w3 = e_safe[kt:] ** (-3)
        tail = (inv[kt:] * w3) / xp.sum(w3 * w3)
        e_m = (grid.n - 0.5) * de
        tail_integral = 1.0 / (3.0 * e_m**3)
    else:
        inv, w_e, tail = weights.inv, weights.w_e, weights.tail
        kt, tail_integral = weights.tail_start, weights.tail_integral
    a_tail = xp.clip(s[:, kt:] @ tail, 0.0, None)
    if isinstance(kc, int):
        c = (s[:, kc:kf] @ w_e[kc:kf]) * (1.0 / (kf - kc))
        above = s[:, kc:] @ w_e[kc:]
        low_width: Any = (kc - 0.5) * de
    else:
        # per-pixel channels: prefix sums of s w_e over the first half of the grid (every kf is
        # at most n // 2) gathered at kc - 1 and kf - 1 in one take, and the whole row as one
        # matvec
        if cut is None:
            cut = cutoff_channels(xp, kc, kf, grid, s.dtype)
        half = min(grid.n, grid.n // 2 + 1)
        prefix = xp.cumulative_sum(s[:, :half] * w_e[:half], axis=-1)
        ends = xp.take_along_axis(prefix, cut.at, axis=-1)
        below_c = ends[:, 0]
        c = (ends[:, 1] - below_c) * cut.inv_width
        above = s @ w_e - below_c
        low_width = cut.low_width_eV
    j = above * de + c * low_width + a_tail * tail_integral
    return SumRuleParts(j, c, a_tail, inv)


def sum_rule_thickness_nm(
    ssd,
    energy_eV,
    zlp_intensity,
    *,
    beam_energy_keV: float,
    collection_angle_mrad: float,
    refractive_index: float | None = None,
    metal: bool = False,
    low_energy_cutoff_eV: float = DEFAULT_LOW_ENERGY_CUTOFF_EV,
):
    """Absolute thickness (nm) from the Kramers-Kronig sum rule (kk-theory.md eq. 26).

    t = 4 a0 F E0 / (N0 (1 - Re[1/eps(0)])) integral_0^inf I_SSD(E) / (E ln(1 + beta^2/theta_E^2)) dE

    with F and theta_E of eq. 27 (relativistic), Re[1/eps(0)] = 1/n^2 (eq. 28) or 0 for a metal.
    The integrand below ``low_energy_cutoff_eV`` is replaced by its small-E form (Im[-1/eps]
    linear in E, fitted over [E_c, 2 E_c) per pixel) so the zero-loss residue of deconvolved data
    is not amplified by 1/E; above the window the SSD is continued as A/E^3
    (:mod:`eelsgpu.kernels.loss_grid`). Array-API kernel: any namespace, no data-dependent shapes.

    Parameters
    ----------
    ssd : array (n, n_E)
        Single-scattering distribution, counts per channel, on a uniform loss axis
        ``energy_eV`` (eV) that holds 0 eV (or starts within 10 channels of it).
    energy_eV : array (n_E,)
        Energy loss in eV.
    zlp_intensity : array (n,)
        N0, the zero-loss intensity (counts) of each spectrum.
    beam_energy_keV, collection_angle_mrad : float
        E0 (keV) and the collection semi-angle beta (mrad).
    refractive_index : float, optional
        Static refractive index n >= 1 of an insulator or semiconductor.
    metal : bool
        Metal or semi-metal: Re[1/eps(0)] = 0.
    low_energy_cutoff_eV : float
        E_c in eV (0 switches the low-energy treatment off).

    Returns
    -------
    array (n,)
        Thickness in nm; NaN where N0 <= 0 or the integral is not positive.

    Examples
    --------
    >>> import numpy as np
    >>> e = np.arange(-100, 1948) * 0.05
    >>> ssd = np.where(e > 0, 1e3 * np.exp(-((e - 15) / 2) ** 2), 0.0)[None, :]
    >>> t = sum_rule_thickness_nm(ssd, e, np.array([1e6]), beam_energy_keV=200.0,
    ...                           collection_angle_mrad=10.0, metal=True)
    >>> t.shape
    (1,)
    """
    one_minus = sum_rule_normalisation(refractive_index, metal)
    xp, grid, kc, kf, s, e, ang, w = ssd_on_loss_grid(
        ssd,
        energy_eV,
        beam_energy_keV=beam_energy_keV,
        collection_angle_mrad=collection_angle_mrad,
        low_energy_cutoff_eV=low_energy_cutoff_eV,
    )
    j = sum_rule_integral_rows(xp, s, e, ang, grid, kc, kf, weights=w).integral
    n0 = xp.asarray(zlp_intensity, dtype=j.dtype)
    ok = (n0 > 0) & (j > 0)
    n0_safe = xp.where(ok, n0, xp.ones_like(n0))
    t = thickness_from_integral_nm(j, n0_safe, one_minus, beam_energy_keV)
    return xp.where(ok, t, xp.full_like(t, math.nan))


def kk_sum_rule_integral(
    ssd: Any,
    energy_eV: Any,
    beam_energy_keV: float,
    collection_angle_mrad: float,
    low_energy_cutoff_eV: float | None = None,
) -> Any:
    """The integral of eq. 29, ``int_0^inf SSD(E) / (E ln(1 + beta^2/theta_E^2)) dE``.

    ``ssd`` (n, n_E) in counts per channel on the loss axis ``energy_eV`` (eV); theta_E from eq. 27,
    beta in mrad. Returns counts/eV, (n,). Computed by :func:`sum_rule_thickness_nm` (one
    implementation of eq. 26), so it shares its low-energy treatment (the small-E form of the
    loss function below ``low_energy_cutoff_eV``, so the zero-loss residue is not amplified by
    1/E) and its A/E^3 tail beyond the window; NaN where the integral is not positive.
    """
    xp = array_namespace(ssd)
    cutoff = DEFAULT_LOW_ENERGY_CUTOFF_EV if low_energy_cutoff_eV is None else low_energy_cutoff_eV
    s = xp.where(xp.isfinite(ssd), ssd, xp.zeros_like(ssd))
    # a metal has 1 - Re[1/eps(0)] = 1, so its eq. 26 thickness is 4 a0 T times the integral
    t_metal = sum_rule_thickness_nm(
        s,
        energy_eV,
        xp.ones(s.shape[0], dtype=s.dtype),
        beam_energy_keV=beam_energy_keV,
        collection_angle_mrad=collection_angle_mrad,
        metal=True,
        low_energy_cutoff_eV=cutoff,
    )
    return t_metal / sum_rule_prefactor_nm_eV(beam_energy_keV)


def refractive_index_from_thickness(
    kk_integral_per_eV: Any, thickness_nm: float, beam_energy_keV: float
) -> Any:
    """Refractive index from a known thickness, the inverse of eq. 26 (kk-theory.md):
    ``n = [1 - 4 a0 F E0 / (N0 t) * integral]^(-1/2)`` with ``kk_integral_per_eV`` = integral/N0
    (1/eV, the ``kk_integral`` output), t in nm, E0 in keV. NaN where the bracket is not positive
    (the data say "metal or worse": Re[1/eps(0)] <= 0). Host floats (NumPy).

    Examples
    --------
    >>> k = 0.75 * 10.0 / sum_rule_prefactor_nm_eV(200.0)  # n = 2 at t = 10 nm
    >>> round(float(refractive_index_from_thickness(k, 10.0, 200.0)), 6)
    2.0
    """
    k = np.asarray(kk_integral_per_eV, dtype=np.float64)
    bracket = 1.0 - sum_rule_prefactor_nm_eV(beam_energy_keV) * k / float(thickness_nm)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(bracket > 0, bracket**-0.5, np.nan)
