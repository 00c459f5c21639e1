"""Moving between eelsgpu and HyperSpy / exspy, with calibration and metadata kept.

HyperSpy is an optional extra (``pip install eelsgpu[hyperspy]``); it is imported inside the
functions, so eelsgpu works without it.

What maps to what:

===============================  ==========================================================
eelsgpu (DataArray)              HyperSpy signal
===============================  ==========================================================
dims ``(y, x, energy)``          navigation ``(x, y)``, signal axis "Energy loss" (eV)
coords ``y``/``x`` (nm or px)    offset, scale and units of the navigation axes
``energy`` (eV)                  offset and scale (uniform) or ``axis`` (non-uniform)
``beam_energy_keV``              ``Acquisition_instrument.TEM.beam_energy`` (keV)
``convergence_angle_mrad``       ``Acquisition_instrument.TEM.convergence_angle`` (mrad)
``collection_angle_mrad``        ``Acquisition_instrument.TEM.Detector.EELS.collection_angle``
``source``, ``title``            ``General.original_filename``, ``General.title``
every attribute                  ``original_metadata.eelsgpu``
===============================  ==========================================================

Examples
--------
>>> s = eelsgpu.to_hyperspy(si)           # doctest: +SKIP
>>> s.plot()                              # doctest: +SKIP
>>> si2 = eelsgpu.from_hyperspy(s)        # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from .errors import InputError
from .io import check_values, from_signal_dict

__all__ = ["as_input", "from_hyperspy", "is_signal", "to_hyperspy"]

_INSTALL = "pip install eelsgpu[hyperspy]"


def _import_hyperspy():
    try:
        import hyperspy.api as hs
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"HyperSpy is needed to exchange data with it but is not installed: {_INSTALL}"
        ) from exc
    return hs


def _eels_classes():
    """exspy's EELSSpectrum classes, or None when exspy is absent."""
    try:
        from exspy.signals import EELSSpectrum, LazyEELSSpectrum
    except ImportError:
        return None
    return EELSSpectrum, LazyEELSSpectrum


def _coord_axis(si: xr.DataArray, dim: str) -> dict[str, Any]:
    n = si.sizes[dim]
    if dim in si.coords:
        v = np.asarray(si[dim].values, dtype=np.float64)
        units = si[dim].attrs.get("units", "px")
    else:
        v, units = np.arange(n, dtype=np.float64), "px"
    axis: dict[str, Any] = {"name": dim, "size": n, "units": units, "navigate": dim != "energy"}
    step = np.diff(v)
    if n > 1 and np.allclose(step, step[0], rtol=1e-9, atol=0):
        axis.update(offset=float(v[0]), scale=float(step[0]))
    elif n == 1:
        axis.update(offset=float(v[0]), scale=1.0)
    else:
        axis["axis"] = v
    return axis


def to_hyperspy(si: xr.DataArray, *, lazy: bool | None = None) -> Any:
    """An eelsgpu spectrum image as a HyperSpy signal (exspy ``EELSSpectrum`` when exspy is
    installed, else ``Signal1D``), calibrated and with its metadata.

    Parameters
    ----------
    si : xarray.DataArray
        Dims ``(..., "energy")``, energy in eV (see :mod:`eelsgpu.model`).
    lazy : bool, optional
        A lazy HyperSpy signal over the same dask array (default when ``si`` is dask-backed), or
        an in-memory one.

    Returns
    -------
    hyperspy.signals.Signal1D or exspy.signals.EELSSpectrum
        Beam energy in keV and angles in mrad under ``metadata.Acquisition_instrument.TEM``.

    Examples
    --------
    >>> s = to_hyperspy(eelsgpu.open("EELS_SI.dm4"))   # doctest: +SKIP
    >>> s.metadata.Acquisition_instrument.TEM.beam_energy   # doctest: +SKIP
    200.0
    """
    hs = _import_hyperspy()
    if not isinstance(si, xr.DataArray) or not si.dims or si.dims[-1] != "energy":
        raise InputError(
            "to_hyperspy needs an eelsgpu spectrum image (a DataArray whose last dim is 'energy')"
        )
    axes = [_coord_axis(si, d) for d in si.dims]
    energy = axes[-1]
    energy.update(name="Energy loss", units="eV")
    data = si.data
    is_lazy = isinstance(data, da.Array) if lazy is None else lazy
    if is_lazy and not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data))
    elif not is_lazy:
        data = np.asarray(si.values)

    attrs = dict(si.attrs)
    tem: dict[str, Any] = {}
    if attrs.get("beam_energy_keV") is not None:
        tem["beam_energy"] = float(attrs["beam_energy_keV"])
    if attrs.get("convergence_angle_mrad") is not None:
        tem["convergence_angle"] = float(attrs["convergence_angle_mrad"])
    if attrs.get("collection_angle_mrad") is not None:
        tem["Detector"] = {"EELS": {"collection_angle": float(attrs["collection_angle_mrad"])}}
    general: dict[str, Any] = {"title": str(attrs.get("title") or si.name or "")}
    if attrs.get("source"):
        general["original_filename"] = Path(str(attrs["source"])).name
    classes = _eels_classes()
    metadata: dict[str, Any] = {
        "General": general,
        "Signal": {"signal_type": "EELS" if classes else "", "quantity": "Intensity (Counts)"},
    }
    if tem:
        metadata["Acquisition_instrument"] = {"TEM": tem}
    original = {"eelsgpu": {k: _plain(v) for k, v in attrs.items()}}
    if "valid" in si.coords:
        original["eelsgpu"]["invalid_pixels"] = int((~np.asarray(si["valid"].values)).sum())

    if classes:
        cls = classes[1] if is_lazy else classes[0]
    else:
        cls = hs.signals.Signal1D
    s = cls(data, axes=axes, metadata=metadata, original_metadata=original)
    if is_lazy and not classes:
        s = s.as_lazy()
    return s


