"""The entry points: :func:`open` any spectrum-image file eelsgpu reads, :func:`list_signals`.

They dispatch on the kind of file: an eelsgpu store (:mod:`.store`) or a file RosettaSciIO reads
(:mod:`.rsciio`), then run the value checks (:mod:`.checks`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import EnergyAxisError, InputError
from ..model import check_energy_scale
from .checks import check_values
from .rsciio import list_file_signals, open_file
from .store import is_store, list_store_signals, open_signal

__all__ = ["list_signals", "open"]


def list_signals(path: str | os.PathLike) -> list[dict[str, Any]]:
    """What a file holds: one dict per signal (index, title, signal_type, shape, dtype,
    energy_range_eV), without reading the data. An eelsgpu store lists its variables."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or directory")
    if is_store(p):
        return list_store_signals(p)
    return list_file_signals(p)


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
    progress: bool = False,
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
        already records them) and the energy-unit check (the first pixel block). ``False`` skips
        them, for a file you know to be clean.
    progress : bool
        Show a progress bar (spectra and blocks) while the value checks read the data.

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
        No energy axis, or one that is not monotonic (a decreasing one is turned round, with the
        data: attribute ``energy_reversed``), or one in meV or keV labelled eV (judged from the
        zero-loss peak's width and the plasmon energy, :func:`eelsgpu.model.check_energy_scale`;
        the message gives the fix).
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
    if dispersion_eV is not None and not (np.isfinite(dispersion_eV) and dispersion_eV != 0):
        raise EnergyAxisError(f"{p}: dispersion_eV must be a non-zero number, not {dispersion_eV}")
    calibration = {
        "beam_energy_keV": beam_energy_keV,
        "collection_angle_mrad": collection_angle_mrad,
        "convergence_angle_mrad": convergence_angle_mrad,
    }
    if is_store(p):
        si, record = open_signal(p, chunks, energy_eV, offset_eV, dispersion_eV, calibration)
    else:
        if p.is_dir() and p.suffix.lower() != ".zspy":
            raise InputError(f"{p}: a folder, but neither an eelsgpu store nor a .zspy file")
        si = open_file(p, chunks, energy_eV, offset_eV, dispersion_eV, calibration, signal_index)
        record = None
    si = check_values(si, record, mask_invalid, check, progress=progress)
    if check:
        check_energy_scale(si)
    return si
