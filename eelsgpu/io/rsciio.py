"""Files RosettaSciIO reads: Gatan ``.dm3``/``.dm4``, ``.msa``/``.emsa``, HyperSpy ``.hspy``/``.zspy``,
Velox ``.emd`` (EELS cubes, without the ``sparse`` package its EDS reader needs) and NumPy ``.npy``.

:func:`from_signal_dict` turns one RosettaSciIO/HyperSpy signal dictionary into a spectrum image
(:func:`eelsgpu.model.spectrum_image`): the energy axis is the axis in eV (or keV), navigation axes
in a length unit become ``y``/``x`` in nm, and the calibration comes from the HyperSpy metadata
(with the reader's tag mapping applied, as HyperSpy does), then from the arguments.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ..errors import EelsgpuError, EnergyAxisError, InputError, MissingParameterError
from ..model import spectrum_image
from .calibration import energy_override

__all__ = ["format_signal", "from_signal_dict", "list_file_signals", "open_file"]

#: RosettaSciIO plugin for file endings that several plugins claim (.h5, .hdf5...).
_PLUGIN_BY_EXT = {
    ".dm3": "DigitalMicrograph",
    ".dm4": "DigitalMicrograph",
    ".msa": "MSA",
    ".emsa": "MSA",
    ".ems": "MSA",
    ".hspy": "HSPY",
    ".hdf5": "HSPY",
    ".zspy": "ZSPY",
    ".emd": "EMD",
    ".npy": "numpy",
}

#: Length units RosettaSciIO files use, in nm.
_NM_PER_UNIT = {
    "nm": 1.0,
    "µm": 1e3,  # micro sign
    "μm": 1e3,  # Greek mu
    "um": 1e3,
    "micron": 1e3,
    "mm": 1e6,
    "m": 1e9,
    "pm": 1e-3,
    "å": 0.1,
    "angstrom": 0.1,
    "a": 0.1,
}
_EV_PER_UNIT = {"ev": 1.0, "kev": 1e3, "mev": 1e-3}


def _get(tree: Mapping[str, Any] | None, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
    tree[parts[-1]] = value


def _mapped_metadata(sig: Mapping[str, Any]) -> dict[str, Any]:
    """The signal's HyperSpy-style metadata, with the reader's tag mapping applied (as HyperSpy
    does when it loads a file: DM tags -> Acquisition_instrument.TEM...)."""
    md = json.loads(json.dumps(sig.get("metadata") or {}, default=str))
    om = sig.get("original_metadata") or {}
    for src, (dst, fn) in (sig.get("mapping") or {}).items():
        value = _get(om, src)
        if value is None:
            continue
        try:
            value = fn(value) if fn is not None else value
        except Exception:  # a tag the mapping cannot parse is as good as absent
            continue
        if value is not None:
            _set(md, dst, value)
    return md


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _file_calibration(md: Mapping[str, Any]) -> dict[str, float]:
    """beam_energy_keV, collection_angle_mrad, convergence_angle_mrad from HyperSpy metadata.

    A beam energy or collection angle of 0 is how DM and HyperSpy write "not recorded", so it is
    left out (a convergence angle of 0 is a real parallel beam and is kept)."""
    out: dict[str, float] = {}
    e0 = _number(_get(md, "Acquisition_instrument.TEM.beam_energy"))
    beta = _number(_get(md, "Acquisition_instrument.TEM.Detector.EELS.collection_angle"))
    alpha = _number(_get(md, "Acquisition_instrument.TEM.convergence_angle"))
    if e0 is not None and e0 > 0:
        out["beam_energy_keV"] = e0
    if beta is not None and beta > 0:
        out["collection_angle_mrad"] = beta
    if alpha is not None and alpha >= 0:
        out["convergence_angle_mrad"] = alpha
    return out


def _velox_calibration(om: Mapping[str, Any]) -> dict[str, float]:
    """Beam energy and convergence angle from a Velox EMD's own tags (V and rad)."""
    out: dict[str, float] = {}
    volts = _number(_get(om, "Optics.AccelerationVoltage"))
    alpha = _number(_get(om, "Optics.BeamConvergence"))
    if volts:
        out["beam_energy_keV"] = volts / 1e3
    if alpha is not None and alpha >= 0:
        out["convergence_angle_mrad"] = alpha * 1e3
    return out


