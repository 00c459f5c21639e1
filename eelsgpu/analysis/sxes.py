"""SXES spectra as xarray: the JEOL file reader and a synthetic SXES spectrum image.

The emission-line table and the grating energy axis (pure data and floats) are in
:mod:`eelsgpu.kernels.sxes`; :func:`eelsgpu.window_maps` integrates over the non-uniform axis
with per-channel widths.

* :func:`read_sxes` reads the JEOL SXES (XES300N) point spectra of a ``.plzip`` project (zip, the
  unzipped folder, or the ``converted_npz`` files): ``xes.data`` is 17 rows x 2049 little-endian
  uint32; the spectrum is the sum of rows 0-15 over columns 0-2047 (row 16 and column 2048 are a
  low-level reference, ~1500); a background frame (``backgrounds/<hash>``: 2 uint32 header
  values ``(0, 2049)``, the same 17 x 2049 block, 4 trailing values) is summed the same way and
  subtracted when asked. Pixel 0 is the *high*-energy end, so the pixel order is reversed to make
  the energy increase.
* :func:`sxes_image`: a synthetic SXES spectrum image with two bonding states (Na-doped CaB6-like:
  Ca-Ll,eta in 2nd order at 150-154 eV and a B-K band whose top edge shifts), Poisson noise.

Both are here for now; their homes are the io layer (``eelsgpu/io/sxes.py``) and
:mod:`eelsgpu.synthetic`, which other parts of the refactor own (see the MOVE AT MERGE notes).

Examples
--------
>>> ds = sxes_image((2, 3), regions="halves", noise=False)
>>> ds["signal"].dims
('y', 'x', 'energy')
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError
from ..kernels.sxes import JS300N_PROVISIONAL, N_PIXELS, grating_energy_eV
from ..kernels.windows import channel_edges
from ..model import spectrum_image

__all__ = ["DEFAULT_STATES", "BondingState", "read_sxes", "sxes_image"]


# --------------------------------------------------------------------------- reading JEOL files
# MOVE AT MERGE: io/sxes.py (the JEOL plzip reader belongs to the io layer)
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


# --------------------------------------------------------------------------- synthetic images
# MOVE AT MERGE: synthetic.py (the synthetic SXES image belongs with the other generators)
@dataclass(frozen=True)
class BondingState:
    """Emission of one bonding state of a CaB6-like boride, in counts per pixel.

    The B-K valence band is ``sqrt(E - bottom)`` cut by a Fermi-like top edge
    ``1 / (1 + exp((E - top) / top_width))``; Ca-Ll and Ca-Leta (302.7, 306.6 eV) appear in
    2nd order at 151.35 and 153.3 eV as Gaussians; O-K (524.9 eV) in 3rd order at 175.0 eV; a
    flat continuum. Na doping (holes at the top of the B band) moves the top edge up.
    """

    band_top_eV: float = 187.0
    band_top_width_eV: float = 0.35
    band_bottom_eV: float = 170.0
    band_counts: float = 4000.0
    ca_counts: float = 800.0
    oxygen_counts: float = 100.0
    continuum_per_eV: float = 20.0
    line_sigma_eV: float = 0.4


DEFAULT_STATES = (
    BondingState(),
    BondingState(band_top_eV=187.6, ca_counts=650.0),  # Na-doped: higher top, less Ca
)


def _region_map(shape: tuple[int, int], regions: Any) -> np.ndarray:
    ny, nx = shape
    if isinstance(regions, str):
        yy, xx = np.mgrid[0:ny, 0:nx]
        if regions == "halves":
            return (xx >= nx // 2).astype(np.int32)
        if regions == "disk":
            r = min(ny, nx) / 3.0
            return (((yy - (ny - 1) / 2) ** 2 + (xx - (nx - 1) / 2) ** 2) <= r * r).astype(np.int32)
        raise InputError(f"regions must be 'halves', 'disk' or a label array, not {regions!r}")
    lab = np.asarray(regions)
    if lab.shape != tuple(shape):
        raise InputError(f"the region map has shape {lab.shape}, the image {tuple(shape)}")
    return lab.astype(np.int32)


def _state_density(state: BondingState, e: np.ndarray) -> np.ndarray:
    """Emission density (counts/eV) of one state on energies ``e``."""
    band = np.sqrt(np.clip(e - state.band_bottom_eV, 0.0, None)) / (
        1.0 + np.exp((e - state.band_top_eV) / state.band_top_width_eV)
    )
    fine = np.linspace(state.band_bottom_eV, state.band_top_eV + 10 * state.band_top_width_eV, 4000)
    norm = np.trapezoid(
        np.sqrt(fine - state.band_bottom_eV)
        / (1.0 + np.exp((fine - state.band_top_eV) / state.band_top_width_eV)),
        fine,
    )
    density = state.band_counts * band / norm + state.continuum_per_eV

    def gauss(centre: float, area: float) -> np.ndarray:
        s = state.line_sigma_eV
        return area * np.exp(-0.5 * ((e - centre) / s) ** 2) / (s * np.sqrt(2 * np.pi))

    density = (
        density + gauss(302.7 / 2, 0.6 * state.ca_counts) + gauss(306.6 / 2, 0.4 * state.ca_counts)
    )
    return density + gauss(524.9 / 3, state.oxygen_counts)


def sxes_image(
    shape: tuple[int, int] = (24, 24),
    regions: Any = "disk",
    states: Sequence[BondingState] = DEFAULT_STATES,
    *,
    energy_range_eV: tuple[float, float] = (140.0, 200.0),
    coefficients: Sequence[float] = JS300N_PROVISIONAL,
    intensity: Any = 1.0,
    noise: bool = True,
    seed: int | None = 0,
    dtype: Any = np.float32,
    chunks: Any = None,
) -> xr.Dataset:
    """A synthetic SXES spectrum image of regions in different bonding states (exact truth).

    The energy axis is the grating's non-uniform one: the CCD pixels whose first-order energy
    (``coefficients``, default the provisional JS300N cubic) lies in ``energy_range_eV``.
    Counts per channel are the state's density (see :class:`BondingState`) times the channel
    width, times ``intensity`` (scalar or (y, x) map), with Poisson noise when ``noise``.

    Parameters
    ----------
    shape : (ny, nx)
    regions : "disk", "halves" or int array (ny, nx)
        Which state each pixel is in (label k uses ``states[k]``).
    states : sequence of BondingState
        Default: CaB6-like (top edge 187.0 eV) and Na-doped (187.6 eV, less Ca).
    noise : bool
        Poisson counts (``seed`` for the generator).

    Returns
    -------
    xarray.Dataset
        ``signal`` (y, x, energy; counts per channel, lazy), ``true_region`` (y, x) and
        ``true_signal`` (the noise-free expectation).

    Examples
    --------
    >>> ds = sxes_image((4, 6), regions="halves", seed=1)
    >>> ds["signal"].dims, ds["true_region"].values.sum()
    (('y', 'x', 'energy'), np.int64(12))
    """
    labels = _region_map(tuple(shape), regions)
    if labels.min() < 0 or labels.max() >= len(states):
        raise InputError(f"region labels run 0..{labels.max()} but {len(states)} states were given")
    pix = np.arange(N_PIXELS)
    energy_all = grating_energy_eV(pix, coefficients)
    keep = (energy_all >= energy_range_eV[0]) & (energy_all <= energy_range_eV[1])
    order = np.argsort(energy_all[keep])
    e = energy_all[keep][order]
    if e.size < 8:
        raise InputError(f"energy_range_eV {energy_range_eV} holds only {e.size} channels")
    lo, hi = channel_edges(e)
    width = hi - lo
    per_state = np.stack([_state_density(s, e) * width for s in states])  # counts per channel
    scale = np.broadcast_to(np.asarray(intensity, dtype=np.float64), labels.shape)
    expected = per_state[labels] * scale[..., None]
    if noise:
        rng = np.random.default_rng(seed)
        counts = rng.poisson(expected).astype(np.float64)
    else:
        counts = expected
    sig = spectrum_image(counts, e, source="eelsgpu.sxes.sxes_image", dtype=dtype, chunks=chunks)
    sig["energy"].attrs["long_name"] = "photon energy (first order)"
    true = spectrum_image(expected, e, dtype=np.float64, chunks=chunks).rename("true_signal")
    return xr.Dataset(
        {
            "signal": sig,
            "true_signal": true,
            "true_region": (("y", "x"), labels, {"units": "", "long_name": "true region label"}),
        },
        attrs={"source": "eelsgpu.sxes.sxes_image", "pixel_first": int(pix[keep].min())},
    )
