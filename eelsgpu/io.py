"""Files: open any EELS spectrum-image file as a lazy DataArray; eelsgpu's own zarr stores.

:func:`open` reads eelsgpu's zarr stores (the variable ``signal``) and, through RosettaSciIO, Gatan
``.dm3``/``.dm4``, ``.msa``/``.emsa``, HyperSpy ``.hspy``/``.zspy``, Velox ``.emd`` and NumPy
``.npy`` (whose calibration comes from the arguments). It returns the spectrum image of
:func:`eelsgpu.model.spectrum_image`: dims ``(y, x, energy)``, float32, dask-backed, energy in eV,
``y``/``x`` in nm when the file says so (else pixels), and the attributes ``beam_energy_keV``,
``collection_angle_mrad``, ``convergence_angle_mrad``, ``dispersion_eV`` and ``source``.

What counts as bad input, and what happens to it:

* a missing, truncated or corrupt file: :class:`~eelsgpu.errors.InputError` naming the file;
* no energy axis (no axis in eV, as in an image or a ``.npy`` file) and no calibration given:
  :class:`~eelsgpu.errors.EnergyAxisError` (``.npy``: :class:`~eelsgpu.errors.MissingParameterError`);
  a decreasing or non-monotonic axis: :class:`~eelsgpu.errors.EnergyAxisError`;
* NaN or infinite values: refused with an :class:`~eelsgpu.errors.InputError` that says how many
  pixels are hit, unless ``mask_invalid=True``: then every spectrum with a non-finite value is set
  to NaN as a whole and a boolean coordinate ``valid`` (dims ``y, x``, False for those pixels) is
  added, so analyses give NaN there and the run finishes;
* a spectrum image that is zero everywhere: :class:`~eelsgpu.errors.InputError`.

The value checks run block by block through dask (never the whole cube in memory), once, when the
file is opened. :func:`write_store` records their result in the store it writes (in the same pass
over the data), so opening an eelsgpu store later costs no pass at all.

A store is a zarr v3 group written by :meth:`xarray.Dataset.to_zarr`; the spectrum image is the
variable ``signal`` (dims ``y, x, energy``), chunked in pixel blocks with the energy axis whole,
compressed with Blosc-LZ4 + bit-shuffle by default. Results of analyses go into stores of the same
kind as named variables. Writes are atomic: a store is written under a temporary name beside the
target, marked complete, and renamed into place only then, so an interrupted write never leaves a
store that opens as if whole.

Examples
--------
>>> import eelsgpu
>>> si = eelsgpu.open("spectrum_image.dm4")                      # doctest: +SKIP
>>> si = eelsgpu.open("cube.npy", offset_eV=-5.0, dispersion_eV=0.05,
...                   beam_energy_keV=200.0)                      # doctest: +SKIP
>>> eelsgpu.write_store(si, "cube.zarr")                          # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .engine.store import CODEC_PROFILES, codecs
from .errors import EelsgpuError, EnergyAxisError, InputError, MissingParameterError
from .model import spectrum_image

__all__ = [
    "CODEC_PROFILES",
    "check_values",
    "codecs",
    "format_signal",
    "from_signal_dict",
    "is_store",
    "list_signals",
    "open",
    "open_store",
    "write_store",
]


#: Attribute of a store's ``signal`` variable holding the value checks made while writing it.
CHECK_ATTR = "eelsgpu_value_check"

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

_ARG_FLAGS = {
    "beam_energy_keV": "--beam-energy",
    "collection_angle_mrad": "--collection-angle",
    "convergence_angle_mrad": "--convergence-angle",
}


# --------------------------------------------------------------------------- codecs and stores
def is_store(p: str | os.PathLike) -> bool:
    """An eelsgpu (zarr) store, as opposed to a HyperSpy .zspy, which is a zarr folder too."""
    p = Path(p)
    if p.suffix.lower() == ".zspy":
        return False
    return p.is_dir() and ((p / "zarr.json").exists() or (p / ".zgroup").exists())


def open_store(path: str | os.PathLike, chunks: Any = "auto") -> xr.Dataset:
    """Open an eelsgpu zarr store lazily as an :class:`xarray.Dataset` (every variable in it).

    Raises :class:`InputError` naming the store when it does not exist, cannot be read, or was not
    completely written (an interrupted conversion).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or directory")
    if p.is_dir() and not is_store(p):
        raise InputError(f"{p}: a folder but not a zarr store (no zarr.json in it)")
    try:
        ds = xr.open_zarr(p, chunks={} if chunks == "auto" else chunks, consolidated=False)
    except Exception as exc:
        raise InputError(
            f"{p}: not a readable zarr store, it may be truncated or corrupt "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    if ds.attrs.get("eelsgpu_complete") is False:
        raise InputError(
            f"{p}: the store was not completely written (an interrupted run); convert the input "
            "again"
        )
    for var in ds.data_vars.values():  # bookkeeping of the writer, not a property of the data
        var.attrs.pop(CHECK_ATTR, None)
    return ds


def _recorded_check(path: Path) -> dict[str, Any] | None:
    """The value checks :func:`write_store` recorded for the store's ``signal`` (or None)."""
    import zarr

    try:
        record = zarr.open_group(path, mode="r")["signal"].attrs.get(CHECK_ATTR)
    except Exception:
        return None
    return dict(record) if isinstance(record, Mapping) else None


def _value_check_graph(data: da.Array) -> tuple[da.Array, da.Array]:
    """Lazy per-pixel 'all values finite' map and 'any value non-zero' flag (block by block)."""
    finite = da.isfinite(data).all(axis=-1)
    nonzero = (data != 0).any()
    return finite, nonzero


def _check_record(finite: np.ndarray, nonzero: bool, valid: np.ndarray | None) -> dict[str, Any]:
    """The value-check summary written into a store (JSON-friendly)."""
    finite = np.asarray(finite, dtype=bool)
    bad = ~finite
    flagged = np.zeros_like(bad) if valid is None else ~np.asarray(valid, dtype=bool)
    unflagged = bad & ~flagged
    first = np.argwhere(unflagged)
    return {
        "pixels": int(finite.size),
        "nonfinite_pixels": int(bad.sum()),
        "unflagged_nonfinite_pixels": int(unflagged.sum()),
        "first_unflagged_nonfinite": [int(v) for v in first[0]] if len(first) else None,
        "all_zero": not bool(nonzero),
    }


def _compute(*graphs: Any) -> tuple[Any, ...]:
    """``dask.compute`` that, on the local threaded scheduler, returns (or raises) only once every
    task has stopped, so that no chunk is still being written after a failure is cleaned up."""
    from concurrent.futures import ThreadPoolExecutor

    try:
        from distributed import default_client

        default_client()
        return dask.compute(*graphs)  # a cluster: its own scheduler
    except (ImportError, ValueError):
        pass
    if dask.config.get("scheduler", None) not in (None, "threads", "threading"):
        return dask.compute(*graphs)
    workers = dask.config.get("num_workers", None) or os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:  # leaving the block waits for running tasks
        return dask.compute(*graphs, scheduler="threads", pool=pool)


def write_store(
    ds: xr.Dataset | xr.DataArray,
    path: str | os.PathLike,
    *,
    codec: str = "lz4",
    overwrite: bool = False,
    progress: bool = False,
    encoding: Mapping[str, Any] | None = None,
    check: bool = False,
) -> Path:
    """Write a Dataset (lazy or not) to a zarr store, atomically.

    Parameters
    ----------
    ds : xarray.Dataset or DataArray
        What to write; a DataArray is written as the variable ``signal``.
    path : path
        The store to create.
    codec : {"lz4", "zstd"}
        Compression profile (see :func:`codecs`).
    overwrite : bool
        Replace an existing store; without it an existing path is an error.
    progress : bool
        Show a progress bar while the dask graph runs.
    encoding : mapping, optional
        Extra zarr encoding per variable.
    check : bool
        Refuse, after the pass over the data and before anything appears at ``path``, a
        ``signal`` with NaN/inf values in pixels not flagged by a ``valid`` coordinate, or one
        that is zero everywhere (the checks of :func:`open`, made in the same pass as the write,
        so ``eelsgpu convert`` reads its input once).

    Returns
    -------
    Path
        The store written.

    Notes
    -----
    The store is written as ``.NAME.partial-XXXX`` beside the target with the attribute
    ``eelsgpu_complete = False``, flagged complete after the last chunk, and renamed into place;
    an error removes the partial store. For a ``signal`` variable the value checks of :func:`open`
    (non-finite pixels, all zero) are computed in the same pass and stored in its attributes.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise InputError(f"{target}: already exists (pass overwrite=True or --overwrite)")
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name="signal")
    ds = ds.copy()
    ds.attrs["eelsgpu_complete"] = False
    enc: dict[str, Any] = {}
    comp = codecs(codec)
    for name, var in ds.data_vars.items():
        enc[name] = dict(comp)
        if getattr(var.data, "chunks", None) is not None:
            enc[name]["chunks"] = tuple(c[0] for c in var.data.chunks)
    for name, extra in (encoding or {}).items():
        enc.setdefault(name, {}).update(extra)

    checks: tuple[Any, ...] = ()
    sig = ds.data_vars.get("signal")
    if sig is not None and sig.dims and sig.dims[-1] == "energy":
        sig_data = sig.data if isinstance(sig.data, da.Array) else da.from_array(sig.values)
        sig_data = sig_data.rechunk(enc["signal"].get("chunks", sig_data.chunksize))
        ds["signal"] = sig.copy(data=sig_data)
        ds["signal"].attrs.pop(CHECK_ATTR, None)
        checks = _value_check_graph(ds["signal"].data)

    tmp = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        delayed = ds.to_zarr(
            tmp,
            mode="w",
            encoding=enc,
            compute=False,
            consolidated=False,
            zarr_format=3,
            # every chunk is written: zarr's check for chunks equal to the fill value is a full
            # comparison pass per chunk (measured 40-60 ms per 32 MiB chunk, more than the lz4
            # compression), and a chunk left out would read back as "no data" anyway
            write_empty_chunks=True,
        )
        if progress:
            from .progress import progress_bar

            with progress_bar(f"writing {target.name}"):
                results = _compute(delayed, *checks)
        else:
            results = _compute(delayed, *checks)
        import zarr

        group = zarr.open_group(tmp, mode="r+", zarr_format=3)
        if checks:
            valid = ds.coords["valid"].values if "valid" in ds.coords else None
            record = _check_record(results[1], results[2], valid)
            group["signal"].attrs[CHECK_ATTR] = record
            if check:
                check_values(ds["signal"], record=record)
        group.attrs["eelsgpu_complete"] = True
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# --------------------------------------------------------------------------- reading other formats
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


def list_signals(path: str | os.PathLike) -> list[dict[str, Any]]:
    """What a file holds: one dict per signal (index, title, signal_type, shape, dtype,
    energy_range_eV), without reading the data. An eelsgpu store lists its variables."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or directory")
    if is_store(p):
        ds = open_store(p)
        out = []
        for i, (name, var) in enumerate(ds.data_vars.items()):
            rng = None
            if var.dims and var.dims[-1] == "energy" and "energy" in ds.coords:
                e = ds["energy"].values
                rng = (float(e[0]), float(e[-1]))
            out.append(
                {
                    "index": i,
                    "title": name,
                    "signal_type": "",
                    "shape": var.shape,
                    "dtype": str(var.dtype),
                    "energy_range_eV": rng,
                }
            )
        return out
    return [_describe(i, s) for i, s in enumerate(_read_signals(p))]


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