def _reader(path: Path):
    """RosettaSciIO's file_reader for this file ending."""
    import rsciio

    ext = path.suffix.lower()
    wanted = _PLUGIN_BY_EXT.get(ext)
    for plugin in rsciio.IO_PLUGINS:
        if (wanted and plugin["name"] == wanted) or (
            not wanted and ext.lstrip(".") in [e.lower() for e in plugin["file_extensions"]]
        ):
            return plugin["name"], importlib.import_module(plugin["api"]).file_reader
    raise InputError(
        f"{path}: eelsgpu cannot read '{ext}' files; it reads zarr stores, .dm3/.dm4, .msa/.emsa, "
        ".hspy/.zspy, .emd and .npy (and what else RosettaSciIO reads)"
    )


def _read_emd(path: Path) -> list[dict[str, Any]]:
    """Velox EMD: RosettaSciIO, but without the ``sparse`` package it only needs for EDS."""
    import h5py
    from rsciio.emd import file_reader

    try:
        return file_reader(str(path), lazy=False, select_type="spectrum_image")
    except ModuleNotFoundError as exc:
        if "sparse" not in str(exc):
            raise
    # RosettaSciIO refuses a Velox spectrum-image file without `sparse` (for its EDS stream) even
    # when we want only the EELS cubes, which it reads without it.
    from rsciio.emd._emd_velox import FeiEMDReader

    reader = FeiEMDReader(lazy=False, select_type="spectrum_image")
    with h5py.File(path, "r") as f:
        try:
            reader.read_file(f)
        except ModuleNotFoundError:
            if "EelsSpectrumImage" not in reader.d_grp:
                raise InputError(
                    f"{path}: holds an EDS spectrum image only; RosettaSciIO needs the 'sparse' "
                    "package to read it (pip install sparse), and eelsgpu reads EELS only"
                ) from None
            reader.dictionaries = []
            reader._read_eels_spectrum_images()
    return reader.dictionaries


