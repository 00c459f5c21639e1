"""JEOL SXES (XES300N) spectra from a ``.plzip`` project, as xarray.

:func:`read_sxes` reads the point spectra of a ``.plzip`` project (zip, the unzipped folder, or
the ``converted_npz`` files): ``xes.data`` is 17 rows x 2049 little-endian uint32; the spectrum is
the sum of rows 0-15 over columns 0-2047 (row 16 and column 2048 are a low-level reference,
~1500); a background frame (``backgrounds/<hash>``: 2 uint32 header values ``(0, 2049)``, the same
17 x 2049 block, 4 trailing values) is summed the same way and subtracted when asked. Pixel 0 is
the *high*-energy end, so the pixel order is reversed to make the energy increase. The energy axis
is the grating's (:func:`eelsgpu.kernels.sxes.grating_energy_eV`; ../shared/docs/sxes.md).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError
from ..kernels.sxes import N_PIXELS, grating_energy_eV
from ..model import spectrum_image

__all__ = ["read_sxes"]


# --------------------------------------------------------------------------- reading JEOL files
_ROWS, _COLS = 17, 2049


def _sum_block(raw: np.ndarray, what: str) -> np.ndarray:
    if raw.size < _ROWS * _COLS:
        raise InputError(f"{what}: {raw.size} values, a 17 x 2049 SXES block needs {_ROWS * _COLS}")
    block = raw[: _ROWS * _COLS].reshape(_ROWS, _COLS)
    return block[:16, :N_PIXELS].astype(np.int64).sum(axis=0)


class _Folder:
    """Uniform access to a .plzip archive or its unzipped folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path) if path.is_file() else None

    def names(self) -> list[str]:
        if self.zip is not None:
            return [n for n in self.zip.namelist() if not n.endswith("/")]
        return [str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_file()]

    def read(self, name: str) -> bytes:
        if self.zip is not None:
            return self.zip.read(name)
        return (self.path / name).read_bytes()


def _attrs_from_json(info: Mapping[str, Any], state: Mapping[str, Any], cond: Mapping[str, Any]):
    attrs: dict[str, Any] = {"sample": str(info.get("comment", "")).strip()}
    probe = state.get("probe", {}) or {}
    try:
        attrs["beam_energy_keV"] = float(probe.get("acceleratingVoltage"))
    except (TypeError, ValueError):
        pass
    try:
        attrs["probe_current_nA"] = float(probe["current"]["average"]) * 1e9
    except (KeyError, TypeError, ValueError):
        pass
    try:
        attrs["ccd_temperature_C"] = float(state["ccd"]["temperature"]["post"])
    except (KeyError, TypeError, ValueError):
        pass
    if state.get("saveDate"):
        attrs["acquisition_date"] = str(state["saveDate"])
    ccd = cond.get("ccd", {}) or {}
    for key, name in (
        ("spectrometer", "spectrometer"),
        ("grating", "grating"),
        ("model", "instrument"),
    ):
        if ccd.get(key):
            attrs[name] = str(ccd[key])
    return attrs


def _make_spectrum(
    counts: np.ndarray, attrs: Mapping[str, Any], source: str, dtype
) -> xr.DataArray:
    energy = grating_energy_eV(np.arange(N_PIXELS))
    order = np.argsort(energy)  # pixel 0 is the high-energy end: reverse so energy increases
    out_attrs = {k: v for k, v in attrs.items() if k != "beam_energy_keV"}
    out_attrs["energy_calibration"] = (
        "provisional JS300N cubic: lambda(nm) = 1.50453 + 3.71278e-3 p + 1.40811e-6 p^2 "
        "- 5.35775e-11 p^3, E = 1239.84/lambda (first order); pixel order reversed"
    )
    si = spectrum_image(
        counts[order].astype(np.float64),
        energy[order],
        beam_energy_keV=attrs.get("beam_energy_keV"),
        source=source,
        dtype=dtype,
        attrs=out_attrs,
    )
    si = si.assign_coords(pixel=("energy", order.astype(np.int32)))
    si["energy"].attrs["long_name"] = "photon energy (first order)"
    return si