def _energy_override(
    n: int,
    energy_eV: Any,
    offset_eV: float | None,
    dispersion_eV: float | None,
    file_energy: np.ndarray | None,
    path: Path | str,
) -> np.ndarray | None:
    """The energy axis from the arguments (they win over the file), or None if none given."""
    if energy_eV is not None:
        e = np.asarray(energy_eV, dtype=np.float64)
        if e.shape != (n,):
            raise EnergyAxisError(
                f"{path}: energy_eV has {e.size} values but the data have {n} channels"
            )
        return e
    if offset_eV is None and dispersion_eV is None:
        return None
    if file_energy is not None and len(file_energy) > 1:
        offset = float(file_energy[0]) if offset_eV is None else float(offset_eV)
        step = (
            float(file_energy[1] - file_energy[0])
            if dispersion_eV is None
            else float(dispersion_eV)
        )
    else:
        missing = "dispersion_eV" if dispersion_eV is None else "offset_eV"
        if offset_eV is None or dispersion_eV is None:
            raise MissingParameterError(
                f"{path}: the energy axis needs both offset_eV and dispersion_eV (or energy_eV); "
                f"{missing} is missing"
            )
        offset, step = float(offset_eV), float(dispersion_eV)
    return offset + step * np.arange(n)


def _from_rsciio(
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
    energy = _energy_override(n_e, energy_eV, offset_eV, dispersion_eV, file_energy, source)
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
    )


