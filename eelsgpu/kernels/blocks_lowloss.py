"""The composite per-block kernels of the low-loss analyses, each with its declaration.

Each analysis of :mod:`eelsgpu.analysis` (ZLP alignment, deconvolution, thickness, Kramers-Kronig)
runs one block kernel here through :func:`eelsgpu.engine.apply_kernel`; the kernel composes the
per-equation kernels (:mod:`.zlp`, :mod:`.fourier_log`, :mod:`.log_ratio`, :mod:`.sum_rule`,
:mod:`.dielectric`, :mod:`.surface`, :mod:`.optics`) and comes declared as a
:class:`~eelsgpu.kernels.declare.BlockKernel` beside it: its outputs (name, units, long name,
dtype) and the tile size it runs best at on a CPU (measured; see each declaration).

==========================  ==================================  ===========================
declaration                 kernel                              analysis
==========================  ==================================  ===========================
:data:`ZLP_CENTRES`         :func:`centres_block`               ``align_zlp`` (crop pass)
:func:`align_declaration`   :func:`align_block`                 ``align_zlp``
:data:`DECONVOLVE`          :func:`deconvolve_block`            ``deconvolve``
:data:`LOG_RATIO`           :func:`log_ratio_block`             ``thickness`` (log-ratio)
:data:`KK_THICKNESS`        :func:`kk_thickness_kernel`         ``thickness`` (kk)
:func:`kk_declaration`      :func:`kk_kernel`                   ``kramers_kronig``
==========================  ==================================  ===========================

The outputs several analyses share are declared once (:data:`ZLP_INTENSITY`,
:data:`ZLP_CENTRE`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from .._xp import array_namespace, axis_step
from ..errors import MissingParameterError
from . import quality
from .declare import BlockKernel, Output
from .dielectric import KKSetup, eps_from_inverse, kk_single_pass
from .fourier_log import RINGING_LIMIT, fourier_log_kernel
from .log_ratio import TAILS, _on_subset, fourier_log_tail, log_ratio_maps, ssd_for_tail
from .loss_grid import DEFAULT_LOW_ENERGY_CUTOFF_EV, tail_decayed
from .optics import (
    absorption_coefficient_per_nm,
    cerenkov_condition,
    effective_electron_density,
    loss_peak_eV,
    plasmon_energy_eV,
    refractive_index_nk,
)
from .sum_rule import kk_sum_rule_integral, ssd_on_loss_grid, sum_rule_normalisation
from .surface import KKState, SurfaceSettings, solve_surface
from .tails import TAIL_FIT_FRACTION
from .zlp import (
    SEARCH_EV,
    background_check,
    centre_kernel,
    shift_kernel,
    zlp_kernel,
    zlp_model_checks,
)

__all__ = [
    "CUBE_OUTPUTS",
    "DECONVOLVE",
    "DEFAULT_VARIABLES",
    "KK_THICKNESS",
    "LOG_RATIO",
    "MAP_OUTPUTS",
    "ZLP_CENTRE",
    "ZLP_CENTRES",
    "ZLP_INTENSITY",
    "align_block",
    "align_declaration",
    "centres_block",
    "deconvolve_block",
    "kk_declaration",
    "kk_kernel",
    "kk_thickness_kernel",
    "log_ratio_block",
]

#: N0, the ZLP centre and FWHM, and the quality bitmask, as every low-loss analysis returns them.
ZLP_INTENSITY = Output("zlp_intensity", units="counts", long_name="zero-loss intensity N0")
ZLP_CENTRE = Output("zlp_centre_eV", units="eV", long_name="zero-loss peak centre")
ZLP_FWHM = Output("zlp_fwhm_eV", units="eV", long_name="measured FWHM of the zero-loss peak")
QUALITY = Output(
    "quality",
    units="",
    long_name="quality bitmask (eelsgpu.kernels.quality)",
    dtype="uint32",
    attrs={"flag_bits": quality.describe()},
)
#: The SSD's deepest negative lobe beyond 3 ZLP FWHM, over its peak, above which the spectrum
#: breaks the Fourier-log model (the NEGATIVE_LOBE bit; :func:`~.fourier_log.ssd_metrics`).
NEGATIVE_LOBE_LIMIT = 0.1
#: Below this window log-ratio a pixel is vacuum: its SSD is noise around zero and is not judged
#: for ringing or negative lobes (the WS2 vacuum spectra of shared/data: 0.002).
VACUUM_T_OVER_LAMBDA = 0.01


# --------------------------------------------------------------------------- ZLP alignment
def centres_block(
    block: Any, energy_eV: Any, *, search_eV: tuple[float, float] | None = None
) -> dict[str, Any]:
    """The ZLP centre (eV) and ``valid`` of each spectrum (:func:`~.zlp.centre_kernel`)."""
    cen = centre_kernel(block, energy_eV, search_eV=search_eV)
    return {"zlp_centre_eV": cen["zlp_centre_eV"], "valid": cen["valid"]}


#: The centres of a block (the crop pass of ``align_zlp``); measured: tiles of 1024 spectra run
#: at 2.5x the speed of 128-spectrum tiles.
ZLP_CENTRES = BlockKernel(
    centres_block,
    outputs=(
        ZLP_CENTRE,
        Output("valid", units="", long_name="usable zero-loss peak", dtype="bool"),
    ),
    tile_pixels=1024,
)


def align_block(
    block: Any,
    energy_eV: Any,
    *,
    method: str,
    search_eV: tuple[float, float] | None,
    lo: int,
    hi: int,
    fill_value: float,
) -> dict[str, Any]:
    """Each spectrum shifted so its ZLP centre sits at 0 eV (:func:`~.zlp.centre_kernel`, then
    :func:`~.zlp.shift_kernel` by ``method``), channels ``lo:hi`` kept; counts per channel.
    Pixels without a usable ZLP are NaN."""
    xp = array_namespace(block)
    d = axis_step(energy_eV)[1]
    cen = centre_kernel(block, energy_eV, search_eV=search_eV)
    valid = cen["valid"]
    c = cen["zlp_centre_eV"]
    y = block  # a NaN pixel is invalid and set to NaN below anyway
    out = shift_kernel(
        y, xp.where(valid, c, xp.zeros_like(c)), method, dispersion_eV=d, fill_value=fill_value
    )
    out = out[:, lo:hi]
    if not bool(xp.all(valid)):
        out = xp.where(valid[:, None], out, xp.full_like(out, math.nan))
    return {"signal": out, "zlp_centre_eV": c, "valid": valid}


def align_declaration(coord: Any = None) -> BlockKernel:
    """The declaration of :func:`align_block`; ``coord`` the energies (eV) of the kept channels
    when the axis is cropped (None: the input's axis). Measured: 512 spectra per tile is the
    fastest for the shift (cache) with the centre."""
    return BlockKernel(
        align_block,
        outputs=(
            Output(
                "signal",
                units="counts",
                long_name="aligned spectrum",
                axis="energy",
                coord=coord,
            ),
            ZLP_CENTRE,
            Output("valid", units="", long_name="usable zero-loss peak", dtype="bool"),
        ),
        tile_pixels=512,
    )


#: Long names of the deconvolution's ``ssd`` output, by ``output``.
DECONVOLVE_LONG_NAMES = {
    "ssd": "single-scattering distribution",
    "band-limited": "single-scattering distribution reconvolved with a Gaussian of the ZLP FWHM",
    "reconvolved-zlp": "single-scattering distribution reconvolved with the ZLP",
    "reconvolved-gaussian": "single-scattering distribution reconvolved with a Gaussian",
    "residual": "plural-scattering residual (data - ZLP - SSD reconvolved with the ZLP)",
}
#: The outputs of :func:`deconvolve_block` aligned at 0 eV (zero loss): they go on the axis
#: shifted by ``axis_shift_eV``; the others stay where the ZLP sits in the data.
ALIGNED_OUTPUTS = ("ssd", "band-limited", "reconvolved-gaussian")


class _Zlp(NamedTuple):
    """A block's ZLP on the kernel's axis: the axis ``e`` (stored axis minus the shift), the
    centre, the model ``z``, the truncation ``thr``, its checks and the background test."""

    e: Any
    centre: dict[str, Any]
    z: dict[str, Any]
    thr: dict[str, Any]
    checks: dict[str, Any]
    background: dict[str, Any]


def _zlp_for_block(
    block: Any,
    energy_eV: Any,
    *,
    method: str,
    reference: Any,
    zlp_cube: Any,
    search_eV: tuple[float, float] | None,
    axis_shift_eV: float,
    return_model: bool = True,
) -> _Zlp:
    """The ZLP of every pixel on the axis shifted by ``axis_shift_eV`` (so zero loss sits near
    0 eV even where the stored axis is off), with its per-pixel checks
    (:func:`~.zlp.zlp_model_checks`, :func:`~.zlp.background_check`). ``search_eV`` is on the
    stored axis."""
    e = energy_eV - axis_shift_eV if axis_shift_eV else energy_eV
    search = None
    if search_eV is not None:
        search = (float(search_eV[0]) - axis_shift_eV, float(search_eV[1]) - axis_shift_eV)
    centre = centre_kernel(block, e, search_eV=search)
    z = zlp_kernel(
        block,
        e,
        method=method,
        reference=reference,
        zlp_cube=zlp_cube,
        search_eV=search,
        return_model=return_model,
        centre=centre,
    )
    thr = z
    if method != "threshold":
        thr = zlp_kernel(
            block, e, method="threshold", search_eV=search, return_model=False, centre=centre
        )
    if return_model:
        checks = zlp_model_checks(block, e, z, thr, method)
    else:  # (the truncation's own check needs no model)
        checks = zlp_model_checks(block, e, thr, thr, "threshold")
    background = background_check(block, e, z["zlp_centre_eV"], z["fwhm_eV"], noise=checks["noise"])
    # the ZLP is off a calibrated axis where its centre on the stored axis is
    c_stored = z["zlp_centre_eV"] + axis_shift_eV
    z = dict(z)
    z["axis_offset"] = z["valid"] & ((c_stored < SEARCH_EV[0]) | (c_stored > SEARCH_EV[1]))
    return _Zlp(e, centre, z, thr, checks, background)


def _quality(xp: Any, zz: _Zlp, ok: Any, maps: dict[str, Any] | None, extra: dict[str, Any]) -> Any:
    """The per-pixel quality bitmask (:mod:`.quality`) of a thickness or deconvolution block:
    ``ok`` (n,) where the computation itself succeeded (else NO_ZLP), ``maps`` the log-ratio's
    tail flags (:func:`~.log_ratio.log_ratio_maps`), ``extra`` more conditions by bit."""
    n = ok.shape[0]
    q = xp.zeros((n,), dtype=xp.uint32)
    q = quality.set_bit(xp, q, ~ok, quality.NO_ZLP)
    q = quality.set_bit(xp, q, ok & zz.checks["mismatch"], quality.ZLP_MISMATCH)
    q = quality.set_bit(xp, q, ok & zz.background["unphysical"], quality.UNPHYSICAL_BACKGROUND)
    q = quality.set_bit(xp, q, ok & zz.z["axis_offset"], quality.AXIS_OFFSET)
    if maps is not None:
        q = quality.set_bit(xp, q, ok & maps["negative_tail"], quality.NEGATIVE_TAIL)
        q = quality.set_bit(xp, q, ok & maps["tail_untrusted"], quality.TAIL_UNTRUSTED)
        q = quality.set_bit(
            xp, q, ok & maps["negative_t_over_lambda"], quality.NEGATIVE_T_OVER_LAMBDA
        )
    for bit, condition in extra.items():
        q = quality.set_bit(xp, q, ok & condition, bit)
    return q


def _has_ssd(xp: Any, block: Any, z: dict[str, Any]) -> Any:
    """Pixels with an SSD to judge (ringing, negative lobes): a window log-ratio of at least
    :data:`VACUUM_T_OVER_LAMBDA`; a vacuum pixel's SSD is noise around zero, with no peak to
    measure it against."""
    window = xp.sum(xp.where(xp.isfinite(block), block, xp.zeros_like(block)), axis=-1)
    n0 = xp.where(z["valid"], z["zlp_intensity"], xp.ones_like(window))
    ratio = xp.where(z["valid"] & (window > 0) & (n0 > 0), window / n0, xp.ones_like(window))
    return xp.log(ratio) >= VACUUM_T_OVER_LAMBDA


def _valid(xp: Any, q: Any) -> Any:
    """No fatal bit set (:data:`.quality.FATAL`)."""
    return (q & quality.FATAL) == 0


def deconvolve_block(
    block: Any,
    energy_eV: Any,
    *,
    zlp_cube: Any = None,
    method: str = "mirror",
    reference: Any = None,
    search_eV: tuple[float, float] | None = None,
    output: str = "reconvolved-zlp",
    fwhm_eV: float | None = None,
    extrapolation: str = "power-law",
    pad_to: int | None = None,
    axis_shift_eV: float = 0.0,
    energy_coord_eV: Any = None,
) -> dict[str, Any]:
    """One pass per block: the ZLP model and its checks, then eq. 22
    (:func:`~.fourier_log.fourier_log_kernel`) with the raw SSD's figures of merit, and beside
    it the log-ratio t/lambda (eq. 16) of the same ZLP model with its tail from that raw SSD
    (:func:`~.log_ratio.log_ratio_maps`, exactly what ``thickness`` computes) but for
    ``output="residual"``.

    Energies are on the stored axis minus ``axis_shift_eV`` (a whole number of channels, chosen
    by the analysis so that zero loss sits near 0 eV where the stored axis is off); the aligned
    outputs (:data:`ALIGNED_OUTPUTS`) lie on that axis, ``zlp_centre_eV`` on the stored one;
    ``energy_coord_eV`` is that shifted axis for the declaration (the kernel does not use it).

    Counts per channel in; ``ssd`` (n, n_E) in counts per channel, ``zlp_intensity`` (counts),
    ``zlp_centre_eV``, ``zlp_fwhm_eV``, ``resolution_eV`` (eV), ``valid``, ``quality`` (uint32,
    :mod:`.quality`), ``t_over_lambda`` (n,).
    """
    xp = array_namespace(block)
    zz = _zlp_for_block(
        block,
        energy_eV,
        method=method,
        reference=reference,
        zlp_cube=zlp_cube,
        search_eV=search_eV,
        axis_shift_eV=axis_shift_eV,
    )
    z = zz.z
    nan = float("nan")
    y = xp.where(z["valid"][:, None], block, xp.zeros_like(block))
    c, w = z["zlp_centre_eV"], z["fwhm_eV"]
    zf = xp.where(xp.isfinite(z["zlp"]), z["zlp"], xp.zeros_like(y))
    tied = ((zf == y) & (zf != 0)) if method == "threshold" else None
    # the raw SSD exactly as thickness makes it for its tail (ssd_for_tail); the requested output
    # from the same pass where the options allow
    same = extrapolation == "power-law" and pad_to is None
    fl = fourier_log_kernel(
        y,
        zz.e,
        zf,
        output=output,
        fwhm_eV=fwhm_eV,
        extrapolation=extrapolation,
        pad_to=pad_to,
        zlp_centre_eV=c,
        zlp_fwhm_eV=w,
        misfit=method != "cube",
        tied=tied,
        metrics=same,
    )
    raw = fl if same else ssd_for_tail(xp, y, zz.e, zf, c, w, method)
    raw_ssd = raw["ssd"] if output == "ssd" and same else raw.get("raw_ssd", raw["ssd"])
    ok = z["valid"] & fl["valid"] & raw["valid"]
    maps = None
    if output != "residual":

        def fourier_log(select):
            beyond, sd = fourier_log_tail(raw_ssd, zz.e, raw["zlp_intensity"], xp.sum(y, axis=-1))
            zero = xp.zeros_like(beyond)
            return {
                "beyond": xp.where(select, beyond, zero),
                "sd": xp.where(select, sd, zero),
                "negative_lobe": xp.where(select, raw["negative_lobe"], zero),
            }

        maps = log_ratio_maps(
            xp,
            block,
            zz.e,
            z,
            tail="auto",
            fourier_log=fourier_log,
            noise=zz.checks["noise"],
        )
    judged = _has_ssd(xp, y, z)
    extra = {
        quality.RINGING: judged & (raw["ringing"] > RINGING_LIMIT),
        quality.NEGATIVE_LOBE: judged & (raw["negative_lobe"] > NEGATIVE_LOBE_LIMIT),
    }
    q = _quality(xp, zz, ok, maps, extra)
    valid = ok & _valid(xp, q)
    out = {
        "ssd": fl["ssd"],
        "zlp_intensity": xp.where(ok, z["zlp_intensity"], nan),
        "zlp_centre_eV": xp.where(ok, c + axis_shift_eV, nan),
        "zlp_fwhm_eV": xp.where(ok, w, nan),
        "resolution_eV": xp.where(ok, fl["resolution_eV"], nan),
        "valid": valid,
        "quality": q,
    }
    if maps is not None:
        out["t_over_lambda"] = xp.where(ok, maps["t_over_lambda"], nan)
    return out


def _deconvolve_outputs(params: Mapping[str, Any]) -> list[Output]:
    output = params.get("output", "reconvolved-zlp")
    shift = float(params.get("axis_shift_eV", 0.0) or 0.0)
    coord = None
    if shift and output in ALIGNED_OUTPUTS:
        coord = params["energy_coord_eV"]
    outputs = [
        Output(
            "ssd",
            units="counts",
            long_name=DECONVOLVE_LONG_NAMES[output],
            axis="energy",
            coord=coord,
            attrs={"output": output},
        ),
        ZLP_INTENSITY,
        ZLP_CENTRE,
        ZLP_FWHM,
        Output(
            "resolution_eV",
            units="eV",
            long_name="FWHM of the point-spread the SSD carries",
        ),
        Output("valid", units="", long_name="usable pixel (no fatal quality bit)", dtype="bool"),
        QUALITY,
    ]
    if output != "residual":
        outputs.append(Output("t_over_lambda", units="", long_name="relative thickness t/lambda"))
    return outputs


#: The deconvolution of a block (outputs by ``output``). 512 spectra per call on a CPU: the
#: Fourier-log cuts them into cache-sized passes itself; the ZLP model and the thickness map's
#: tail fit are many small operations per call, whose overhead 512 spectra amortise (measured
#: 1.2-1.4x faster than 128).
DECONVOLVE = BlockKernel(deconvolve_block, outputs=_deconvolve_outputs, tile_pixels=512)


# --------------------------------------------------------------------------- thickness
#: Units and long names of the thickness maps.
THICKNESS_MAPS: dict[str, tuple[str, str]] = {
    "t_over_lambda": ("", "relative thickness t/lambda"),
    "thickness_nm": ("nm", "thickness"),
    "zlp_intensity": ("counts", "zero-loss intensity N0"),
    "zlp_centre_eV": ("eV", "zero-loss peak centre"),
    "total_intensity": ("counts", "total intensity I_t (with the tail)"),
    "tail_fraction": ("", "share of I_t beyond the window"),
    "kk_integral": ("1/eV", "KK sum-rule integral / N0 (eq. 29)"),
}


def _thickness_output(name: str, dtype: str = "float") -> Output:
    units, long_name = THICKNESS_MAPS.get(name, ("", name))
    return Output(name, units=units, long_name=long_name, dtype=dtype)


def log_ratio_block(
    block: Any,
    energy_eV: Any,
    *,
    zlp_cube: Any = None,
    method: str = "threshold",
    reference: Any = None,
    search_eV: tuple[float, float] | None = None,
    tail: str = "auto",
    tail_fit_fraction: float = TAIL_FIT_FRACTION,
    axis_shift_eV: float = 0.0,
) -> dict:
    """The log-ratio thickness maps of a block (eq. 16): the ZLP model and its checks
    (:func:`_zlp_for_block`), the maps of :func:`~.log_ratio.log_ratio_maps` with the
    Fourier-log tail from :func:`~.log_ratio.ssd_for_tail` on the pixels that need it, and the
    quality bitmask. Energies as in :func:`deconvolve_block`."""
    xp = array_namespace(block)
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, not {tail!r}")
    zz = _zlp_for_block(
        block,
        energy_eV,
        method=method,
        reference=reference,
        zlp_cube=zlp_cube,
        search_eV=search_eV,
        axis_shift_eV=axis_shift_eV,
    )
    z = zz.z
    maps = log_ratio_maps(
        xp,
        block,
        zz.e,
        z,
        tail=tail,
        fit_fraction=tail_fit_fraction,
        fourier_log=_tail_from_ssd(xp, block, zz, method, tail_fit_fraction),
        noise=zz.checks["noise"],
    )
    ok = z["valid"]
    judged = maps["fourier_log_used"] & _has_ssd(xp, block, z)
    extra = {quality.NEGATIVE_LOBE: judged & (maps["negative_lobe"] > NEGATIVE_LOBE_LIMIT)}
    q = _quality(xp, zz, ok, maps, extra)
    nan = float("nan")
    return {
        "t_over_lambda": maps["t_over_lambda"],
        "zlp_intensity": z["zlp_intensity"],
        "zlp_centre_eV": xp.where(ok, z["zlp_centre_eV"] + axis_shift_eV, nan),
        "zlp_fwhm_eV": z["fwhm_eV"],
        "valid": ok & _valid(xp, q),
        "quality": q,
        "total_intensity": maps["total_intensity"],
        "tail_fraction": maps["tail_fraction"],
        "tail_trusted": maps["tail_trusted"],
    }


def _tail_from_ssd(xp: Any, block: Any, zz: _Zlp, method: str, fit_fraction: float) -> Any:
    """The ``fourier_log(select)`` of :func:`~.log_ratio.log_ratio_maps`: the raw SSD of the
    selected pixels only (:func:`~.log_ratio.ssd_for_tail`) and its tail."""
    z = zz.z

    def fourier_log(select):
        def run(y, model, c, w):
            ssd = ssd_for_tail(xp, y, zz.e, model, c, w, method)
            beyond, sd = fourier_log_tail(
                ssd["ssd"],
                zz.e,
                ssd["zlp_intensity"],
                xp.sum(y, axis=-1),
                fit_fraction=fit_fraction,
            )
            return {"beyond": beyond, "sd": sd, "negative_lobe": ssd["negative_lobe"]}

        y = xp.where(z["valid"][:, None], block, xp.zeros_like(block))
        return _on_subset(xp, select, run, y, z["zlp"], z["zlp_centre_eV"], z["fwhm_eV"])

    return fourier_log


#: The log-ratio thickness maps of a block. 4096 spectra per call on a CPU (whole blocks): the
#: kernel's per-call work (host checks, the bisections, the Fourier-log subset) does not pay on
#: cache-sized tiles of 128 spectra (measured 2.4x slower).
LOG_RATIO = BlockKernel(
    log_ratio_block,
    outputs=(
        _thickness_output("t_over_lambda"),
        ZLP_INTENSITY,
        ZLP_CENTRE,
        ZLP_FWHM,
        Output("valid", units="", long_name="usable pixel (no fatal quality bit)", dtype="bool"),
        QUALITY,
        _thickness_output("total_intensity"),
        _thickness_output("tail_fraction"),
        Output("tail_trusted", long_name="tail extrapolation trusted", dtype="bool"),
    ),
    tile_pixels=4096,
)


def kk_thickness_kernel(
    block: Any,
    energy_eV: Any,
    *,
    beam_energy_keV: float,
    collection_angle_mrad: float,
    kk_constant_nm_eV: float,
    method: str = "threshold",
    reference: Any = None,
    zlp_cube: Any = None,
    search_eV: tuple[float, float] | None = None,
    tail_fit_fraction: float = TAIL_FIT_FRACTION,
    axis_shift_eV: float = 0.0,
) -> dict[str, Any]:
    """Absolute thickness from the Kramers-Kronig sum rule, zero-loss model -> Fourier-log SSD ->
    eq. 29, in one kernel: ``t = A / N0 * sum SSD(E) / (E ln(1 + beta^2/theta_E^2))``.

    ``kk_constant_nm_eV`` is A of eq. 29 (nm eV): ``4 a0 F E0 / (1 - Re[1/eps(0)])`` with
    Re[1/eps(0)] = 1/n^2 (eq. 28) or 0 for a metal, or calibrated on a region of known thickness
    (:func:`eelsgpu.analysis.thickness.calibrate_kk_constant`). Also returns the log-ratio
    quantities of the same ZLP model (:func:`log_ratio_block`'s rules, tail ``"auto"``) and
    ``kk_integral`` (the sum over N0, 1/eV), which the calibrations use.

    The SSD is the band-limited one (zero loss at 0 eV, convolved with a Gaussian of each
    pixel's ZLP FWHM: no noise above the ZLP's band, and the integral kept), so the result does
    not depend on where the stored axis puts the ZLP; below a low-energy cut-off of 3 times the
    largest ZLP FWHM of the block (at least 1.5 eV) the loss function takes its small-E form
    (:func:`~.sum_rule.kk_sum_rule_integral`), so the zero-loss residue is not amplified by 1/E.
    """
    xp = array_namespace(block)
    zz = _zlp_for_block(
        block,
        energy_eV,
        method=method,
        reference=reference,
        zlp_cube=zlp_cube,
        search_eV=search_eV,
        axis_shift_eV=axis_shift_eV,
    )
    z = zz.z
    ok = z["valid"]
    n0 = z["zlp_intensity"]
    y = xp.where(ok[:, None], block, xp.zeros_like(block))
    zf = xp.where(ok[:, None] & xp.isfinite(z["zlp"]), z["zlp"], xp.zeros_like(y))
    c, w = z["zlp_centre_eV"], z["fwhm_eV"]
    tied = ((zf == y) & (zf != 0)) if method == "threshold" else None
    bl = fourier_log_kernel(
        y,
        zz.e,
        zf,
        output="band-limited",
        zlp_centre_eV=c,
        zlp_fwhm_eV=w,
        misfit=method != "cube",
        tied=tied,
    )
    w_max = float(xp.max(xp.where(ok, w, xp.zeros_like(w)))) if ok.shape[0] else 0.0
    cutoff = max(DEFAULT_LOW_ENERGY_CUTOFF_EV, 3.0 * w_max)
    integral = kk_sum_rule_integral(
        xp.astype(bl["ssd"], y.dtype), zz.e, beam_energy_keV, collection_angle_mrad, cutoff
    )
    ratio = integral / n0
    maps = log_ratio_maps(
        xp,
        block,
        zz.e,
        z,
        tail="auto",
        fit_fraction=tail_fit_fraction,
        fourier_log=_tail_from_ssd(xp, block, zz, method, tail_fit_fraction),
        noise=zz.checks["noise"],
    )
    ok = ok & bl["valid"]
    judged = maps["fourier_log_used"] & _has_ssd(xp, block, z)
    extra = {quality.NEGATIVE_LOBE: judged & (maps["negative_lobe"] > NEGATIVE_LOBE_LIMIT)}
    q = _quality(xp, zz, ok, maps, extra)
    q = quality.set_bit(xp, q, ok & ~(ratio > 0), quality.NEGATIVE_T_OVER_LAMBDA)
    nan = xp.full_like(n0, math.nan)
    return {
        "thickness_nm": xp.where(ok, kk_constant_nm_eV * ratio, nan),
        "kk_integral": xp.where(ok, ratio, nan),
        "t_over_lambda": xp.where(ok, maps["t_over_lambda"], nan),
        "zlp_intensity": xp.where(ok, n0, nan),
        "zlp_centre_eV": xp.where(ok, c + axis_shift_eV, nan),
        "zlp_fwhm_eV": xp.where(ok, w, nan),
        "valid": ok & _valid(xp, q),
        "quality": q,
    }


#: The KK thickness maps of a block (the engine's default tile size).
KK_THICKNESS = BlockKernel(
    kk_thickness_kernel,
    outputs=(
        _thickness_output("thickness_nm"),
        _thickness_output("t_over_lambda"),
        _thickness_output("kk_integral"),
        ZLP_INTENSITY,
        ZLP_CENTRE,
        ZLP_FWHM,
        Output("valid", units="", long_name="usable pixel (no fatal quality bit)", dtype="bool"),
        QUALITY,
    ),
)


# --------------------------------------------------------------------------- Kramers-Kronig
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
    "valid": ("", "pixel analysed (N0, SSD and normalisation usable)", "bool"),
}
#: Per-pixel spectra of the kernel, on the loss grid E_k = k dE, k >= 1.
CUBE_OUTPUTS: dict[str, tuple[str, str]] = {
    "eps1": ("", "eps1 = Re[eps]"),
    "eps2": ("", "eps2 = Im[eps]"),
    "loss_function": ("", "Im[-1/eps]"),
    "surface_intensity": ("counts", "surface-loss intensity I_S per channel (eq. 36)"),
    "refractive_index": ("", "refractive index n(E)"),
    "extinction_coefficient": ("", "extinction coefficient k(E)"),
    "absorption_coefficient": ("1/nm", "optical absorption coefficient mu(E)"),
    "n_eff": ("electrons/nm^3", "effective electron density n_eff(E) (f-sum rule)"),
}
DEFAULT_VARIABLES: tuple[str, ...] = tuple(CUBE_OUTPUTS) + tuple(MAP_OUTPUTS)


def kk_kernel(
    block,
    energy_eV,
    *,
    zlp_intensity=None,
    thickness_nm=None,
    valid=None,
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

    Parameters
    ----------
    block : array (n, n_E)
        SSD, counts per channel, loss axis ``energy_eV`` (eV) holding 0 eV.
    zlp_intensity : array (n,), optional
        N0 (counts); needed for the thickness, for ``thickness_nm`` and for the surface term.
    thickness_nm : array (n,), optional
        Known thickness (nm) to normalise by instead of n; t <= 0 or NaN (vacuum) is flagged.
    valid : array (n,), optional
        Pixels to analyse (others give NaN and ``valid`` False).
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
    variables : sequence of str
        Outputs to return (all of :data:`CUBE_OUTPUTS` and :data:`MAP_OUTPUTS` by default).

    Returns
    -------
    dict
        Maps (n,) and cubes (n, K - 1) on E_k = k dE, k = 1..K-1 (units in :data:`MAP_OUTPUTS`
        and :data:`CUBE_OUTPUTS`).

    The work is cut in three: :func:`_kk_inputs` (the SSD on the loss grid and the input
    masks), :func:`_kk_solve` (the pass of :func:`~.dielectric.kk_single_pass` and the
    surface correction of :func:`~.surface.solve_surface`) and :func:`_kk_derived` (the
    outputs and the optical quantities of :mod:`.optics`).
    """
    inputs = _kk_inputs(
        block,
        energy_eV,
        zlp_intensity=zlp_intensity,
        thickness_nm=thickness_nm,
        valid=valid,
        beam_energy_keV=beam_energy_keV,
        collection_angle_mrad=collection_angle_mrad,
        refractive_index=refractive_index,
        metal=metal,
        iterations=iterations,
        low_energy_cutoff_eV=low_energy_cutoff_eV,
    )
    settings = SurfaceSettings(
        collection_angle_mrad=collection_angle_mrad,
        iterations=int(iterations),
        min_thickness_nm=min_thickness_nm,
        thickness_tolerance=thickness_tolerance,
        eps_tolerance=eps_tolerance,
    )
    sol = _kk_solve(inputs, settings)
    return _kk_derived(
        inputs,
        sol,
        variables=variables,
        cerenkov_max_eV=cerenkov_max_eV,
        atom_density_per_nm3=atom_density_per_nm3,
    )


class _KKInputs(NamedTuple):
    """The block ready for the KK passes: ``setup`` (grid, N0, E0, normalisation), ``s0`` (n, K)
    the SSD on the loss grid (unusable rows zeroed), ``ok_in`` (n,) the pixels to analyse."""

    setup: KKSetup
    s0: Any
    ok_in: Any


def _kk_inputs(
    block: Any,
    energy_eV: Any,
    *,
    zlp_intensity: Any,
    thickness_nm: Any,
    valid: Any,
    beam_energy_keV: float,
    collection_angle_mrad: float,
    refractive_index: float | None,
    metal: bool,
    iterations: int,
    low_energy_cutoff_eV: float,
) -> _KKInputs:
    """The SSD on the loss grid, N0, the normalisation and the input masks of :func:`kk_kernel`."""
    xp, grid, kc, kf, s0, e, ang = ssd_on_loss_grid(
        block,
        energy_eV,
        beam_energy_keV=beam_energy_keV,
        collection_angle_mrad=collection_angle_mrad,
        low_energy_cutoff_eV=low_energy_cutoff_eV,
    )
    n_pix = s0.shape[0]
    dtype = s0.dtype
    one_minus = 1.0
    t_given = None
    if thickness_nm is not None:
        t_given = xp.astype(xp.asarray(thickness_nm), dtype)
    else:
        one_minus = sum_rule_normalisation(refractive_index, metal)
    if zlp_intensity is None:
        if t_given is not None or iterations > 0:
            raise MissingParameterError(
                "zlp_intensity (N0) is needed to normalise by thickness and for the surface term"
            )
        n0 = xp.full((n_pix,), math.nan, dtype=dtype)
    else:
        n0 = xp.astype(xp.asarray(zlp_intensity), dtype)
    ok_in = xp.ones((n_pix,), dtype=xp.bool)
    if valid is not None:
        ok_in = xp.asarray(valid) > 0.5 if valid.dtype != xp.bool else valid
    # any NaN in the SSD makes the pixel invalid; it is zeroed so it cannot poison the FFT
    finite = xp.all(xp.isfinite(s0), axis=-1)
    ok_in = ok_in & finite
    if not bool(xp.all(ok_in)):
        s0 = xp.where(ok_in[:, None], s0, xp.zeros_like(s0))
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
    )
    return _KKInputs(setup, s0, ok_in)


class _KKSolution(NamedTuple):
    """The solved block: ``state`` (eps, loss function, Re[1/eps], t, Re[1/eps(0)]), ``ok`` (n,),
    the surface correction's ``surface`` (n, K), ``iterations``, ``status``, ``converged`` (n,),
    and the uncorrected pass's ``tail_coefficient`` and ``integral`` (n,)."""

    state: KKState
    ok: Any
    surface: Any
    iterations: Any
    status: Any
    converged: Any
    tail_coefficient: Any
    integral: Any


def _kk_solve(inputs: _KKInputs, settings: SurfaceSettings) -> _KKSolution:
    """One KK pass of the block, then the surface correction when ``settings.iterations`` > 0."""
    setup, s0 = inputs.setup, inputs.s0
    xp = setup.xp
    n_pix = s0.shape[0]
    loss, re_inv, t, re0, ok, a_tail, j = kk_single_pass(setup, s0)
    ok = ok & inputs.ok_in
    eps1, eps2 = eps_from_inverse(re_inv, loss)
    state = KKState(eps1, eps2, loss, re_inv, t, re0)
    surface = xp.zeros_like(s0)
    n_iter = xp.zeros((n_pix,), dtype=xp.int32)
    status = xp.zeros((n_pix,), dtype=xp.int32)
    converged = xp.zeros((n_pix,), dtype=xp.bool)
    if settings.iterations > 0:
        state, surface, n_iter, status, converged = solve_surface(setup, s0, state, ok, settings)
    return _KKSolution(state, ok, surface, n_iter, status, converged, a_tail, j)


def _kk_derived(
    inputs: _KKInputs,
    sol: _KKSolution,
    *,
    variables: Sequence[str],
    cerenkov_max_eV: float,
    atom_density_per_nm3: float | None,
) -> dict[str, Any]:
    """The outputs of :func:`kk_kernel` asked for in ``variables``, on the output grid k >= 1."""
    setup = inputs.setup
    xp, e, grid, kc = setup.xp, setup.e, setup.grid, setup.kc
    eps1, eps2, loss, _, t, re0 = sol.state
    ok = sol.ok
    want = set(variables)
    out: dict[str, Any] = {}
    sl = slice(1, grid.n)  # output grid: k >= 1 (eps is undefined at E = 0 for a metal)
    e_out = e[sl]
    all_ok = bool(xp.all(ok))  # skips the NaN masking passes in the usual case

    def cube(x):
        x = x[:, sl]
        return x if all_ok else xp.where(ok[:, None], x, xp.full_like(x, math.nan))

    def pmap(x):
        return xp.where(ok, x, xp.full_like(x, math.nan))

    out["eps1"] = cube(eps1)
    out["eps2"] = cube(eps2)
    out["loss_function"] = cube(loss)
    out["surface_intensity"] = cube(sol.surface)
    out["thickness_nm"] = pmap(t)
    out["re_inverse_eps0"] = pmap(re0)
    re0_safe = xp.where(re0 > 0, re0, xp.full_like(re0, math.nan))
    out["static_refractive_index"] = pmap(1.0 / xp.sqrt(re0_safe))
    out["iterations"] = sol.iterations
    out["converged"] = sol.converged & ok
    out["surface_status"] = sol.status
    out["valid"] = ok
    e1, e2 = out["eps1"], out["eps2"]  # NaN where not ok, so the derived cubes are too
    if want & {"refractive_index", "extinction_coefficient", "absorption_coefficient"}:
        n_e, k_e = refractive_index_nk(e1, e2)
        out["refractive_index"] = n_e
        out["extinction_coefficient"] = k_e
        out["absorption_coefficient"] = absorption_coefficient_per_nm(k_e, e_out)
    if "n_eff" in want:
        out["n_eff"] = effective_electron_density(
            e2, e_out, grid.dispersion_eV, atom_density_per_nm3
        )
    lo = xp.arange(grid.n - 1) >= (kc - 1)  # E >= E_c on the output grid
    if "plasmon_energy_eV" in want:
        out["plasmon_energy_eV"] = pmap(plasmon_energy_eV(xp, e1, loss[:, sl], e_out, lo))
    if "loss_peak_eV" in want:
        out["loss_peak_eV"] = pmap(loss_peak_eV(xp, loss[:, sl], e_out, lo))
    if "cerenkov" in want:
        k0 = kc - 1
        k1 = max(k0 + 1, min(grid.n - 1, int(math.floor(cerenkov_max_eV / grid.dispersion_eV))))
        out["cerenkov"] = ok & cerenkov_condition(e1, k0, k1, setup.beam_energy_keV)
    if "tail_decayed" in want:
        out["tail_decayed"] = ok & tail_decayed(
            xp, loss, lo, sol.tail_coefficient, sol.integral, grid
        )
    return {k: v for k, v in out.items() if k in want}


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
            outputs.append(Output(name, units=units, long_name=long_name, dtype=dtype))
    return outputs


def kk_declaration(energy_out_eV: Any) -> BlockKernel:
    """The declaration of :func:`kk_kernel` whose cubes lie on ``energy_out_eV`` (the loss grid
    k dE, k >= 1, eV: ``loss_grid(energy).energy_eV[1:]``); the outputs are the ``variables``
    parameter's (with ``n_eff`` per atom given ``atom_density_per_nm3``). Engine's default tile."""
    return BlockKernel(kk_kernel, outputs=functools.partial(_kk_outputs, energy_out_eV))
