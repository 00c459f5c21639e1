"""Value checks of a spectrum image: non-finite pixels (refused, or masked and flagged in the
coordinate ``valid``) and an image that is zero everywhere (refused).

The checks run block by block through dask (never the whole cube in memory). A store written by
:func:`eelsgpu.io.write_store` records their result (:func:`check_record`, computed in the same
pass as the write), so opening it later costs no pass at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ..errors import EelsgpuError, InputError

__all__ = ["check_record", "check_values", "value_check_graph"]


def value_check_graph(data: da.Array) -> tuple[da.Array, da.Array]:
    """Lazy per-pixel 'all values finite' map and 'any value non-zero' flag (block by block)."""
    finite = da.isfinite(data).all(axis=-1)
    nonzero = (data != 0).any()
    return finite, nonzero


def check_record(finite: np.ndarray, nonzero: bool, valid: np.ndarray | None) -> dict[str, Any]:
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


def check_values(
    si: xr.DataArray,
    record: Mapping[str, Any] | None = None,
    mask_invalid: bool = False,
    check: bool = True,
    progress: bool = False,
) -> xr.DataArray:
    """Refuse (or mask) non-finite pixels and refuse an all-zero image (see the module doc).

    One dask pass over the data, block by block, unless ``record`` (a store's recorded check)
    already has the answer (``progress``: with a bar counting spectra and blocks). Returns
    ``si``, or with ``mask_invalid`` a copy whose bad spectra are NaN and which has the boolean
    coordinate ``valid``.
    """
    source = si.attrs.get("source", "the data")
    nav_dims = si.dims[:-1]
    valid_prev = si.coords["valid"].values if "valid" in si.coords else None
    finite = None
    if not check and not mask_invalid:
        return si
    if record is None or mask_invalid:
        finite_g, nonzero_g = value_check_graph(si.data)
        try:
            finite, nonzero = _compute_with_progress(finite_g, nonzero_g, source, progress)
        except EelsgpuError:
            raise
        except Exception as exc:
            raise InputError(
                f"{source}: reading the data failed; the file may be truncated or corrupt "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        record = check_record(finite, bool(nonzero), valid_prev)
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


def _compute_with_progress(
    finite: da.Array, nonzero: da.Array, source: str, progress: bool
) -> tuple[np.ndarray, Any]:
    """``dask.compute(finite, nonzero)``, with a bar that counts the spectra of each finished
    block of the per-pixel map (not dask tasks)."""
    if not progress or finite.ndim == 0:
        return dask.compute(finite, nonzero)
    from ..engine.progress import BlockProgress

    bar = BlockProgress(
        f"checking {Path(source).name}",
        n_blocks=int(np.prod(finite.numblocks)),
        n_done=0,
        total_spectra=int(finite.size),
        done_spectra=0,
        quiet=False,
    )
    try:
        with bar.callback(finite.name, count=lambda block: int(np.size(block))):
            return dask.compute(finite, nonzero)
    finally:
        bar.close()


_VALID_ATTRS = {
    "long_name": "pixel has a usable spectrum",
    "description": "False where the file had NaN or infinite values (the spectrum is set to NaN)",
}
