"""The energy axis the arguments of :func:`eelsgpu.io.open` give (they win over the file's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EnergyAxisError, MissingParameterError

__all__ = ["energy_override"]


def energy_override(
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