def _read_signals(path: Path) -> list[dict[str, Any]]:
    """Every signal RosettaSciIO finds in the file, as its dicts (data lazy where it can)."""
    name, reader = _reader(path)
    try:
        if name == "EMD":
            signals = _read_emd(path)
        else:
            try:
                signals = reader(str(path), lazy=True)
            except (NotImplementedError, TypeError):  # readers that load eagerly (.msa)
                signals = reader(str(path))
    except EelsgpuError:
        raise
    except AttributeError as exc:
        if name != "ZSPY" or "zarr" not in str(exc):
            raise InputError(
                f"{path}: cannot be read as a {name} file; it may be truncated or corrupt "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        import rsciio
        import zarr

        raise InputError(
            f"{path}: RosettaSciIO {rsciio.__version__} cannot read .zspy files with zarr "
            f"{zarr.__version__} (its ZSPY reader needs zarr 2); save the signal as .hspy in "
            f"HyperSpy instead ({exc})"
        ) from exc
    except Exception as exc:
        raise InputError(
            f"{path}: cannot be read as a {name} file; it may be truncated or corrupt "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    if isinstance(signals, Mapping):
        signals = [signals]
    if not signals:
        raise InputError(f"{path}: the file holds no data")
    for sig in signals:
        shape = tuple(sig["data"].shape)
        if 0 in shape or not shape:
            raise InputError(
                f"{path}: holds no data (shape {shape}); it may be truncated or corrupt"
            )
        npoints = _number((sig.get("original_metadata") or {}).get("NPOINTS"))
        if name == "MSA" and npoints is not None and int(npoints) != shape[-1]:
            raise InputError(
                f"{path}: the header says {int(npoints)} points but the file holds {shape[-1]}; "
                "it may be truncated or corrupt"
            )
    return list(signals)


def _ordered_axes(sig: Mapping[str, Any], path: Path | str) -> list[dict[str, Any]]:
    """The signal's axes in array order (RosettaSciIO gives `index_in_array` for some formats,
    list order for others, and both disagree with the shape in a few readers)."""
    shape = tuple(sig["data"].shape)
    axes = [dict(a) for a in sig.get("axes") or []]
    if not axes:
        return [
            {"name": f"axis {i}", "size": n, "navigate": i < len(shape) - 1}
            for i, n in enumerate(shape)
        ]
    idx = [a.get("index_in_array") for a in axes]
    if None not in idx and sorted(idx) == list(range(len(axes))):
        by_index = sorted(axes, key=lambda a: a["index_in_array"])
        if tuple(int(a["size"]) for a in by_index) == shape:
            return by_index
    if tuple(int(a.get("size", -1)) for a in axes) == shape:
        return axes
    raise InputError(f"{path}: the axes the file describes do not match its data shape {shape}")


def _axis_values(a: Mapping[str, Any]) -> np.ndarray:
    if a.get("axis") is not None:
        return np.asarray(a["axis"], dtype=np.float64)
    if a.get("_type") == "FunctionalDataAxis" or "expression" in a:
        raise InputError(
            f"axis {a.get('name')!r} is a functional axis, which eelsgpu does not read"
        )
    n = int(a["size"])
    return float(a.get("offset", 0.0) or 0.0) + float(a.get("scale", 1.0) or 1.0) * np.arange(n)


def _units(a: Mapping[str, Any]) -> str:
    u = a.get("units")
    return "" if u is None or str(u) in ("<undefined>", "t.b.d.") else str(u).strip()


def _energy_index(axes: list[dict[str, Any]]) -> int | None:
    hits = [i for i, a in enumerate(axes) if _units(a).lower() in _EV_PER_UNIT]
    if len(hits) > 1:  # prefer the signal axis
        hits = [i for i in hits if not axes[i].get("navigate", False)] or hits
    return hits[-1] if hits else None


def _describe(i: int, sig: Mapping[str, Any]) -> dict[str, Any]:
    """A one-line description of a signal in a file (for listings and error messages)."""
    md = sig.get("metadata") or {}
    try:
        axes = _ordered_axes(sig, Path("?"))
    except InputError:
        axes = list(sig.get("axes") or [])
    e = _energy_index(axes)
    desc = {
        "index": i,
        "title": _get(md, "General.title") or "",
        "signal_type": _get(md, "Signal.signal_type") or "",
        "shape": tuple(int(s) for s in sig["data"].shape),
        "dtype": str(sig["data"].dtype),
        "energy_range_eV": None,
    }
    if e is not None:
        try:
            v = _axis_values(axes[e]) * _EV_PER_UNIT[_units(axes[e]).lower()]
            desc["energy_range_eV"] = (float(v[0]), float(v[-1]))
        except InputError:
            pass
    return desc


def format_signal(d: Mapping[str, Any]) -> str:
    """One line describing an entry of :func:`list_signals`."""
    rng = d["energy_range_eV"]
    energy = f", {rng[0]:g} to {rng[1]:g} eV" if rng else ", no energy axis"
    kind = f" [{d['signal_type']}]" if d["signal_type"] else ""
    return f"  [{d['index']}] {d['title']!r}{kind} shape {d['shape']} {d['dtype']}{energy}"


def list_file_signals(path: Path) -> list[dict[str, Any]]:
    """What a file RosettaSciIO reads holds (see :func:`eelsgpu.io.list_signals`)."""
    return [_describe(i, s) for i, s in enumerate(_read_signals(path))]


def _pick_signal(
    signals: list[dict[str, Any]], path: Path, signal_index: int | None
) -> dict[str, Any]:
    listing = "\n".join(format_signal(_describe(i, s)) for i, s in enumerate(signals))
    if signal_index is not None:
        if not -len(signals) <= signal_index < len(signals):
            raise InputError(
                f"{path}: signal_index={signal_index} but the file holds {len(signals)} "
                f"signal(s):\n{listing}"
            )
        return signals[signal_index]
    if len(signals) == 1:
        return signals[0]
    with_energy = [s for s in signals if _energy_index(_ordered_axes(s, path)) is not None]
    eels = [s for s in with_energy if "EELS" in str(_get(s.get("metadata"), "Signal.signal_type"))]
    candidates = eels or with_energy
    if len(candidates) == 1:
        return candidates[0]
    raise InputError(
        f"{path}: holds {len(signals)} signals"
        + (f", {len(candidates)} of them EELS spectra" if len(candidates) > 1 else "")
        + "; say which with signal_index=N in Python or --signal-index N on the command line:\n"
        + listing
    )


def _spatial(axes: list[dict[str, Any]]) -> tuple[list[np.ndarray | None], str | None]:
    """Navigation coordinates in nm when every navigation axis has a length unit, else pixels."""
    factors = [_NM_PER_UNIT.get(_units(a).lower()) for a in axes]
    if not axes or any(f is None for f in factors):
        return [None] * len(axes), None
    return [_axis_values(a) * f for a, f in zip(axes, factors, strict=True)], "nm"


def open_file(
    path: Path,
    chunks: Any,
    energy_eV: Any,
    offset_eV: float | None,
    dispersion_eV: float | None,
    calibration: Mapping[str, float | None],
    signal_index: int | None,
) -> xr.DataArray:
    signals = _read_signals(path)
    sig = _pick_signal(signals, path, signal_index)
    extra = {}
    if len(signals) > 1:
        extra["signal_index"] = next(i for i, s in enumerate(signals) if s is sig)
    return from_signal_dict(
        sig,
        str(path),
        chunks=chunks,
        energy_eV=energy_eV,
        offset_eV=offset_eV,
        dispersion_eV=dispersion_eV,
        velox=path.suffix.lower() == ".emd",
        attrs=extra,
        **calibration,
    )


def from_signal_dict(
    sig: Mapping[str, Any],
    source: str,
    *,
    chunks: Any = "auto",
    energy_eV: Any = None,
    offset_eV: float | None = None,
    dispersion_eV: float | None = None,
    beam_energy_keV: float | None = None,
    collection_angle_mrad: float | None = None,
    convergence_angle_mrad: float | None = None,
    velox: bool = False,
    attrs: Mapping[str, Any] | None = None,
) -> xr.DataArray:
    """A spectrum image from a RosettaSciIO/HyperSpy signal dictionary (``data``, ``axes``,
    ``metadata``, ``original_metadata``, ``mapping``); arguments override the metadata.

    The energy axis is the axis in eV (or keV); without one, a given calibration
    (``energy_eV`` or ``offset_eV`` + ``dispersion_eV``) names the last signal axis energy.
    Used by :func:`open` and :func:`eelsgpu.interop.from_hyperspy`; no value checks here.
    """
    calibration = {
        "beam_energy_keV": beam_energy_keV,
        "collection_angle_mrad": collection_angle_mrad,
        "convergence_angle_mrad": convergence_angle_mrad,
    }
    calibrated = energy_eV is not None or (offset_eV is not None and dispersion_eV is not None)
    axes = _ordered_axes(sig, source)
    data = sig["data"]
    data = data if isinstance(data, da.Array) else da.from_array(np.asarray(data), chunks="auto")
    e_idx = _energy_index(axes)
    file_energy = None
    if e_idx is not None:
        file_energy = _axis_values(axes[e_idx]) * _EV_PER_UNIT[_units(axes[e_idx]).lower()]
    elif calibrated:
        # no axis in eV: the arguments calibrate the (last) signal axis
        signal_axes = [i for i, a in enumerate(axes) if not a.get("navigate", False)]
        e_idx = signal_axes[-1] if signal_axes else len(axes) - 1
    elif all(not _units(a) for a in axes):
        raise MissingParameterError(
            f"{source}: no energy calibration; give the energy axis with offset_eV=... "
            "and dispersion_eV=... (or energy_eV=array) in Python, or --offset and --dispersion "
            "on the command line (the last axis is taken as energy)"
        )
    else:
        described = ", ".join(
            f"{a.get('name') or '?'} ({int(a['size'])}, {_units(a) or 'no unit'})" for a in axes
        )
        raise EnergyAxisError(
            f"{source}: no energy axis (no axis in eV); its axes are {described}. If one of them "
            "is energy, give its calibration with offset_eV= and dispersion_eV= (or energy_eV=)"
        )
    n_e = int(axes[e_idx]["size"])
    energy = energy_override(n_e, energy_eV, offset_eV, dispersion_eV, file_energy, source)
    energy = file_energy if energy is None else energy

    nav = [a for i, a in enumerate(axes) if i != e_idx]
    if len(nav) > 2:
        raise InputError(
            f"{source}: data of shape {tuple(data.shape)} have {len(nav)} navigation axes; "
            "eelsgpu reads spectra, line scans and spectrum images (at most y, x and energy)"
        )
    data = da.moveaxis(data, e_idx, -1)
    coords, unit = _spatial(nav)
    yx = {"x": coords[-1]} if len(nav) == 1 else {"y": coords[0], "x": coords[1]} if nav else {}

    md = _mapped_metadata(sig)
    meta = _file_calibration(md)
    if velox:
        meta = {**_velox_calibration(sig.get("original_metadata") or {}), **meta}
    meta.update({k: v for k, v in calibration.items() if v is not None})
    out_attrs = {
        "title": str(_get(md, "General.title") or ""),
        "signal_type": str(_get(md, "Signal.signal_type") or ""),
        "original_dtype": str(data.dtype),
        **(attrs or {}),
    }
    return spectrum_image(
        data,
        energy,
        **yx,
        spatial_unit=unit,
        **meta,
        source=source,
        chunks=chunks,
        attrs={k: v for k, v in out_attrs.items() if v != ""},
        reverse_decreasing=True,
    )
