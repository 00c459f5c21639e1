"""The Kramers-Kronig block kernel of ``kramers_kronig``, with its declaration.

==========================  ==================================  ===========================
declaration                 kernel                              analysis
==========================  ==================================  ===========================
:func:`kk_declaration`      :func:`kk_kernel`                   ``kramers_kronig``
==========================  ==================================  ===========================

The kernel composes the per-equation kernels (:mod:`.sum_rule`, :mod:`.dielectric`,
:mod:`.surface`, :mod:`.optics`) and comes declared as a
:class:`~eelsgpu.kernels.declare.BlockKernel` beside it.

What makes a result trusted (the ``quality`` map, bits of :mod:`.quality`; ``valid`` = usable
input and no fatal bit), with the thresholds and the measurements behind them in
:func:`kk_kernel`:

* the sign: Im[-1/eps] and eps2 are constrained >= 0 in the solve; how much the constraint
  changed the sum rule is a map (``eps2_negative_weight``; the share of negative channels,
  ``eps2_negative_fraction``, where asked); above :data:`EPS2_NEGATIVE_LIMIT` the pixel gets
  EPS2_NEGATIVE (fatal);
* KK against log-ratio thickness, where both exist: beyond a factor :data:`THICKNESS_FACTOR`
  either way, KK_THICKNESS_DISAGREES (a warning: the log-ratio side carries the mean free path's
  own 10-20 % uncertainty);
* surface losses: where eq. 36 says they make more than :data:`SURFACE_SHARE_LIMIT` of the
  spectrum below the plasmon and the surface correction did not converge (not asked, too thin,
  or failed), SURFACE_NOT_CORRECTED, and ``eps_trusted_from_eV`` moves up to the plasmon: eps
  below it is not to be trusted;
* the bits of the deconvolution the SSD came from (``upstream_quality``) are carried over.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from .._xp import array_namespace, axis_step, is_numpy
from ..errors import MissingParameterError
from . import quality as q
from .declare import BlockKernel, Output
from .dielectric import KKSetup, eps_from_inverse, kk_single_pass
from .loss_grid import DEFAULT_LOW_ENERGY_CUTOFF_EV, LossGrid, tail_decayed
from .optics import (
    absorption_coefficient_per_nm,
    cerenkov_condition,
    effective_electron_density,
    loss_peak_eV,
    plasmon_energy_eV,
    refractive_index_nk,
)
from .sum_rule import (
    cutoff_channels,
    ssd_on_loss_grid,
    sum_rule_integral_rows,
    sum_rule_normalisation,
)
from .surface import KKState, SurfaceSettings, solve_surface, surface_bracket, surface_factor
from .zlp import shift_kernel

__all__ = [
    "ALL_VARIABLES",
    "CUBE_OUTPUTS",
    "DEFAULT_CUBES",
    "DEFAULT_VARIABLES",
    "EPS2_NEGATIVE_LIMIT",
    "MAP_OUTPUTS",
    "SIGNAL_FRACTION",
    "SURFACE_SHARE_LIMIT",
    "THICKNESS_FACTOR",
    "kk_declaration",
    "kk_kernel",
]

#: The share of the constrained sum-rule integral (eq. 33, the 1/E-weighted SSD), 1 - J(SSD) /
#: J(SSD >= 0), that the channels whose SSD, hence Im[-1/eps] and eps2, came out negative took
#: away, above which a pixel gets EPS2_NEGATIVE (fatal): the sign constraint then moves the
#: normalisation and the thickness by more than this share (see :func:`kk_kernel`).
EPS2_NEGATIVE_LIMIT: float = 0.1
#: KK thickness / log-ratio thickness beyond this factor (either way): KK_THICKNESS_DISAGREES.
THICKNESS_FACTOR: float = 1.5
#: Surface-loss intensity (eq. 36) over the SSD between the cut-off and the plasmon above which a
#: pixel whose surface correction did not converge gets SURFACE_NOT_CORRECTED.
SURFACE_SHARE_LIMIT: float = 0.05
#: The signal range: from the cut-off to where the SSD's running sum reaches this share of its
#: sum (the noise beyond, e.g. 600 eV of background-subtracted counts, is not counted).
SIGNAL_FRACTION: float = 0.95

#: Map outputs of the kernel (one value per pixel) and their (units, long name, dtype).
MAP_OUTPUTS: dict[str, tuple[str, str, str]] = {
    "thickness_nm": ("nm", "thickness (Kramers-Kronig sum rule)", "float"),
    "re_inverse_eps0": ("", "Re[1/eps(0)]", "float"),
    "static_refractive_index": ("", "static refractive index n = Re[1/eps(0)]^-1/2", "float"),
    "plasmon_energy_eV": ("eV", "eps1 = 0 crossing with positive slope", "float"),
    "loss_peak_eV": ("eV", "energy of the loss-function maximum", "float"),
    "iterations": ("", "surface-correction iterations done", "int32"),
    "converged": ("", "surface correction converged (and applied)", "bool"),
    "surface_status": (
        "",
        "surface correction: 0 not asked, 1 converged, 2 too thin (uncorrected), "
        "3 did not converge (uncorrected)",
        "int32",
    ),
    "cerenkov": ("", "Cerenkov condition v > c/sqrt(eps1) met at low energy", "bool"),
    "tail_decayed": ("", "loss function decayed before the window ends", "bool"),
    "low_energy_cutoff_eV": ("eV", "low-energy cut-off E_c (Im[-1/eps] ~ E below)", "float"),
    "eps2_negative_fraction": (
        "",
        "share of signal-range channels with Im[-1/eps] < 0 before the sign constraint",
        "float",
    ),
    "eps2_negative_weight": (
        "",
        "share of the constrained sum rule (eq. 33) the negative channels took away",
        "float",
    ),
    "thickness_ratio": ("", "KK thickness / log-ratio thickness", "float"),
    "surface_share": (
        "",
        "surface losses (eq. 36) / SSD from the cut-off to the plasmon, uncorrected",
        "float",
    ),
    "eps_trusted_from_eV": ("eV", "eps is trusted from this energy up", "float"),
    "quality": ("", "quality bitmask (eelsgpu.kernels.quality)", "uint32"),
    "valid": ("", "pixel analysed and no fatal quality bit", "bool"),
}
#: Per-pixel spectra of the kernel, on the loss grid E_k = k dE, k >= 1.
CUBE_OUTPUTS: dict[str, tuple[str, str]] = {
    "eps1": ("", "eps1 = Re[eps]"),
    "eps2": ("", "eps2 = Im[eps]"),
    "loss_function": ("", "loss function Im[-1/eps]"),
    "surface_intensity": ("counts", "surface-loss intensity I_S per channel (eq. 36)"),
    "refractive_index": ("", "refractive index n(E)"),
    "extinction_coefficient": ("", "extinction coefficient k(E)"),
    "absorption_coefficient": ("1/nm", "optical absorption coefficient mu(E)"),
    "n_eff": ("electrons/nm^3", "effective electron density n_eff(E) (f-sum rule)"),
}
#: The cubes computed and kept unless others are asked for: eps1 and eps2 (the other six are
#: derived from them or cost a cube each: each asked cube is 4 bytes per channel and spectrum
#: more to compute, copy back from a GPU and store).
DEFAULT_CUBES: tuple[str, ...] = ("eps1", "eps2")
#: What :func:`kk_kernel` (and :func:`eelsgpu.kramers_kronig`) return by default: eps1, eps2 and
#: every map.
DEFAULT_VARIABLES: tuple[str, ...] = DEFAULT_CUBES + tuple(MAP_OUTPUTS)
#: Every output: all eight cubes and every map.
ALL_VARIABLES: tuple[str, ...] = tuple(CUBE_OUTPUTS) + tuple(MAP_OUTPUTS)


def kk_kernel(
    block,
    energy_eV,
    *,
    zlp_intensity=None,
    thickness_nm=None,
    valid=None,
    zlp_centre_eV=None,
    cutoff_eV=None,
    log_ratio_thickness_nm=None,
    upstream_quality=None,
    beam_energy_keV: float,
    collection_angle_mrad: float,
    refractive_index: float | None = None,
    metal: bool = False,
    iterations: int = 0,
    low_energy_cutoff_eV: float = DEFAULT_LOW_ENERGY_CUTOFF_EV,
    min_thickness_nm: float = 20.0,
    thickness_tolerance: float = 1e-3,
    eps_tolerance: float = 1e-2,
    cerenkov_max_eV: float = 5.0,
    atom_density_per_nm3: float | None = None,
    nonnegative: bool = True,
    eps2_negative_limit: float = EPS2_NEGATIVE_LIMIT,
    thickness_factor: float = THICKNESS_FACTOR,
    surface_share_limit: float = SURFACE_SHARE_LIMIT,
    dispersion_eV: float | None = None,
    grid: LossGrid | None = None,
    variables: Sequence[str] = DEFAULT_VARIABLES,
) -> dict[str, Any]:
    """Kramers-Kronig analysis of a block of SSDs (array-API kernel for
    :func:`eelsgpu.engine.apply_kernel`).

    Implements kk-theory.md eqs. 26, 28, 31-36 (Egerton 2011 section 4.2): the loss function from
    the SSD (eq. 31), normalised by the sum rule (eq. 33) from n, as a metal, or from a known
    thickness; Re[1/eps] by eq. 32 (:func:`~.dielectric.re_inverse_eps`); eps by eq. 34; the
    thickness by
    eq. 26; and, with ``iterations`` > 0, the surface correction of eqs. 35-36.

    Surface correction (eqs. 35-36): find the bulk SSD b with b + I_S(eps(b)) = SSD, where
    eps(b) is the KK analysis of b (eps, t by the single pass above) and
    I_S = N0 dE P_S(eps) (eq. 36, :func:`~.surface.surface_loss_per_eV`); start: b = SSD
    (I_S = 0, the uncorrected result). The plain fixed point b <- SSD - I_S(eps(b)) diverges for
    thin films (measured: 30 nm and below for a Si-like film; the eigenvalues of its Jacobian
    reach -2.2 at 20 nm and one has a real part above 1, so no damping can cure it), so each
    iteration is an approximate Newton step on the residual F(b) = b + I_S - SSD (channels
    >= E_c): with w = 1/eps (analytic, Re w = Hilbert transform of Im w, eq. 32) the linearised
    equation is a Riemann-Hilbert problem Im[M dw] = F, M = 1/Kp - S g'(w) (Kp the SSD-to-loss
    factor of eq. 31, S eq. 36's prefactor, g(w) = w - 4w/(1 + w)), solved exactly by two
    Hilbert transforms (:func:`~.surface.newton_step`). The neglected parts (the sum-rule factor's
    variation, the extrapolations below E_c and beyond the window, discretisation) make the
    convergence linear (||F|| falls by a factor 0.1-0.5 per step, measured on 20-100 nm films).
    Safeguard: a step is accepted only if ||F|| decreases; otherwise that pixel's step length is
    halved (after a success it doubles again, up to 1) and the pixel fails when it would drop
    below 1/8.

    One iteration = one Newton step (2 Hilbert transforms) + one KK single pass of the trial b,
    i.e. about three single passes of FFT work; ``iterations`` is the maximum number of
    iterations (steps, accepted or not). Converged films of 20-100 nm take 3-6 (9-18 passes).

    Convergence criterion, per pixel, after an accepted step i: |t^(i) - t^(i-1)| <=
    ``thickness_tolerance`` t^(i) and max_E |eps^(i) - eps^(i-1)| <= ``eps_tolerance``
    max_E |eps^(i)| (E from E_c to the window end); the pixel then stops iterating (a per-pixel
    active mask). Pixels thinner than ``min_thickness_nm`` (from the uncorrected analysis) are
    not corrected (status 2); pixels that do not converge within ``iterations``, whose step
    length falls below 1/8, whose thickness or eps stop being finite and positive, or whose M
    winds around 0 keep the uncorrected result exactly (status 3); ``converged`` is True only
    for corrected pixels.

    When it fails, and why: M winds around 0 (the Riemann-Hilbert problem has a nonzero index)
    where the surface-plasmon term 4 S |eps|^2/|eps + 1|^2 outweighs the bulk weight 1/Kp near
    eps1 = -1, i.e. where surface losses dominate a sharp surface plasmon. With index 1 the
    continuous linearised problem loses two conditions: the inversion itself is ill-posed, not
    only the iteration (measured for a sharp Drude film, 15 eV, width 0.5 eV, at 100 nm: the
    Jacobian of F has two singular values 5e-3 and 6e-4, all others >= 0.95; two combinations
    of the spectrum are almost undetermined). Measured at the true eps (200 kV, 10 mrad): a
    Si-like Lorentz film (width 3.7 eV) winds at 15 nm but not at 20 nm; a broad Drude metal
    (16.7 eV, width 3.7 eV) at 20 nm but not at 25 nm (its 20 nm film is flagged when the step
    length collapses); the sharp Drude film at every thickness up to 400 nm (the plain fixed
    point diverges there too). Pixels whose M winds get status 3 at once, without iterating.

    Trust (the ``quality`` bits, :mod:`.quality`; ``valid`` = usable input and no fatal bit):

    * Sign. The rows are projected onto SSD >= 0 before the sum rule and the transform
      (:func:`~.dielectric.kk_single_pass`), so Im[-1/eps] and eps2 are never negative and eps1,
      eps2 stay a Kramers-Kronig pair. Chosen over a flag alone by measurement: a flag cannot
      make results marked good non-negative (noise alone makes 0-12 % of the signal-range
      channels negative on the real files), while the projection costs 0 to +1.0 % of
      thickness on noisy synthetic truth (Poisson 1e5-1e6 counts, four models, band-limited at
      the ZLP width; the largest error 2.4 -> 2.6 %). ``eps2_negative_weight`` = 1 - J(SSD) /
      J(SSD >= 0), J the sum-rule integral: at most 1.5 % on that synthetic truth and 1.6 % on
      the real files with the threshold ZLP (4.2 % on a 3 nm h-BN flake), 25-73 % on the
      off-axis Al spectra whose SSD has -35 to -93 % lobes. Above ``eps2_negative_limit``
      (10 %) the pixel gets EPS2_NEGATIVE (fatal).
    * Thickness. With ``log_ratio_thickness_nm``, ``thickness_ratio`` = t_KK / t_log-ratio;
      beyond ``thickness_factor`` (1.5) either way, KK_THICKNESS_DISAGREES (a warning: the mean
      free path behind the log-ratio side is itself uncertain by 10-20 %). Measured on the real
      files: 0.73-1.08 where surface losses do not matter.
    * Surface losses. ``surface_share``: eq. 36 on the uncorrected eps (times N0 dE) over the
      SSD from E_c to the loss-function peak, on every m-th channel (about 256). Above
      ``surface_share_limit`` (5 %) and without a converged correction (status 0, 2 or 3),
      SURFACE_NOT_CORRECTED (a warning) and ``eps_trusted_from_eV`` moves from E_c to the loss
      peak: on Si-like synthetic films (eq. 36 in the data) the uncorrected eps below the
      plasmon is off by about twice the share (of max |eps|) and the thickness by about the
      share; the 25 nm Al film's share is 24 %.

    Parameters
    ----------
    block : array (n, n_E)
        SSD, counts per channel, loss axis ``energy_eV`` (eV) holding 0 eV; or, with
        ``zlp_centre_eV``, on the data's own axis with each pixel's zero loss at its centre.
    zlp_intensity : array (n,), optional
        N0 (counts); needed for the thickness, for ``thickness_nm`` and for the surface term.
    thickness_nm : array (n,), optional
        Known thickness (nm) to normalise by instead of n; t <= 0 or NaN (vacuum) is flagged.
    valid : array (n,), optional
        Pixels to analyse (others give NaN and ``valid`` False).
    zlp_centre_eV : array (n,), optional
        Each pixel's ZLP centre on the stored axis (eV): the rows are first shifted (linear
        interpolation, counts kept) so that it sits at 0 eV. For an SSD left where the ZLP was
        (``deconvolve(output="reconvolved-zlp")``); a NaN centre makes the pixel unusable.
    cutoff_eV : array (n,), optional
        Each pixel's low-energy cut-off E_c (eV), e.g. 3 x its measured ZLP FWHM; NaN or <= 0
        falls back on ``low_energy_cutoff_eV``. A pixel whose cut-off leaves less than half the
        window above its fit range [E_c, 2 E_c) is not usable.
    log_ratio_thickness_nm : array (n,), optional
        The log-ratio thickness (nm; t/lambda x the mean free path) to compare the KK thickness
        with (``thickness_ratio``, KK_THICKNESS_DISAGREES).
    upstream_quality : array (n,), optional
        The ``quality`` bits of the deconvolution the SSD came from (carried over).
    beam_energy_keV, collection_angle_mrad : float
        E0 (keV), beta (mrad).
    refractive_index, metal
        Normalisation by eq. 28 when no thickness is given.
    low_energy_cutoff_eV : float
        E_c (eV): Im[-1/eps] below it is extrapolated linearly to 0 (module docstring).
    cerenkov_max_eV : float
        Upper end (eV) of the low-energy range [E_c, cerenkov_max_eV] where the Cerenkov
        condition eps1 > (c/v)^2 is tested (on the median of eps1 there, robust to noise);
        5 eV by default, where Cerenkov losses fall (kk-theory.md, relativistic contributions).
    atom_density_per_nm3 : float, optional
        Atoms per nm^3: ``n_eff`` is then per atom instead of per nm^3.
    nonnegative : bool
        The sign constraint Im[-1/eps] >= 0 in the solve (:func:`~.dielectric.kk_single_pass`).
    eps2_negative_limit, thickness_factor, surface_share_limit : float
        The thresholds of EPS2_NEGATIVE, KK_THICKNESS_DISAGREES and SURFACE_NOT_CORRECTED
        (module constants by default).
    dispersion_eV : float, optional
        The channel width (a host number) for the move by ``zlp_centre_eV``; default read from
        ``energy_eV`` (or ``grid``).
    grid : LossGrid, optional
        The loss grid of ``energy_eV`` (:func:`~.loss_grid.loss_grid`, made on the host by the
        caller): spares reading the axis from the device (two host syncs a block on a GPU).
    variables : sequence of str
        Outputs to compute and return (:data:`DEFAULT_VARIABLES` by default: the cubes eps1 and
        eps2 and every map; any of :data:`CUBE_OUTPUTS` and :data:`MAP_OUTPUTS`). A cube not
        asked for is not computed.

    Returns
    -------
    dict
        Maps (n,) and cubes (n, K - 1) on E_k = k dE, k = 1..K-1 (units in :data:`MAP_OUTPUTS`
        and :data:`CUBE_OUTPUTS`).

    The work is cut in three: :func:`_kk_inputs` (the SSD on the loss grid and the input
    masks), :func:`_kk_solve` (the pass of :func:`~.dielectric.kk_single_pass` and the
    surface correction of :func:`~.surface.solve_surface`) and :func:`_kk_derived` (the
    outputs, the optical quantities of :mod:`.optics` and the quality bits).
    """
    inputs = _kk_inputs(
        block,
        energy_eV,
        zlp_intensity=zlp_intensity,
        thickness_nm=thickness_nm,
        valid=valid,
        zlp_centre_eV=zlp_centre_eV,
        cutoff_eV=cutoff_eV,
        dispersion_eV=dispersion_eV,
        grid=grid,
        beam_energy_keV=beam_energy_keV,
        collection_angle_mrad=collection_angle_mrad,
        refractive_index=refractive_index,
        metal=metal,
        iterations=iterations,
        low_energy_cutoff_eV=low_energy_cutoff_eV,
        nonnegative=nonnegative,
    )
    settings = SurfaceSettings(
        collection_angle_mrad=collection_angle_mrad,
        iterations=int(iterations),
        min_thickness_nm=min_thickness_nm,
        thickness_tolerance=thickness_tolerance,
        eps_tolerance=eps_tolerance,
    )
    sol = _kk_solve(inputs, settings, want_surface="surface_intensity" in set(variables))
    out = _kk_derived(
        inputs,
        sol,
        variables=variables,
        cerenkov_max_eV=cerenkov_max_eV,
        atom_density_per_nm3=atom_density_per_nm3,
    )
    flags = _kk_quality(
        inputs,
        sol,
        out,
        want=set(variables),
        collection_angle_mrad=collection_angle_mrad,
        log_ratio_thickness_nm=log_ratio_thickness_nm,
        upstream_quality=upstream_quality,
        eps2_negative_limit=eps2_negative_limit,
        thickness_factor=thickness_factor,
        surface_share_limit=surface_share_limit,
    )
    out.update(flags)
    want = set(variables)
    return {k: v for k, v in out.items() if k in want}


class _KKInputs(NamedTuple):
    """The block ready for the KK passes: ``setup`` (grid, N0, E0, normalisation, each pixel's
    cut-off channels), ``s0`` (n, K) the SSD on the loss grid (unusable rows zeroed), ``ok_in``
    (n,) the pixels to analyse, ``cutoff_eV`` (n,) each pixel's E_c."""

    setup: KKSetup
    s0: Any
    ok_in: Any
    cutoff_eV: Any


