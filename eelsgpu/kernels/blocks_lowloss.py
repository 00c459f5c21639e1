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
from typing import Any, NamedTuple

from .._xp import array_namespace, axis_step
from . import quality
from ._sync import host_axis, host_decides
from .declare import BlockKernel, Output
from .fourier_log import RINGING_LIMIT, fourier_log_kernel
from .log_ratio import (
    TAILS,
    SsdTail,
    _on_subset,
    fourier_log_tail,
    log_ratio_maps,
    ssd_for_tail,
    ssd_tail_sums,
)
from .loss_grid import DEFAULT_LOW_ENERGY_CUTOFF_EV
from .sum_rule import kk_sum_rule_integral
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
    out = shift_kernel(y, xp.where(valid, c, 0.0), method, dispersion_eV=d, fill_value=fill_value)
    out = out[:, lo:hi]
    if not bool(xp.all(valid)):
        out = xp.where(valid[:, None], out, math.nan)
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
    """A block's ZLP on the kernel's axis: the axis ``e`` (stored axis minus the shift) and its
    first energy and channel width ``axis`` (eV, host floats), the centre, the model ``z``, the
    truncation ``thr``, its checks and the background test; ``e_block`` the axis ``e`` in the
    block's dtype (cast once)."""

    e: Any
    axis: tuple[float, float]
    centre: dict[str, Any]
    z: dict[str, Any]
    thr: dict[str, Any]
    checks: dict[str, Any]
    background: dict[str, Any]
    e_block: Any = None


def _zlp_for_block(
    block: Any,
    energy_eV: Any,
    *,
    method: str,
    reference: Any,
    zlp_cube: Any,
    search_eV: tuple[float, float] | None,
    axis_shift_eV: float,
    axis_eV: tuple[float, float] | None = None,
    return_model: bool = True,
) -> _Zlp:
    """The ZLP of every pixel on the axis shifted by ``axis_shift_eV`` (so zero loss sits near
    0 eV even where the stored axis is off), with its per-pixel checks
    (:func:`~.zlp.zlp_model_checks`, :func:`~.zlp.background_check`). ``search_eV`` and
    ``axis_eV`` (the first energy and channel width, host floats; None: read from the axis) are
    on the stored axis; the channel noise is measured once here (by the centre) for every
    step of the block."""
    e = energy_eV - axis_shift_eV if axis_shift_eV else energy_eV
    e0, d = host_axis(energy_eV, axis_eV)
    axis = (e0 - axis_shift_eV, d)
    search = None
    if search_eV is not None:
        search = (float(search_eV[0]) - axis_shift_eV, float(search_eV[1]) - axis_shift_eV)
    # the axis in the block's dtype, cast once: every step of the ZLP stage casts its axis to the
    # block's dtype (a cast of this one is no copy), and its host numbers come from ``axis``
    # (the reference model keeps the axis as given: it casts it to the reference's dtype)
    xp = array_namespace(block)
    ef = xp.astype(e, block.dtype, copy=False)
    centre = centre_kernel(block, ef, search_eV=search, axis_eV=axis)
    z = zlp_kernel(
        block,
        e if method == "reference" else ef,
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
            block, ef, method="threshold", search_eV=search, return_model=False, centre=centre
        )
    # (the block with non-finite counts zeroed, made once by the centre: None where no ZLP
    # could be looked for)
    finite = centre.get("finite")
    if return_model:
        checks = zlp_model_checks(block, ef, z, thr, method, finite=finite)
    else:  # (the truncation's own check needs no model)
        checks = zlp_model_checks(block, ef, thr, thr, "threshold", finite=finite)
    background = background_check(
        block, ef, z["zlp_centre_eV"], z["fwhm_eV"], noise=checks["noise"], finite=finite
    )
    # the ZLP is off a calibrated axis where its centre on the stored axis is
    c_stored = z["zlp_centre_eV"] + axis_shift_eV if axis_shift_eV else z["zlp_centre_eV"]
    z = dict(z)
    z["axis_offset"] = z["valid"] & ((c_stored < SEARCH_EV[0]) | (c_stored > SEARCH_EV[1]))
    return _Zlp(e, axis, centre, z, thr, checks, background, ef)