def _plain(value: Any) -> Any:
    """Attribute values HyperSpy's metadata tree and files accept."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def from_hyperspy(
    signal: Any,
    *,
    chunks: Any = "auto",
    energy_eV: Any = None,
    offset_eV: float | None = None,
    dispersion_eV: float | None = None,
    beam_energy_keV: float | None = None,
    collection_angle_mrad: float | None = None,
    convergence_angle_mrad: float | None = None,
    mask_invalid: bool = False,
) -> xr.DataArray:
    """A HyperSpy signal (Signal1D, exspy EELSSpectrum, lazy or not) as an eelsgpu spectrum image.

    The signal axis in eV becomes ``energy``; navigation axes in a length unit become ``y``/``x``
    in nm (else pixels); ``metadata.Acquisition_instrument.TEM`` gives ``beam_energy_keV``,
    ``convergence_angle_mrad`` and ``collection_angle_mrad``. Arguments override the metadata,
    as in :func:`eelsgpu.open`, and the same value checks apply (NaN/inf refused unless
    ``mask_invalid``; an all-zero signal refused).

    Examples
    --------
    >>> import hyperspy.api as hs                       # doctest: +SKIP
    >>> si = from_hyperspy(hs.load("LSMO_linescan_low_loss.hspy"))   # doctest: +SKIP
    >>> si.dims                                          # doctest: +SKIP
    ('x', 'energy')
    """
    _import_hyperspy()
    try:
        am = signal.axes_manager
        axes_objs = sorted(
            list(am.navigation_axes) + list(am.signal_axes), key=lambda a: a.index_in_array
        )
    except AttributeError as exc:
        raise InputError(
            f"from_hyperspy needs a HyperSpy signal, not {type(signal).__name__}"
        ) from exc
    axes = []
    for a in axes_objs:
        d = a.get_axis_dictionary()
        d["navigate"] = a.navigate
        d["size"] = a.size
        if not a.is_uniform:
            d["axis"] = np.asarray(a.axis)
        axes.append(d)
    md = signal.metadata.as_dictionary()
    om = signal.original_metadata.as_dictionary()
    filename = (om.get("eelsgpu") or {}).get("source") or md.get("General", {}).get(
        "original_filename"
    )
    title = md.get("General", {}).get("title", "")
    source = str(filename) if filename else f"HyperSpy signal {title!r}"
    si = from_signal_dict(
        {"data": signal.data, "axes": axes, "metadata": md, "original_metadata": om},
        source,
        chunks=chunks,
        energy_eV=energy_eV,
        offset_eV=offset_eV,
        dispersion_eV=dispersion_eV,
        beam_energy_keV=beam_energy_keV,
        collection_angle_mrad=collection_angle_mrad,
        convergence_angle_mrad=convergence_angle_mrad,
    )
    return check_values(si, mask_invalid=mask_invalid)


def is_signal(obj: Any) -> bool:
    """True for a HyperSpy signal (Signal1D, exspy's EELSSpectrum, lazy or not), found without
    importing HyperSpy."""
    return (
        not isinstance(obj, (xr.DataArray, xr.Dataset))
        and hasattr(obj, "axes_manager")
        and hasattr(obj, "data")
        and hasattr(obj, "metadata")
    )


def as_input(obj: Any) -> Any:
    """What every public analysis does with its data argument: a HyperSpy signal becomes an
    eelsgpu spectrum image (:func:`from_hyperspy`: calibration and metadata kept; lazy for a
    lazy signal, in memory for one in memory, so that the analysis runs at once on every core:
    the engine's eager path); anything else is returned unchanged.

    The one place signals are converted: :func:`eelsgpu.model.as_spectrum_image` calls it (it is
    registered there when this module is imported), and so do the public names of ``eelsgpu``
    (``eelsgpu.deconvolve(signal)``...).
    """
    if not is_signal(obj):
        return obj
    si = from_hyperspy(obj)
    if not getattr(obj, "_lazy", False):
        # a signal held in memory stays in memory, so that the analysis takes the engine's
        # eager path (eelsgpu.engine.blocks): at once on every core, NumPy results
        si = si.compute()
    return si


def _register() -> None:
    from . import model

    if not model._SIGNAL_CONVERTER:
        model._SIGNAL_CONVERTER.append(as_input)


_register()
