"""The composite per-block kernels of the low-loss analyses, each with its declaration.

Each analysis of :mod:`eelsgpu.analysis` (ZLP alignment, deconvolution, thickness) runs one block
kernel here through :func:`eelsgpu.engine.apply_kernel`; the kernel composes the per-equation
kernels (:mod:`.zlp`, :mod:`.fourier_log`, :mod:`.log_ratio`, :mod:`.sum_rule`) and comes declared as a
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
==========================  ==================================  ===========================

The outputs several analyses share are declared once (:data:`ZLP_INTENSITY`,
:data:`ZLP_CENTRE`). The Kramers-Kronig block kernel lives in :mod:`.blocks_kk`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .._xp import array_namespace, axis_step
from .declare import BlockKernel, Output
from .fourier_log import fourier_log_kernel
from .log_ratio import log_ratio_kernel, log_ratio_with_ssd_tail, ssd_t_over_lambda
from .sum_rule import kk_sum_rule_integral
from .tails import TAIL_FIT_FRACTION
from .zlp import SEARCH_EV, centre_kernel, shift_kernel, zlp_kernel

__all__ = [
    "DECONVOLVE",
    "KK_THICKNESS",
    "LOG_RATIO",
    "ZLP_CENTRE",
    "ZLP_CENTRES",
    "ZLP_INTENSITY",
    "align_block",
    "align_declaration",
    "centres_block",
    "deconvolve_block",
    "kk_thickness_kernel",
    "log_ratio_block",
]

#: N0 and the ZLP centre, as every low-loss analysis returns them.
ZLP_INTENSITY = Output("zlp_intensity", units="counts", long_name="zero-loss intensity N0")
ZLP_CENTRE = Output("zlp_centre_eV", units="eV", long_name="zero-loss peak centre")


# --------------------------------------------------------------------------- ZLP alignment
def centres_block(block: Any, energy_eV: Any, *, search_eV: tuple[float, float]) -> dict[str, Any]:
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
    search_eV: tuple[float, float],
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
    "reconvolved-zlp": "single-scattering distribution reconvolved with the ZLP",
    "reconvolved-gaussian": "single-scattering distribution reconvolved with a Gaussian",
    "residual": "plural-scattering residual (data - ZLP - SSD reconvolved with the ZLP)",
}


def deconvolve_block(
    block: Any,
    energy_eV: Any,
    *,
    zlp_cube: Any = None,
    method: str = "mirror",
    reference: Any = None,
    search_eV: tuple[float, float] = (-5.0, 5.0),
    output: str = "reconvolved-zlp",
    fwhm_eV: float | None = None,
    extrapolation: str = "power-law",
    pad_to: int | None = None,
) -> dict[str, Any]:
    """One pass per block: the ZLP model (:func:`~.zlp.zlp_kernel`), then eq. 22
    (:func:`~.fourier_log.fourier_log_kernel`), and beside it the log-ratio t/lambda (eq. 16,
    :func:`~.log_ratio.log_ratio_with_ssd_tail`) but for ``output="residual"``.

    Counts per channel in; ``ssd`` (n, n_E) in counts per channel, ``zlp_intensity`` (counts),
    ``zlp_centre_eV`` (eV), ``valid``, ``t_over_lambda`` (n,).
    """
    xp = array_namespace(block)
    centre = centre_kernel(block, energy_eV, search_eV=search_eV)
    z = zlp_kernel(
        block,
        energy_eV,
        method=method,
        reference=reference,
        zlp_cube=zlp_cube,
        search_eV=search_eV,
        centre=centre,
    )
    fl = fourier_log_kernel(
        block,
        energy_eV,
        z["zlp"],
        output=output,
        fwhm_eV=fwhm_eV,
        extrapolation=extrapolation,
        pad_to=pad_to,
    )
    valid = z["valid"] & fl["valid"]
    nan = float("nan")
    out = {
        "ssd": fl["ssd"],
        "zlp_intensity": xp.where(valid, z["zlp_intensity"], nan),
        "zlp_centre_eV": xp.where(valid, z["zlp_centre_eV"], nan),
        "valid": valid,
    }
    if output != "residual":
        # N0 by truncation for the log-ratio: the model itself when it is the truncation
        thr = z
        if method != "threshold":
            thr = zlp_kernel(
                block,
                energy_eV,
                method="threshold",
                search_eV=search_eV,
                return_model=False,
                centre=centre,
            )
        out["t_over_lambda"] = xp.where(
            valid,
            log_ratio_with_ssd_tail(block, energy_eV, z, thr, fl["ssd"], output),
            nan,
        )
    return out


def _deconvolve_outputs(params: Mapping[str, Any]) -> list[Output]:
    output = params.get("output", "reconvolved-zlp")
    outputs = [
        Output(
            "ssd",
            units="counts",
            long_name=DECONVOLVE_LONG_NAMES[output],
            axis="energy",
            attrs={"output": output},
        ),
        ZLP_INTENSITY,
        ZLP_CENTRE,
        Output("valid", units="", long_name="usable pixel", dtype="bool"),
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


def log_ratio_block(block: Any, energy_eV: Any, *, zlp_cube: Any = None, **params: Any) -> dict:
    """:func:`~.log_ratio.log_ratio_kernel` without its ZLP model (the maps only)."""
    out = log_ratio_kernel(block, energy_eV, zlp_cube=zlp_cube, **params)
    out.pop("zlp")
    return out


#: The log-ratio thickness maps of a block. 4096 spectra per call on a CPU (whole blocks): the
#: kernel's per-call work (host checks, the bisections, the Fourier-log subset) does not pay on
#: cache-sized tiles of 128 spectra (measured 2.4x slower).
LOG_RATIO = BlockKernel(
    log_ratio_block,
    outputs=(
        _thickness_output("t_over_lambda"),
        ZLP_INTENSITY,
        ZLP_CENTRE,
        _thickness_output("valid", "bool"),
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
    method: str = "mirror",
    reference: Any = None,
    zlp_cube: Any = None,
    search_eV: tuple[float, float] = SEARCH_EV,
    tail_fit_fraction: float = TAIL_FIT_FRACTION,
) -> dict[str, Any]:
    """Absolute thickness from the Kramers-Kronig sum rule, zero-loss model -> Fourier-log SSD ->
    eq. 29, in one kernel: ``t = A / N0 * sum SSD(E) / (E ln(1 + beta^2/theta_E^2))``.

    ``kk_constant_nm_eV`` is A of eq. 29 (nm eV): ``4 a0 F E0 / (1 - Re[1/eps(0)])`` with
    Re[1/eps(0)] = 1/n^2 (eq. 28) or 0 for a metal, or calibrated on a region of known thickness
    (:func:`eelsgpu.analysis.thickness.calibrate_kk_constant`). Also returns the log-ratio quantities and ``kk_integral``
    (the sum over N0, 1/eV), which the calibrations use. The SSD needs a resolution function:
    with ``method="threshold"`` (a truncated spectrum, not a ZLP shape) the mirror model is used.
    """
    xp = array_namespace(block)
    # the truncation model is no resolution function: the mirror stands in for it here
    z = zlp_kernel(
        block,
        energy_eV,
        method="mirror" if method == "threshold" else method,
        reference=reference,
        zlp_cube=zlp_cube,
        search_eV=search_eV,
    )
    valid = z["valid"]
    n0 = z["zlp_intensity"]
    y = xp.where(valid[:, None], block, xp.zeros_like(block))
    zf = xp.where(valid[:, None], z["zlp"], xp.zeros_like(y))
    tl, _, _, _ = ssd_t_over_lambda(xp, y, energy_eV, zf, n0, tail_fit_fraction)
    # the SSD reconvolved with the ZLP (Egerton's choice for noisy data): the raw SSD's
    # high-frequency noise would swing the 1/E-weighted integral by tens of percent
    ssd = fourier_log_kernel(y, energy_eV, zf, output="reconvolved-zlp")["ssd"]
    ssd = xp.astype(ssd, y.dtype)
    integral = kk_sum_rule_integral(ssd, energy_eV, beam_energy_keV, collection_angle_mrad)
    ratio = integral / n0
    nan = xp.full_like(n0, math.nan)
    return {
        "thickness_nm": xp.where(valid, kk_constant_nm_eV * ratio, nan),
        "kk_integral": xp.where(valid, ratio, nan),
        "t_over_lambda": xp.where(valid, tl, nan),
        "zlp_intensity": n0,
        "zlp_centre_eV": z["zlp_centre_eV"],
        "valid": valid,
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
        _thickness_output("valid", "bool"),
    ),
)