def _quality(xp: Any, zz: _Zlp, ok: Any, maps: dict[str, Any] | None, extra: dict[str, Any]) -> Any:
    """The per-pixel quality bitmask (:mod:`.quality`) of a thickness or deconvolution block:
    ``ok`` (n,) where the computation itself succeeded (else NO_ZLP alone), ``maps`` the
    log-ratio's tail flags (:func:`~.log_ratio.log_ratio_maps`), ``extra`` more conditions by
    bit.

    In a fixed number of operations, whatever the number of bits: the conditions of each bit
    (several for one bit: OR-ed) stacked as columns, and the mask the sum of the bits of the
    columns that hold (the bits are distinct powers of two, so the sum is their OR); a pixel
    that is not ``ok`` gets NO_ZLP alone."""
    conditions: dict[int, Any] = {}

    def add(bit: int, condition: Any) -> None:
        conditions[bit] = condition if bit not in conditions else conditions[bit] | condition

    add(quality.ZLP_MISMATCH, zz.checks["mismatch"])
    add(quality.UNPHYSICAL_BACKGROUND, zz.background["unphysical"])
    add(quality.AXIS_OFFSET, zz.z["axis_offset"])
    if maps is not None:
        add(quality.NEGATIVE_TAIL, maps["negative_tail"])
        add(quality.TAIL_UNTRUSTED, maps["tail_untrusted"])
        add(quality.NEGATIVE_T_OVER_LAMBDA, maps["negative_t_over_lambda"])
    for bit, condition in extra.items():
        add(bit, condition)
    bits = xp.asarray(list(conditions), dtype=xp.uint32)
    held = xp.stack(list(conditions.values()), axis=-1)  # (n, bits)
    q = xp.sum(xp.where(held, bits, 0), axis=-1, dtype=xp.uint32)
    return xp.where(ok, q, quality.NO_ZLP)


def _has_ssd(xp: Any, block: Any, z: dict[str, Any], finite: Any = None) -> Any:
    """Pixels with an SSD to judge (ringing, negative lobes): a window log-ratio of at least
    :data:`VACUUM_T_OVER_LAMBDA`; a vacuum pixel's SSD is noise around zero, with no peak to
    measure it against. ``finite``: the block with non-finite counts zeroed when made (only the
    rows of pixels with a ZLP count; any block whose rows agree there gives the same)."""
    if finite is None:
        finite = xp.where(xp.isfinite(block), block, 0.0)
    window = xp.sum(finite, axis=-1)
    # (N0 is NaN where the ZLP is not valid: those rows take 1, as the test below says)
    n0 = z["zlp_intensity"]
    ratio = xp.where(z["valid"] & (window > 0) & (n0 > 0), window / n0, 1.0)
    return xp.log(ratio) >= VACUUM_T_OVER_LAMBDA


def _fourier_log_of_block(
    xp: Any, block: Any, zz: _Zlp, method: str, **options: Any
) -> tuple[Any, Any, dict[str, Any]]:
    """Eq. 22 (:func:`~.fourier_log.fourier_log_kernel`) of a block with its ZLP model ``zz``:
    the spectra with a ZLP (others zeroed), the model (non-finite channels zeroed), and the
    kernel's result for ``options`` (``output=``...); the measured misfit weights every model
    but a given cube, and the truncation's channels that are the data themselves are tied."""
    z = zz.z
    model = z["zlp"]
    if host_decides(xp) and block.dtype.kind == "f" and bool(xp.all(z["valid"])):
        # NumPy, every pixel with a ZLP: the block itself, and the model itself where it is all
        # finite (one summing pass instead of a test and a copy each)
        y = block
        whole = model.dtype.kind == "f" and math.isfinite(float(xp.sum(model)))
        zf = model if whole else xp.where(xp.isfinite(model), model, 0.0)
    else:
        y = xp.where(z["valid"][:, None], block, 0.0)
        zf = xp.where(z["valid"][:, None] & xp.isfinite(z["zlp"]), z["zlp"], 0.0)
    tied = ((zf == y) & (zf != 0)) if method == "threshold" else None
    fl = fourier_log_kernel(
        y,
        zz.e_block,  # (the axis in the block's dtype: the kernel casts it to that)
        zf,
        zlp_centre_eV=z["zlp_centre_eV"],
        zlp_fwhm_eV=z["fwhm_eV"],
        misfit=method != "cube",
        tied=tied,
        axis_eV=zz.axis,
        **options,
    )
    return y, zf, fl