def _and(a: Any, b: Any) -> Any:
    """``a & b`` where either may be None (all True): no array made for "every pixel"."""
    return b if a is None else a if b is None else a & b


def _kk_inputs(
    block: Any,
    energy_eV: Any,
    *,
    zlp_intensity: Any,
    thickness_nm: Any,
    valid: Any,
    zlp_centre_eV: Any,
    cutoff_eV: Any,
    dispersion_eV: float | None,
    grid: LossGrid | None,
    beam_energy_keV: float,
    collection_angle_mrad: float,
    refractive_index: float | None,
    metal: bool,
    iterations: int,
    low_energy_cutoff_eV: float,
    nonnegative: bool,
) -> _KKInputs:
    """The SSD on the loss grid, N0, the normalisation, each pixel's cut-off channels and the
    input masks of :func:`kk_kernel`.

    No host sync: the host decisions of a block (are all pixels usable?) are fixed-shape
    ``where`` calls on a device; NumPy, where asking is free, still skips the passes it can."""
    xp = array_namespace(block)
    n_pix = block.shape[0]
    ok_in = None
    if valid is not None:
        ok_in = valid > 0.5 if valid.dtype != xp.bool else valid
    if zlp_centre_eV is not None:
        # an SSD that sits where each pixel's ZLP sat: move every row so that zero loss is at
        # 0 eV (counts kept; the channels shifted in from beyond the window are empty)
        c = xp.astype(zlp_centre_eV, block.dtype)
        c_ok = xp.isfinite(c)
        ok_in = _and(ok_in, c_ok)
        d = dispersion_eV
        if d is None:
            d = grid.dispersion_eV if grid is not None else axis_step(energy_eV)[1]
        block = shift_kernel(
            block, xp.where(c_ok, c, 0.0), "linear", dispersion_eV=d, fill_value=0.0
        )
    xp, grid, kc0, kf0, s0, e, ang, weights = ssd_on_loss_grid(
        block,
        energy_eV,
        beam_energy_keV=beam_energy_keV,
        collection_angle_mrad=collection_angle_mrad,
        low_energy_cutoff_eV=low_energy_cutoff_eV,
        grid=grid,
    )
    dtype = s0.dtype
    de = grid.dispersion_eV
    # the cut-off channel kc (>= 1) and the end kf of the fit of c over [kc, kf): one for the
    # block (ints: the fast paths) unless each pixel brings its own
    kc: Any = kc0
    kf: Any = kf0
    cut = None
    k = xp.arange(grid.n)
    if cutoff_eV is None:
        cut_out = xp.full((n_pix,), kc0 * de, dtype=dtype)
        low = k < kc0
    else:
        cut_e = xp.astype(cutoff_eV, dtype)
        use = xp.isfinite(cut_e) & (cut_e > 0)
        k_cut = xp.round(xp.where(use, cut_e, 0.0) * (1.0 / de))
        k_cut = xp.astype(xp.clip(k_cut, 1.0, float(grid.n)), xp.int64)
        kc = xp.where(use, k_cut, kc0)
        kf = kc + xp.maximum(kc, 3)  # max(2 kc, kc + 3)
        fits = kf <= grid.n // 2
        ok_in = _and(ok_in, fits)
        kc = xp.where(fits, kc, kc0)
        kf = xp.where(fits, kf, kf0)
        cut = cutoff_channels(xp, kc, kf, grid, dtype)
        cut_out = xp.astype(kc, dtype) * de
        low = k[None, :] < kc[:, None]
    one_minus = 1.0
    t_given = None
    if thickness_nm is not None:
        t_given = xp.astype(thickness_nm, dtype)
    else:
        one_minus = sum_rule_normalisation(refractive_index, metal)
    if zlp_intensity is None:
        if t_given is not None or iterations > 0:
            raise MissingParameterError(
                "zlp_intensity (N0) is needed to normalise by thickness and for the surface term"
            )
        n0 = xp.full((n_pix,), math.nan, dtype=dtype)
        n0_ok = xp.zeros((n_pix,), dtype=xp.bool)
        n0_safe = xp.ones((n_pix,), dtype=dtype)
    else:
        n0 = xp.astype(zlp_intensity, dtype)
        n0_ok = xp.isfinite(n0) & (n0 > 0)
        n0_safe = xp.where(n0_ok, n0, 1.0)
    # any NaN in the SSD makes the pixel invalid; it is zeroed so it cannot poison its row's
    # sums and transforms. A NaN or inf makes the row's sum NaN or inf (one read of the rows,
    # no boolean cube; a finite float32 SSD's sum is far below overflow)
    finite = xp.isfinite(xp.sum(s0, axis=-1))
    ok_in = _and(ok_in, finite)
    # a fixed-shape where on a device; on NumPy, where the question costs no sync, only when
    # some pixel is unusable (as before issue 11)
    if not is_numpy(xp) or not bool(xp.all(ok_in)):
        s0 = xp.where(ok_in[:, None], s0, 0.0)
    setup = KKSetup(
        xp=xp,
        n0=n0,
        e=e,
        ang=ang,
        grid=grid,
        kc=kc,
        kf=kf,
        beam_energy_keV=beam_energy_keV,
        one_minus=one_minus,
        thickness_nm=t_given,
        nonnegative=bool(nonnegative),
        weights=weights,
        cut=cut,
        low=low,
        n0_ok=n0_ok,
        n0_safe=n0_safe,
    )
    return _KKInputs(setup, s0, ok_in, cut_out)


