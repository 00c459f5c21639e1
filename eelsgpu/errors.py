"""The exceptions eelsgpu raises, so that callers can catch them by kind.

Every message names the file (where there is one) and the problem in words a microscopist reads.
"""

from __future__ import annotations

__all__ = [
    "CorruptStoreError",
    "EelsgpuError",
    "EnergyAxisError",
    "InputError",
    "MissingParameterError",
    "NoZeroLossPeakError",
]


class EelsgpuError(Exception):
    """Base class of every error eelsgpu raises on purpose."""


class InputError(EelsgpuError, ValueError):
    """A file or array that cannot be used: missing, corrupt, wrong shape, NaN values..."""


class CorruptStoreError(InputError):
    """A zarr store with a damaged chunk (truncated, emptied, overwritten), found before the
    chunk is decompressed; the message names the store and the chunk."""


class EnergyAxisError(InputError):
    """An energy axis that does not fit the analysis (non-uniform, reversed, too short...)."""


class MissingParameterError(EelsgpuError, ValueError):
    """A physical parameter (beam energy, collection angle...) is neither given nor in the file."""


class NoZeroLossPeakError(InputError):
    """No usable zero-loss peak in any pixel (a window starting above 0 eV, say)."""
