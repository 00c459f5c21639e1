"""The zero-loss peak on spectrum images: ``zlp=`` of the public functions, and alignment to 0 eV.

* :func:`resolve_zlp`: turns a user's ``zlp=`` (a method name, a reference spectrum, or a
  per-pixel ZLP cube) into kernel parameters, for every public function that takes ``zlp=``;
* :func:`align_zlp`: the public alignment of a spectrum image so the ZLP sits at 0 eV.

The kernels (the centre, the shift, the ZLP models; kk-theory.md eqs. 13-14) are in
:mod:`eelsgpu.kernels.zlp`. When no pixel at all has a ZLP, the public functions raise
:class:`~eelsgpu.errors.NoZeroLossPeakError` naming the file.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from .. import engine
from ..errors import InputError
from ..kernels.blocks_lowloss import ZLP_CENTRES, align_declaration
from ..model import energy_axis
from ._lowloss import check_any_valid, search_range, source_name, spectrum_input

__all__ = ["align_zlp", "resolve_zlp"]


def resolve_zlp(si: xr.DataArray, zlp: Any = "mirror") -> tuple[dict[str, Any], dict[str, Any]]:
    """Turn a user's ``zlp=`` into keyword arguments for :func:`~eelsgpu.kernels.zlp.zlp_kernel`
    and engine extras.

    Every public function that takes ``zlp=`` (thickness, deconvolve, kramers_kronig) calls this:

    * a method name (``"mirror"``, ``"fit"``, ``"threshold"``) -> ``({"method": name}, {})``;
    * a single reference spectrum (1-D NumPy array or DataArray with the data's number of
      channels; a DataArray with an ``energy`` coordinate is interpolated onto the data's axis)
      -> ``({"method": "reference", "reference": array}, {})``, applied to every pixel, shifted and
      scaled;
    * a per-pixel ZLP cube of the data's shape (array or DataArray, e.g. another program's ZLP
      model) -> ``({"method": "cube"}, {"zlp_cube": cube})``; pass the extras to
      :func:`eelsgpu.engine.apply_kernel` (it chunks them like the data) and the kernel gets
      ``zlp_cube=`` block by block.

    Returns
    -------
    (kernel_params, extras) : (dict, dict)

    Raises
    ------
    InputError
        A shape that is neither, or an unknown method name.

    Examples
    --------
    >>> import numpy as np
    >>> from eelsgpu.model import spectrum_image
    >>> si = spectrum_image(np.ones((2, 3, 8)), np.arange(8.0) - 2)
    >>> resolve_zlp(si, "fit")
    ({'method': 'fit'}, {})
    >>> params, extras = resolve_zlp(si, np.ones(8))
    >>> params["method"], extras
    ('reference', {})
    """
    if isinstance(zlp, str):
        if zlp not in ("mirror", "fit", "threshold"):
            raise InputError(
                f"zlp must be 'mirror', 'fit', 'threshold', a reference spectrum or a ZLP cube, "
                f"not {zlp!r}"
            )
        return {"method": zlp}, {}
    shape = tuple(si.shape)
    if isinstance(zlp, xr.DataArray):
        if zlp.ndim == 1 and "energy" in zlp.coords and zlp.sizes.get("energy") is not None:
            e_ref = np.asarray(zlp["energy"].values, dtype=np.float64)
            e_dat = np.asarray(si["energy"].values, dtype=np.float64)
            if e_ref.shape != e_dat.shape or not np.allclose(e_ref, e_dat, atol=1e-9):
                ref = np.interp(e_dat, e_ref, np.asarray(zlp.values, np.float64), left=0, right=0)
                return {"method": "reference", "reference": ref}, {}
            return {"method": "reference", "reference": np.asarray(zlp.values, np.float64)}, {}
        if tuple(zlp.shape) == shape:
            return {"method": "cube"}, {"zlp_cube": zlp.data}
        arr: Any = zlp.data
    else:
        arr = zlp
    a_shape = tuple(getattr(arr, "shape", np.shape(arr)))
    if len(a_shape) == 1 and a_shape[0] == shape[-1]:
        return {"method": "reference", "reference": np.asarray(arr, dtype=np.float64)}, {}
    if a_shape == shape:
        return {"method": "cube"}, {"zlp_cube": arr}
    raise InputError(
        f"zlp has shape {a_shape}: give a method name, a reference spectrum of {shape[-1]} "
        f"channels, or a ZLP cube of the data's shape {shape} ({source_name(si)})"
    )


def _check_axis(si: xr.DataArray) -> float:
    _, d = energy_axis(si["energy"].values, require_uniform=True, source=si.attrs.get("source"))
    return d


def align_zlp(
    si: xr.DataArray,
    method: str = "fourier",
    *,
    search_eV: tuple[float, float] | None = None,
    crop: bool = True,
    fill_value: float = math.nan,
    device: str = "auto",
) -> xr.Dataset:
    """Align every spectrum so that its zero-loss peak sits at 0 eV (sub-channel, keeping counts).

    The centre of each pixel's ZLP is found by :func:`~eelsgpu.kernels.zlp.centre_kernel` (a
    parabola on the log of the peak top) and the spectrum shifted by it with
    :func:`~eelsgpu.kernels.zlp.shift_kernel` (:func:`~eelsgpu.kernels.blocks_lowloss.align_block`).

    Parameters
    ----------
    si : xarray.DataArray
        Spectrum image (..., energy), uniform increasing energy axis in eV.
    method : {"fourier", "linear"}
        Sub-channel shift by a Fourier phase ramp or by linear interpolation.
    search_eV : (float, float), optional
        Where the ZLP maximum may be on the stored axis (eV). Default: near 0 eV, else the
        spectrum's first dominant peak anywhere in the window
        (:func:`~eelsgpu.kernels.zlp.centre_kernel`).
    crop : bool
        Crop the energy axis to the channels every valid pixel has data for (one extra pass over
        the data to find the shifts first); else keep the axis and set the channels that have no
        data to ``fill_value``.
    fill_value : float
        See ``crop``.
    device : {"auto", "cpu", "gpu"}

    Returns
    -------
    xarray.Dataset
        ``signal`` (aligned counts per channel), ``zlp_centre_eV`` (the centre before alignment,
        eV) and ``valid``; pixels without a usable ZLP are NaN.

    Raises
    ------
    NoZeroLossPeakError
        No pixel has a ZLP (with ``crop=True``, where it is found before the alignment).
    InputError
        Not a spectrum image (a NumPy array, empty or complex data, no energy axis), an axis in
        meV or keV labelled eV, a non-uniform axis, a bad ``search_eV`` or ``fill_value``.

    Examples
    --------
    >>> import numpy as np
    >>> from eelsgpu import synthetic
    >>> sim = synthetic.low_loss_image(synthetic.Drude(), shape=(2, 2), drift_eV=0.8,
    ...                                n_channels=512, dispersion_eV=0.1)
    >>> out = align_zlp(sim["signal"], device="cpu")
    >>> round(float(out["zlp_centre_eV"][0, 0]), 2), out.sizes["energy"]
    (0.8, 504)
    """
    si = spectrum_input(si, "align_zlp")
    if method not in ("fourier", "linear"):
        raise ValueError(f"method must be 'fourier' or 'linear', not {method!r}")
    try:
        fill_value = float(fill_value)
    except (TypeError, ValueError):
        raise InputError(f"fill_value must be a number (NaN allowed), not {fill_value!r}") from None
    d = _check_axis(si)
    search_eV = search_range(search_eV)
    n_e = si.sizes["energy"]
    energy = np.asarray(si["energy"].values)
    lo, hi = 0, n_e
    if crop:
        cen = engine.apply_kernel(ZLP_CENTRES, si, device=device, search_eV=search_eV).compute()
        valid = cen["valid"].values
        check_any_valid(valid, si, search_eV)
        s = cen["zlp_centre_eV"].values[valid] / d
        # output channel i reads input channel i + s: it must stay inside [0, n_e - 1]
        lo = max(0, int(math.ceil(-float(s.min()) - 1e-3)))
        hi = min(n_e, n_e - int(math.ceil(float(s.max()) - 1e-3)))
        if hi - lo < 2:
            raise InputError(f"{source_name(si)}: the ZLP shifts leave no common energy range")
    coord = energy[lo:hi]
    ds = engine.apply_kernel(
        align_declaration(coord if crop else None),
        si,
        device=device,
        method=method,
        search_eV=search_eV,
        lo=lo,
        hi=hi,
        fill_value=float(fill_value),
        attrs={
            "zlp_alignment": method,
            "zlp_search_eV": "near 0 eV, else anywhere" if search_eV is None else list(search_eV),
        },
    )
    if crop:
        ds["energy"].attrs.update(si["energy"].attrs)
        ds["signal"].attrs.update(si.attrs)
        ds["signal"].attrs["units"] = "counts"
    return ds