def _ssd_tail(
    xp: Any, y: Any, zz: _Zlp, raw: dict[str, Any], raw_ssd: Any, fit_fraction: float
) -> tuple[SsdTail, Any]:
    """The ``ssd_tail`` of :func:`~.log_ratio.log_ratio_maps` from a Fourier-log pass over every
    row of the block (its raw SSD ``raw_ssd``, N0 and negative lobe in ``raw``): the SSD's
    power-law fits, solved there in one batch with the spectrum's own."""
    prep = ssd_tail_sums(
        raw_ssd,
        zz.e if raw_ssd.dtype != zz.e_block.dtype else zz.e_block,  # (cast to the SSD's dtype)
        raw["zlp_intensity"],
        xp.sum(y, axis=-1),
        fit_fraction=fit_fraction,
        axis_eV=zz.axis,
    )
    return prep, raw["negative_lobe"]


def _log_ratio_of_block(
    xp: Any,
    block: Any,
    zz: _Zlp,
    method: str,
    tail: str,
    fit_fraction: float,
    raw: tuple[Any, dict[str, Any], Any] | None = None,
) -> dict[str, Any]:
    """The log-ratio maps (eq. 16, :func:`~.log_ratio.log_ratio_maps`) of a block with its ZLP
    model ``zz``, the tail beyond the window from the power law or the Fourier-log SSD of the
    pixels that need it. ``raw`` = (the spectra with a ZLP, a Fourier-log pass over every row
    with metrics, its raw SSD) when the block made one: its SSD's tail is solved with the power
    law in one batch. Without it, on NumPy the SSD is made for the pixels whose power law fails
    only (:func:`_tail_from_ssd`); on a device (where a subset is a sync and the block's
    operations must not depend on its data) for every pixel, and then solved in one batch too."""
    if raw is None and tail in ("auto", "fourier-log") and not host_decides(xp):
        y, _, fl = _fourier_log_of_block(xp, block, zz, method, output="ssd", metrics=True)
        raw = (y, fl, fl["ssd"])
    ssd_tail = None
    if raw is not None and tail in ("auto", "fourier-log"):
        ssd_tail = _ssd_tail(xp, raw[0], zz, raw[1], raw[2], fit_fraction)
    return log_ratio_maps(
        xp,
        block,
        zz.e_block,  # (the axis in the block's dtype: log_ratio_maps casts it to that)
        zz.z,
        tail=tail,
        fit_fraction=fit_fraction,
        fourier_log=_tail_from_ssd(xp, block, zz, method, fit_fraction),
        ssd_tail=ssd_tail,
        noise=zz.checks["noise"],
        axis_eV=zz.axis,
    )


def _thickness_quality(
    xp: Any,
    block: Any,
    zz: _Zlp,
    ok: Any,
    maps: dict[str, Any],
    more: dict[int, Any] | None = None,
) -> Any:
    """The quality bitmask of a thickness block (:func:`_quality`), with NEGATIVE_LOBE where the
    tail came from a Fourier-log SSD whose lobe exceeds :data:`NEGATIVE_LOBE_LIMIT`, and the
    conditions ``more`` (by bit)."""
    judged = maps["fourier_log_used"] & _has_ssd(xp, block, zz.z, zz.centre.get("finite"))
    extra = {quality.NEGATIVE_LOBE: judged & (maps["negative_lobe"] > NEGATIVE_LOBE_LIMIT)}
    extra.update(more or {})
    return _quality(xp, zz, ok, maps, extra)