class _KKSolution(NamedTuple):
    """The solved block: ``state`` (eps, loss function, Re[1/eps], t, Re[1/eps(0)]), ``ok`` (n,),
    the surface correction's ``surface`` (n, K; None where not asked and not run),
    ``iterations``, ``status``, ``converged`` (n,), and the uncorrected pass's
    ``tail_coefficient`` and ``integral`` (n,)."""

    state: KKState
    ok: Any
    surface: Any
    iterations: Any
    status: Any
    converged: Any
    tail_coefficient: Any
    integral: Any


def _kk_solve(
    inputs: _KKInputs, settings: SurfaceSettings, want_surface: bool = True
) -> _KKSolution:
    """One KK pass of the block, then the surface correction when ``settings.iterations`` > 0."""
    setup, s0 = inputs.setup, inputs.s0
    xp = setup.xp
    n_pix = s0.shape[0]
    loss, re_inv, t, re0, ok, a_tail, j = kk_single_pass(setup, s0)
    ok = ok & inputs.ok_in
    eps1, eps2 = eps_from_inverse(re_inv, loss)
    state = KKState(eps1, eps2, loss, re_inv, t, re0)
    if settings.iterations > 0:
        state, surface, n_iter, status, converged = solve_surface(setup, s0, state, ok, settings)
    else:
        surface = xp.zeros_like(s0) if want_surface else None
        n_iter = xp.zeros((n_pix,), dtype=xp.int32)
        status = n_iter
        converged = xp.zeros((n_pix,), dtype=xp.bool)
    return _KKSolution(state, ok, surface, n_iter, status, converged, a_tail, j)