def _from_store(
    path: Path,
    chunks: Any,
    energy_eV: Any,
    offset_eV: float | None,
    dispersion_eV: float | None,
    calibration: Mapping[str, float | None],
) -> tuple[xr.DataArray, dict[str, Any] | None]:
    ds = open_store(path, chunks="auto")
    if "signal" not in ds.data_vars:
        raise InputError(
            f"{path}: an eelsgpu store without a spectrum image (no variable 'signal'); it holds "
            f"{', '.join(ds.data_vars) or 'nothing'}"
        )
    sig = ds["signal"]
    if sig.dims[-1] != "energy" or "energy" not in ds.coords:
        raise EnergyAxisError(f"{path}: the variable 'signal' has no energy axis (dims {sig.dims})")
    file_energy = np.asarray(ds["energy"].values, dtype=np.float64)
    energy = _energy_override(
        sig.sizes["energy"], energy_eV, offset_eV, dispersion_eV, file_energy, path
    )
    attrs = dict(sig.attrs)
    record = _recorded_check(path)
    meta = {k: attrs.pop(k) for k in list(calibration) if k in attrs}
    meta.update({k: v for k, v in calibration.items() if v is not None})
    attrs.pop("dispersion_eV", None)
    previous = attrs.pop("source", None)
    if previous and previous != str(path):
        attrs["converted_from"] = previous
    yx: dict[str, Any] = {}
    unit = None
    for dim in sig.dims[:-1]:
        c = ds.coords.get(dim)
        if c is not None and c.attrs.get("units", "px") != "px":
            yx[dim] = c.values
            unit = c.attrs["units"]
    if chunks == "auto":
        chunks = sig.data.chunksize  # the storage chunks: no rechunking
    si = spectrum_image(
        sig.data,
        file_energy if energy is None else energy,
        **yx,
        spatial_unit=unit,
        **meta,
        source=str(path),
        chunks=chunks,
        attrs=attrs,
        dtype=sig.dtype if sig.dtype.kind == "f" else np.float32,
    )
    if record and not record.get("nonfinite_pixels"):
        _check_chunks_present(path, sig)
    if "valid" in ds.coords and ds["valid"].dims == sig.dims[:-1]:
        si = si.assign_coords(valid=ds["valid"])
    return si, record