def read_sxes(
    path: str | os.PathLike, *, subtract_background: bool = True, dtype: Any = np.float32
) -> dict[str, xr.DataArray]:
    """Read the point spectra of a JEOL SXES project (``.plzip``, its folder, or ``.npz`` files).

    Parameters
    ----------
    path : path
        A ``.plzip`` archive, the folder it unzips to, one ``.npz`` made from it (keys
        ``spectrum_rows0to15``, ``background_rows0to15``, ``info``), or a folder of those.
    subtract_background : bool
        Subtract the position's background frame (summed like the spectrum).
    dtype : dtype
        Storage dtype of the spectra.

    Returns
    -------
    dict
        ``{sample comment: spectrum}``; each a 1-D eelsgpu spectrum (dim ``energy``, eV,
        increasing and non-uniform, from :data:`JS300N_PROVISIONAL`), with a ``pixel`` coordinate
        (the CCD pixel of each channel) and attributes ``sample``, ``beam_energy_keV`` (the EPMA
        accelerating voltage), ``probe_current_nA``, ``grating``, ``source``...

    Examples
    --------
    >>> spectra = read_sxes("../shared/data/sxes/test.plzip")  # doctest: +SKIP
    >>> spectra["Si3N4 5kV 100nA 5 min : Pos. : 1"].sel(energy=392.4, method="nearest")  # doctest: +SKIP
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or directory")
    if p.suffix == ".npz" or (p.is_dir() and not (p / "data").is_dir() and any(p.glob("*.npz"))):
        files = [p] if p.is_file() else sorted(p.glob("*.npz"))
        out = {}
        for f in files:
            with np.load(f, allow_pickle=False) as d:
                if "spectrum_rows0to15" not in d:
                    raise InputError(f"{f}: not an SXES npz (no 'spectrum_rows0to15')")
                counts = d["spectrum_rows0to15"].astype(np.float64)
                if subtract_background and "background_rows0to15" in d:
                    counts = counts - d["background_rows0to15"]
                info = json.loads(str(d["info"])) if "info" in d else {}
            attrs = _attrs_from_json(info, info.get("state", {}), info.get("condition", {}))
            name = attrs["sample"] or f.stem
            out[name] = _make_spectrum(counts, attrs, str(f), dtype)
        return out
    try:
        folder = _Folder(p)
    except zipfile.BadZipFile as exc:
        raise InputError(f"{p}: not a .plzip (zip) archive nor a folder ({exc})") from exc
    names = folder.names()
    positions = sorted(
        {n.split("/")[1] for n in names if n.startswith("data/") and n.count("/") == 2}
    )
    if not positions:
        raise InputError(f"{p}: no data/<uuid>/xes.data inside; not a JEOL SXES project")
    conditions = {
        Path(n).stem: json.loads(folder.read(n)) for n in names if n.startswith("conditions/")
    }
    out = {}
    for uuid in positions:
        where = f"{p}#data/{uuid}"
        try:
            info = json.loads(folder.read(f"data/{uuid}/info.json"))
            state = json.loads(folder.read(f"data/{uuid}/state.json"))
            raw = np.frombuffer(folder.read(f"data/{uuid}/xes.data"), dtype="<u4")
        except KeyError as exc:
            raise InputError(f"{where}: missing {exc}") from exc
        counts = _sum_block(raw, f"{where}/xes.data").astype(np.float64)
        if subtract_background and info.get("backgroundUuid"):
            bname = f"backgrounds/{info['backgroundUuid']}"
            if bname not in names:
                raise InputError(f"{where}: background frame {bname} is missing")
            braw = np.frombuffer(folder.read(bname), dtype="<u4")
            counts = counts - _sum_block(braw[2:], f"{p}#{bname}")  # skip the (0, 2049) header
        cond = conditions.get(str(info.get("conditionUuid")), {})
        attrs = _attrs_from_json(info, state, cond)
        attrs["position_uuid"] = uuid
        name = attrs["sample"] or uuid
        out[name] = _make_spectrum(counts, attrs, where, dtype)
    return out