def _kk_derived(
    inputs: _KKInputs,
    sol: _KKSolution,
    *,
    variables: Sequence[str],
    cerenkov_max_eV: float,
    atom_density_per_nm3: float | None,
) -> dict[str, Any]:
    """The outputs of :func:`kk_kernel` asked for in ``variables`` (and the maps the quality
    bits need), on the output grid k >= 1."""
    setup = inputs.setup
    xp, e, grid, kc = setup.xp, setup.e, setup.grid, setup.kc
    de = grid.dispersion_eV
    eps1, eps2, loss, _, t, re0 = sol.state
    ok = sol.ok
    want = set(variables)
    out: dict[str, Any] = {}
    sl = slice(1, grid.n)  # output grid: k >= 1 (eps is undefined at E = 0 for a metal)
    e_out = e[sl]
    # NaN where not ok: a fixed-shape where on a device; NumPy skips it when every pixel is ok
    mask = not is_numpy(xp) or not bool(xp.all(ok))
    ok_col = ok[:, None]

    def cube(x):
        x = x[:, sl]
        return xp.where(ok_col, x, math.nan) if mask else x

    def pmap(x):
        return xp.where(ok, x, math.nan)

    e1 = e2 = None  # masked eps (the derived cubes inherit the NaN)
    if want & {"eps1", "refractive_index", "extinction_coefficient", "absorption_coefficient"}:
        e1 = out["eps1"] = cube(eps1)
    if want & {"eps2", "refractive_index", "extinction_coefficient", "absorption_coefficient",
               "n_eff"}:  # fmt: skip
        e2 = out["eps2"] = cube(eps2)
    if "loss_function" in want:
        out["loss_function"] = cube(loss)
    if "surface_intensity" in want:
        out["surface_intensity"] = cube(sol.surface)
    out["thickness_nm"] = pmap(t)
    out["re_inverse_eps0"] = pmap(re0)
    if "static_refractive_index" in want:
        out["static_refractive_index"] = xp.where(ok & (re0 > 0), re0, math.nan) ** -0.5
    out["iterations"] = sol.iterations
    out["converged"] = sol.converged & ok
    out["surface_status"] = sol.status
    out["low_energy_cutoff_eV"] = pmap(inputs.cutoff_eV)
    if want & {"refractive_index", "extinction_coefficient", "absorption_coefficient"}:
        n_e, k_e = refractive_index_nk(e1, e2)
        out["refractive_index"] = n_e
        out["extinction_coefficient"] = k_e
        out["absorption_coefficient"] = absorption_coefficient_per_nm(k_e, e_out)
    if "n_eff" in want:
        out["n_eff"] = effective_electron_density(e2, e_out, de, atom_density_per_nm3)
    # channels k >= 1 at or above the cut-off
    lo = ~setup.low[..., sl]
    if "plasmon_energy_eV" in want:
        out["plasmon_energy_eV"] = pmap(
            plasmon_energy_eV(xp, eps1[:, sl], loss[:, sl], e_out, lo, de)
        )
    if "loss_peak_eV" in want:
        out["loss_peak_eV"] = pmap(loss_peak_eV(xp, loss[:, sl], e_out, lo, de))
    if "cerenkov" in want:
        k1 = int(math.floor(cerenkov_max_eV / de))
        k1 = max(2, min(grid.n - 1, k1))
        out["cerenkov"] = ok & cerenkov_condition(eps1[:, sl], kc - 1, k1, setup.beam_energy_keV)
    if "tail_decayed" in want:
        out["tail_decayed"] = ok & tail_decayed(
            xp, loss, lo, sol.tail_coefficient, sol.integral, grid
        )
    return out