def _check_chunks_present(path: Path, sig: xr.DataArray) -> None:
    """A store whose recorded check found no NaN must have every chunk file of ``signal``: zarr
    reads a missing chunk as fill values (NaN), so an incomplete copy would pass silently."""
    folder = path / "signal" / "c"
    if not folder.is_dir():
        return  # another chunk-key layout: nothing to count
    expected = int(np.prod([len(c) for c in sig.data.chunks]))
    present = sum(len(files) for _, _, files in os.walk(folder))
    if present < expected:
        raise InputError(
            f"{path}: {expected - present} of {expected} chunks of 'signal' are missing (an "
            "incomplete copy or a damaged store); convert the input again"
        )


def check_values(
    si: xr.DataArray,
    record: Mapping[str, Any] | None = None,
    mask_invalid: bool = False,
    check: bool = True,
) -> xr.DataArray:
    """Refuse (or mask) non-finite pixels and refuse an all-zero image (see the module doc).

    One dask pass over the data, block by block, unless ``record`` (a store's recorded check)
    already has the answer. Returns ``si``, or with ``mask_invalid`` a copy whose bad spectra are
    NaN and which has the boolean coordinate ``valid``.
    """
    source = si.attrs.get("source", "the data")
    nav_dims = si.dims[:-1]
    valid_prev = si.coords["valid"].values if "valid" in si.coords else None
    finite = None
    if not check and not mask_invalid:
        return si
    if record is None or mask_invalid:
        finite_g, nonzero_g = _value_check_graph(si.data)
        try:
            finite, nonzero = dask.compute(finite_g, nonzero_g)
        except EelsgpuError:
            raise
        except Exception as exc:
            raise InputError(
                f"{source}: reading the data failed; the file may be truncated or corrupt "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        record = _check_record(finite, bool(nonzero), valid_prev)
    if record["all_zero"]:
        raise InputError(
            f"{source}: every value of the spectrum image is zero (an empty or dark acquisition?); "
            "there is nothing to analyse"
        )
    n_bad = record["unflagged_nonfinite_pixels"]
    if n_bad and not mask_invalid:
        where = record.get("first_unflagged_nonfinite")
        at = f", the first at {dict(zip(nav_dims, where, strict=True))}" if where else ""
        raise InputError(
            f"{source}: {n_bad} of {record['pixels']} pixel(s) have NaN or infinite values{at}. "
            "Open it with mask_invalid=True (--mask-invalid on the command line) to set those "
            "spectra to NaN and flag them False in the 'valid' coordinate, so that analyses give "
            "NaN there, or repair the file"
        )
    if mask_invalid:
        valid = np.asarray(finite, dtype=bool)
        if valid_prev is not None:
            valid &= np.asarray(valid_prev, dtype=bool)
        if valid.all() and "valid" not in si.coords:
            return si.assign_coords(valid=(nav_dims, valid, _VALID_ATTRS))
        mask = da.from_array(valid, chunks=si.data.chunks[:-1])[..., None]
        data = da.where(mask, si.data, np.asarray(np.nan, dtype=si.dtype))
        si = si.copy(data=data)
        si = si.assign_coords(valid=(nav_dims, valid, _VALID_ATTRS))
    return si


_VALID_ATTRS = {
    "long_name": "pixel has a usable spectrum",
    "description": "False where the file had NaN or infinite values (the spectrum is set to NaN)",
}


def open(  # noqa: A001 - eelsgpu.open, like xarray.open_dataset / hyperspy.load
    path: str | os.PathLike,
    chunks: Any = "auto",
    *,
    energy_eV: Sequence[float] | np.ndarray | None = None,
    offset_eV: float | None = None,
    dispersion_eV: float | None = None,
    beam_energy_keV: float | None = None,
    collection_angle_mrad: float | None = None,
    convergence_angle_mrad: float | None = None,
    mask_invalid: bool = False,
    signal_index: int | None = None,
    check: bool = True,
) -> xr.DataArray:
    """Open a spectrum image (any format eelsgpu reads) as a lazy, calibrated DataArray.

    Parameters
    ----------
    path : path
        An eelsgpu zarr store, or a ``.dm3``/``.dm4``, ``.msa``/``.emsa``, ``.hspy``/``.zspy``,
        ``.emd`` or ``.npy`` file (RosettaSciIO reads all but the stores).
    chunks : "auto" or tuple
        Dask chunks (pixel blocks; the energy axis is never split). ``"auto"``: the store's own
        chunks for a store, about 32 MiB blocks otherwise.
    energy_eV : array, optional
        The energy axis in eV (one value per channel); replaces the file's.
    offset_eV, dispersion_eV : float, optional
        Energy of the first channel and per channel, in eV; replace the file's (one of them may be
        given alone to change only that). A ``.npy`` file needs both (or ``energy_eV``).
    beam_energy_keV, collection_angle_mrad, convergence_angle_mrad : float, optional
        Calibration in keV and mrad; replace what the file says.
    mask_invalid : bool
        Accept NaN or infinite values: those pixels' spectra become NaN and the coordinate
        ``valid`` (dims ``y, x``) is False there. Without it they are an :class:`InputError`.
    signal_index : int, optional
        Which signal of a file that holds several (a DM file with two spectra, a Velox EMD with
        three EELS cubes); see :func:`list_signals`. Without it a file with one EELS signal opens
        that one and a file with several is an error that lists them.
    check : bool
        Run the value checks (one pass over the data, block by block, unless an eelsgpu store
        already records them). ``False`` skips them, for a file you know to be clean.

    Returns
    -------
    xarray.DataArray
        Dims ``(y, x, energy)``, ``(x, energy)`` or ``(energy,)``, float32, dask-backed, with the
        attributes of :mod:`eelsgpu.model` (those the file does not give are absent).

    Raises
    ------
    InputError
        Missing, truncated or corrupt file; NaN/inf values (without ``mask_invalid``); all zero;
        several signals and no ``signal_index``.
    EnergyAxisError
        No energy axis, or one that is decreasing or not monotonic.
    MissingParameterError
        A ``.npy`` file without its energy calibration.

    Examples
    --------
    >>> si = eelsgpu.open("EELS_SI.dm4")                         # doctest: +SKIP
    >>> si.dims, si.attrs["collection_angle_mrad"]                # doctest: +SKIP
    (('y', 'x', 'energy'), 62.0)
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or directory")
    calibration = {
        "beam_energy_keV": beam_energy_keV,
        "collection_angle_mrad": collection_angle_mrad,
        "convergence_angle_mrad": convergence_angle_mrad,
    }
    if is_store(p):
        si, record = _from_store(p, chunks, energy_eV, offset_eV, dispersion_eV, calibration)
    else:
        if p.is_dir() and p.suffix.lower() != ".zspy":
            raise InputError(f"{p}: a folder, but neither an eelsgpu store nor a .zspy file")
        si = _from_rsciio(p, chunks, energy_eV, offset_eV, dispersion_eV, calibration, signal_index)
        record = None
    return check_values(si, record, mask_invalid, check)
