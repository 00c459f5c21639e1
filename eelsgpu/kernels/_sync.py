"""Where a low-loss kernel may decide on the host, and the host numbers it needs.

On NumPy a host decision costs nothing: a kernel may look at its data (``bool(xp.any(...))``)
to skip work no pixel of the block needs, cut a slab of channels from ``xp.min``/``xp.max``
of the pixels' positions, or run on the subset of rows that need a costly step. On a device
every such look is a host synchronisation (the stream drains, the GPU idles), and a kernel
whose number of operations depends on its data cannot be budgeted (issue 13: at most 8 syncs
per block, operations that do not grow with the block). So the kernels ask here:

* :func:`host_decides`: True on NumPy (decide from the data), False on any other namespace
  (do the fixed-shape vector operation for every row instead);
* :func:`any_rows` / :func:`all_rows`: ``bool(xp.any(mask))`` / ``bool(xp.all(mask))`` on
  NumPy; on a device the answer that runs the general path (True / False), with no sync;
* :func:`host_axis`: the first energy and the channel width (eV) as host floats, from the
  ``axis_eV`` the analysis passed in (no sync) or from the axis itself on NumPy.

Examples
--------
>>> import numpy as np
>>> import array_api_strict as xs
>>> any_rows(np, np.zeros(3, bool)), any_rows(xs, xs.zeros(3, dtype=xs.bool))
(False, True)
>>> host_axis(np.arange(4) * 0.5 - 1.0)
(-1.0, 0.5)
>>> host_axis(xs.asarray([0.0, 0.1]), (-2.0, 0.1))  # given: no look at the device array
(-2.0, 0.1)
"""

from __future__ import annotations

from typing import Any

from .._xp import axis_step, is_numpy

__all__ = ["all_rows", "any_rows", "host_axis", "host_decides"]


def host_decides(xp: Any) -> bool:
    """True where a kernel may branch on its data at no cost (NumPy)."""
    return is_numpy(xp)


def any_rows(xp: Any, mask: Any) -> bool:
    """``bool(xp.any(mask))`` on NumPy; True on a device (run the work for every row)."""
    return bool(xp.any(mask)) if is_numpy(xp) else True


def all_rows(xp: Any, mask: Any) -> bool:
    """``bool(xp.all(mask))`` on NumPy; False on a device (run the general path)."""
    return bool(xp.all(mask)) if is_numpy(xp) else False


def host_axis(energy_eV: Any, axis_eV: tuple[float, float] | None = None) -> tuple[float, float]:
    """``(first_eV, step_eV)`` of the energy axis as host floats: ``axis_eV`` when given (the
    analysis passes it in, so a device array is never read back), else from ``energy_eV``
    (:func:`eelsgpu._xp.axis_step`: free on NumPy, two syncs on a device)."""
    if axis_eV is not None:
        return float(axis_eV[0]), float(axis_eV[1])
    return axis_step(energy_eV)