def _where_ok(xp: Any, ok: Any, cols: list[Any]) -> list[Any]:
    """Each (n,) map of ``cols`` where ``ok`` (n,) holds, NaN elsewhere: one ``where`` over
    their stack (two operations, whatever their number; the maps are column views of it)."""
    masked = xp.where(ok[:, None], xp.stack(cols, axis=-1), math.nan)
    return [masked[:, i] for i in range(len(cols))]


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
    axis_eV: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """One pass per block: the ZLP model and its checks, then eq. 22
    (:func:`~.fourier_log.fourier_log_kernel`) with the raw SSD's figures of merit, and beside
    it the log-ratio t/lambda (eq. 16) of the same ZLP model with its tail from that raw SSD
    (:func:`~.log_ratio.log_ratio_maps`, exactly what ``thickness`` computes) but for
    ``output="residual"``.

    Energies are on the stored axis minus ``axis_shift_eV`` (a whole number of channels, chosen
    by the analysis so that zero loss sits near 0 eV where the stored axis is off); the aligned
    outputs (:data:`ALIGNED_OUTPUTS`) lie on that axis, ``zlp_centre_eV`` on the stored one;
    ``energy_coord_eV`` is that shifted axis for the declaration (the kernel does not use it);
    ``axis_eV`` the stored axis' first energy and channel width (eV, host floats: the analysis
    passes them so that no device array is read back; None: read from the axis).

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
        axis_eV=axis_eV,
    )
    z = zz.z
    c, w = z["zlp_centre_eV"], z["fwhm_eV"]
    # the raw SSD exactly as thickness makes it for its tail (ssd_for_tail); the requested output
    # from the same pass where the options allow
    same = extrapolation == "power-law" and pad_to is None
    y, zf, fl = _fourier_log_of_block(
        xp,
        block,
        zz,
        method,
        output=output,
        fwhm_eV=fwhm_eV,
        extrapolation=extrapolation,
        pad_to=pad_to,
        metrics=same,
    )
    raw = fl if same else ssd_for_tail(xp, y, zz.e, zf, c, w, method, axis_eV=zz.axis)
    raw_ssd = raw["ssd"] if output == "ssd" and same else raw.get("raw_ssd", raw["ssd"])
    ok = z["valid"] & fl["valid"] & raw["valid"]
    maps = None
    if output != "residual":
        # the tail beyond the window from this pass's raw SSD, solved with the power law's
        maps = _log_ratio_of_block(
            xp, block, zz, method, "auto", TAIL_FIT_FRACTION, raw=(y, raw, raw_ssd)
        )
    # (y is the block on the rows with a ZLP, the only rows _has_ssd counts)
    judged = _has_ssd(xp, y, z, zz.centre.get("finite"))
    extra = {
        quality.RINGING: judged & (raw["ringing"] > RINGING_LIMIT),
        quality.NEGATIVE_LOBE: judged & (raw["negative_lobe"] > NEGATIVE_LOBE_LIMIT),
    }
    q = _quality(xp, zz, ok, maps, extra)
    valid = _valid(xp, q)  # (a pixel not ok carries NO_ZLP, a fatal bit)
    # the per-pixel maps NaN where not ok, in one where over their stack (columns: views)
    names = ["zlp_intensity", "zlp_centre_eV", "zlp_fwhm_eV", "resolution_eV"]
    cols = [z["zlp_intensity"], c + axis_shift_eV if axis_shift_eV else c, w, fl["resolution_eV"]]
    if maps is not None:
        names.append("t_over_lambda")
        cols.append(maps["t_over_lambda"])
    masked = _where_ok(xp, ok, cols)
    out = {"ssd": fl["ssd"], **dict(zip(names, masked, strict=True))}
    out["valid"] = valid
    out["quality"] = q
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
#: Device bytes one spectrum of these kernels holds at its peak (2048 float32 channels), measured
#: with the counting stand-in on a 1024-spectrum block (bench_gpu_budget.py) plus 10 %: one pass
#: per block on a device (no row tiling) holds about 36 block-sized float32 rows at once.
_PEAK_DECONVOLVE, _PEAK_LOG_RATIO, _PEAK_KK_THICKNESS = 325_000, 336_000, 325_000

DECONVOLVE = BlockKernel(
    deconvolve_block,
    outputs=_deconvolve_outputs,
    tile_pixels=512,
    peak_bytes_per_spectrum=_PEAK_DECONVOLVE,
)


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
    axis_eV: tuple[float, float] | None = None,
) -> dict:
    """The log-ratio thickness maps of a block (eq. 16): the ZLP model and its checks
    (:func:`_zlp_for_block`), the maps of :func:`~.log_ratio.log_ratio_maps` with the
    Fourier-log tail from :func:`~.log_ratio.ssd_for_tail` on the pixels that need it
    (:func:`_log_ratio_of_block`), and the quality bitmask. Energies (and ``axis_eV``) as in
    :func:`deconvolve_block`."""
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
        axis_eV=axis_eV,
    )
    z = zz.z
    maps = _log_ratio_of_block(xp, block, zz, method, tail, tail_fit_fraction)
    ok = z["valid"]
    q = _thickness_quality(xp, block, zz, ok, maps)
    return {
        "t_over_lambda": maps["t_over_lambda"],
        "zlp_intensity": z["zlp_intensity"],
        # (the ZLP kernel's centre is NaN already where it is not valid)
        "zlp_centre_eV": z["zlp_centre_eV"] + axis_shift_eV
        if axis_shift_eV
        else z["zlp_centre_eV"],
        "zlp_fwhm_eV": z["fwhm_eV"],
        "valid": _valid(xp, q),  # (a pixel not ok carries NO_ZLP, a fatal bit)
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
            ssd = ssd_for_tail(xp, y, zz.e, model, c, w, method, axis_eV=zz.axis)
            beyond, sd = fourier_log_tail(
                ssd["ssd"],
                zz.e,
                ssd["zlp_intensity"],
                xp.sum(y, axis=-1),
                fit_fraction=fit_fraction,
                axis_eV=zz.axis,
            )
            return {"beyond": beyond, "sd": sd, "negative_lobe": ssd["negative_lobe"]}

        y = xp.where(z["valid"][:, None], block, 0.0)
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
    peak_bytes_per_spectrum=_PEAK_LOG_RATIO,
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
    axis_eV: tuple[float, float] | None = None,
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
    not depend on where the stored axis puts the ZLP (the same pass gives the raw SSD of the
    log-ratio's tail); below a low-energy cut-off of 3 times the
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
        axis_eV=axis_eV,
    )
    z = zz.z
    ok = z["valid"]
    n0 = z["zlp_intensity"]
    c, w = z["zlp_centre_eV"], z["fwhm_eV"]
    # one pass gives the band-limited SSD and the raw one the log-ratio's tail is taken from
    y, _, bl = _fourier_log_of_block(xp, block, zz, method, output="band-limited", metrics=True)
    # (the cut-off is a host number of kk_sum_rule_integral: one sync)
    w_max = float(xp.max(xp.where(ok, w, 0.0))) if ok.shape[0] else 0.0
    cutoff = max(DEFAULT_LOW_ENERGY_CUTOFF_EV, 3.0 * w_max)
    integral = kk_sum_rule_integral(
        xp.astype(bl["ssd"], y.dtype, copy=False),
        zz.e,
        beam_energy_keV,
        collection_angle_mrad,
        cutoff,
    )
    ratio = integral / n0
    maps = _log_ratio_of_block(
        xp, block, zz, method, "auto", tail_fit_fraction, raw=(y, bl, bl["raw_ssd"])
    )
    ok = ok & bl["valid"]
    q = _thickness_quality(xp, block, zz, ok, maps, {quality.NEGATIVE_T_OVER_LAMBDA: ~(ratio > 0)})
    names = ["thickness_nm", "kk_integral", "t_over_lambda", "zlp_intensity"]
    names += ["zlp_centre_eV", "zlp_fwhm_eV"]
    cols = [kk_constant_nm_eV * ratio, ratio, maps["t_over_lambda"], n0]
    cols += [c + axis_shift_eV if axis_shift_eV else c, w]
    out = dict(zip(names, _where_ok(xp, ok, cols), strict=True))
    out["valid"] = _valid(xp, q)  # (a pixel not ok carries NO_ZLP, a fatal bit)
    out["quality"] = q
    return out


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
    peak_bytes_per_spectrum=_PEAK_KK_THICKNESS,
)