def _kk_quality(
    inputs: _KKInputs,
    sol: _KKSolution,
    out: Mapping[str, Any],
    *,
    want: set[str],
    collection_angle_mrad: float,
    log_ratio_thickness_nm: Any,
    upstream_quality: Any,
    eps2_negative_limit: float,
    thickness_factor: float,
    surface_share_limit: float,
) -> dict[str, Any]:
    """The quality maps of :func:`kk_kernel`: ``eps2_negative_fraction`` and ``_weight``,
    ``thickness_ratio``,
    ``surface_share``, ``eps_trusted_from_eV``, ``quality`` and ``valid`` (see there)."""
    setup, s0 = inputs.setup, inputs.s0
    xp, grid, kc = setup.xp, setup.grid, setup.kc
    ok = sol.ok
    dtype = s0.dtype
    nan = math.nan

    def at(prefix, idx):
        return xp.take_along_axis(prefix, xp.reshape(idx, (-1, 1)), axis=-1)[:, 0]

    frac: Any = None
    if "eps2_negative_fraction" in want:  # a diagnostic map: only when asked (two cumsums)
        # the signal range [E_c, E_hi]: E_hi where the SSD's running sum from E_c reaches
        # SIGNAL_FRACTION of its sum (unconstrained SSD: noise beyond averages out); running
        # sums of the SSD and of its negative channels, read at kc - 1 and E_hi
        run = xp.cumulative_sum(s0, axis=-1)
        negatives = xp.cumulative_sum(xp.astype(s0 < 0, dtype), axis=-1)
        kc1 = kc - 1 if isinstance(kc, int) else xp.clip(kc - 1, 0, grid.n - 1)
        run0 = run[:, kc1] if isinstance(kc, int) else at(run, kc1)
        total = run[:, -1] - run0
        above = ~setup.low
        reached = above & ((run - run0[:, None]) >= SIGNAL_FRACTION * total[:, None])
        k_hi = xp.argmax(xp.astype(reached, xp.int32), axis=-1)
        n_range = xp.astype(k_hi - kc + 1, dtype)
        neg0 = negatives[:, kc1] if isinstance(kc, int) else at(negatives, kc1)
        n_neg = at(negatives, k_hi) - neg0
        # a sum that is not positive is noise or worse: every channel counts as affected
        usable = (total > 0) & (n_range > 0)
        frac = xp.where(usable, n_neg / xp.where(usable, n_range, 1.0), 1.0)
        frac = xp.where(ok, frac, nan)
    # the share of the constrained sum rule the negative channels took away, 1 - J(s)/J(s+)
    # (J is linear in s: J(s-) / J(s+) up to the A/E^3 tail's clamp)
    j_all = sum_rule_integral_rows(
        xp, s0, setup.e, setup.ang, grid, kc, setup.kf, weights=setup.weights, cut=setup.cut
    ).integral
    if setup.nonnegative:
        j_pos = sol.integral
    else:
        j_pos = sum_rule_integral_rows(
            xp, xp.clip(s0, 0.0, None), setup.e, setup.ang, grid, kc, setup.kf,
            weights=setup.weights, cut=setup.cut,
        ).integral  # fmt: skip
    # no positive part: net-negative (inf, flagged) or empty (NaN, nothing to analyse)
    pos = j_pos > 0
    none = xp.where(j_all < 0, xp.full_like(j_all, math.inf), nan)
    weight = xp.where(pos, 1.0 - j_all / xp.where(pos, j_pos, 1.0), none)
    if inputs.ok_in is not None:
        weight = xp.where(inputs.ok_in, weight, nan)

    t = out["thickness_nm"]
    ratio: Any = None
    disagrees = None
    if log_ratio_thickness_nm is not None:
        t_lr = xp.astype(log_ratio_thickness_nm, dtype)
        both = ok & xp.isfinite(t) & (t > 0) & xp.isfinite(t_lr) & (t_lr > 0)
        ratio = xp.where(both, t / xp.where(both, t_lr, 1.0), nan)
        disagrees = both & ((ratio > thickness_factor) | (ratio < 1.0 / thickness_factor))

    # surface losses (eq. 36) of the uncorrected eps against the SSD, from E_c to the plasmon
    # (the loss-function peak): where they matter and the correction did not converge, eps
    # below the plasmon is not to be trusted. A ratio of two sums of smooth curves for a flag:
    # every m-th channel (about 256 of them) is enough, and spares eq. 36 on the whole cube.
    # In Re[1/eps] = R and Im[-1/eps] = L (eq. 34): eps2 / |eps + 1|^2 = L / ((1 + R)^2 + L^2),
    # and Im[-1/eps] = L, so eq. 36's bracket is 4 L / ((1 + R)^2 + L^2) - L
    m = max(1, grid.n // 256)
    e = setup.e[::m]
    loss_s = sol.state.loss[:, ::m]
    i_s = surface_bracket(sol.state.re_inverse[:, ::m], loss_s)
    i_s *= surface_factor(xp, grid, setup.beam_energy_keV, collection_angle_mrad, dtype, step=m)
    i_s *= (setup.n0_safe * grid.dispersion_eV)[:, None]
    sub = s0[:, ::m]
    above_s = ~setup.low[..., ::m]
    e_p = out.get("loss_peak_eV")
    if e_p is None:  # the loss peak on the same channels (it bounds a sum, to m channels)
        f_sub = xp.where(above_s, loss_s, -math.inf)
        e_p = xp.take(e, xp.argmax(f_sub, axis=-1))
    # channels from E_c up to the plasmon (a NaN peak: none)
    below_p = above_s & (e[None, :] < e_p[:, None])
    num = xp.sum(xp.where(below_p, i_s, 0.0), axis=-1)
    den = xp.sum(xp.where(below_p & (sub > 0), sub, 0.0), axis=-1)
    share_ok = ok & setup.n0_ok & (den > 0)
    share = xp.where(share_ok, num / xp.where(share_ok, den, 1.0), nan)
    surface_flag = share_ok & (share > surface_share_limit) & (sol.status != 1)
    trusted = xp.where(surface_flag & xp.isfinite(e_p), e_p, inputs.cutoff_eV)

    if upstream_quality is not None:
        uq = upstream_quality
        if uq.dtype != xp.uint32:
            uq = xp.astype(xp.where(xp.isfinite(uq), uq, 0.0), xp.uint32)
        quality = uq
    else:
        quality = xp.zeros(ok.shape, dtype=xp.uint32)
    negative = weight > eps2_negative_limit  # (NaN where not ok_in: False)
    quality = q.set_bit(xp, quality, negative, q.EPS2_NEGATIVE)
    if disagrees is not None:
        quality = q.set_bit(xp, quality, disagrees, q.KK_THICKNESS_DISAGREES)
    quality = q.set_bit(xp, quality, surface_flag, q.SURFACE_NOT_CORRECTED)
    fatal = (quality & q.FATAL) > 0
    flags = {
        "eps2_negative_weight": weight,
        "surface_share": share,
        "eps_trusted_from_eV": xp.where(ok, trusted, nan),
        "quality": quality,
        "valid": ok & ~fatal,
    }
    # the maps with nothing to say are only made when asked for
    if "eps2_negative_fraction" in want:
        flags["eps2_negative_fraction"] = frac
    if "thickness_ratio" in want:
        flags["thickness_ratio"] = (
            ratio if ratio is not None else xp.full(ok.shape, nan, dtype=dtype)
        )
    return flags


def _kk_outputs(energy_out_eV: Any, params: Mapping[str, Any]) -> list[Output]:
    names = params.get("variables", DEFAULT_VARIABLES)
    atom_density = params.get("atom_density_per_nm3")
    outputs = []
    for name in names:
        if name in CUBE_OUTPUTS:
            units, long_name = CUBE_OUTPUTS[name]
            if name == "n_eff" and atom_density is not None:
                units = "electrons/atom"
            outputs.append(
                Output(name, units=units, long_name=long_name, axis="energy", coord=energy_out_eV)
            )
        else:
            units, long_name, dtype = MAP_OUTPUTS[name]
            attrs = q.describe() if name == "quality" else {}
            outputs.append(Output(name, units=units, long_name=long_name, dtype=dtype, attrs=attrs))
    return outputs


def kk_declaration(energy_out_eV: Any) -> BlockKernel:
    """The declaration of :func:`kk_kernel` whose cubes lie on ``energy_out_eV`` (the loss grid
    k dE, k >= 1, eV: ``loss_grid(energy).energy_eV[1:]``); the outputs are the ``variables``
    parameter's (with ``n_eff`` per atom given ``atom_density_per_nm3``). Engine's default tile."""
    return BlockKernel(kk_kernel, outputs=functools.partial(_kk_outputs, energy_out_eV))
