"""The loss grid E_k = k dE of the Kramers-Kronig analysis and the SSD's extrapolations.

The sum rule (kk-theory.md eqs. 26, 29, 33) and the Kramers-Kronig transform (eq. 32) integrate the
single-scattering distribution from 0 eV to infinity; a measured SSD starts near 0 eV and ends at
the window's end. This module puts it on the grid those equations are evaluated on and supplies
the two extrapolations (Egerton 2011, section 4.2, his program KRAKRO):

* :func:`loss_grid` / :class:`LossGrid` / :func:`on_loss_grid`: E_k = k dE, k = 0..K-1, with E_0 = 0
  kept explicitly; when no input channel sits exactly at 0 eV the SSD is linearly interpolated
  onto that grid (a shift of less than a channel, the same for all pixels);
* below a cut-off E_c (:func:`cutoff_index`) the loss function is replaced by c E, c the mean of
  f/E over [E_c, 2 E_c) (done inside :func:`eelsgpu.kernels.sum_rule.sum_rule_integral_rows`,
  which evaluates the sum rule with both extrapolations): both metals and insulators have
  Im[-1/eps] proportional to E at small E, and the 1/E weight of the sum rule would otherwise
  amplify the zero-loss residue of deconvolved data by tens of percent;
* beyond the window the loss function falls as A/E^3 (the asymptote of every damped oscillator):
  A is fitted over the last :data:`TAIL_FRACTION` of the window (from :func:`tail_start`), and
  :func:`tail_decayed` flags pixels where that extrapolation carries
  too much.

Units: energies in eV, SSD in counts per channel; ``f`` is anything proportional to Im[-1/eps]
per eV.

Examples
--------
>>> import numpy as np
>>> g = loss_grid(np.arange(-10, 100) * 0.1 + 0.05)  # no channel at 0 eV: half a channel off
>>> g.start, round(g.frac, 6), g.n, g.pad
(9, 0.5, 100, 0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import EnergyAxisError

__all__ = [
    "DEFAULT_LOW_ENERGY_CUTOFF_EV",
    "MIN_LOSS_RANGE_EV",
    "TAIL_FRACTION",
    "LossGrid",
    "cutoff_index",
    "loss_grid",
    "on_loss_grid",
    "tail_decayed",
    "tail_start",
]

#: Default low-energy cut-off (eV): three FWHM of a typical 0.5 eV zero-loss peak.
DEFAULT_LOW_ENERGY_CUTOFF_EV: float = 1.5
#: Minimum positive-loss range (eV) an analysis accepts.
MIN_LOSS_RANGE_EV: float = 1.0
#: Fraction of the window (at its high end) used to fit the A/E^3 tail.
TAIL_FRACTION: float = 0.1


@dataclass(frozen=True)
class LossGrid:
    """Where the loss grid E_k = k dE (k = 0..n-1) sits on the input channels.

    ``pad`` zero channels are prepended (an axis starting above 0 eV), then
    E_k = (1 - frac) channel[start + k] + frac channel[start + k + 1].
    """

    start: int
    frac: float
    n: int
    dispersion_eV: float
    pad: int

    @property
    def energy_eV(self) -> np.ndarray:
        return np.arange(self.n) * self.dispersion_eV


def loss_grid(energy_eV: Any, *, source: str | None = None) -> LossGrid:
    """The loss grid (E = 0, dE, 2 dE, ...) of a uniform input energy axis.

    Parameters
    ----------
    energy_eV : array (n_E,)
        Uniform, increasing energy axis in eV, loss positive.
    source : str, optional
        File name for error messages.

    Raises
    ------
    EnergyAxisError
        If the axis does not reach ``MIN_LOSS_RANGE_EV`` (1 eV) of positive loss, or starts more
        than 10 channels above 0 eV.
    """
    n_e = int(energy_eV.shape[0])
    where = f" in {source}" if source else ""
    if n_e < 2:
        raise EnergyAxisError(f"the energy axis{where} needs at least 2 channels")
    e_first = float(energy_eV[0])
    e_last = float(energy_eV[n_e - 1])
    de = (e_last - e_first) / (n_e - 1)
    if not de > 0:
        raise EnergyAxisError(f"the energy axis{where} must increase")
    if e_last < MIN_LOSS_RANGE_EV:
        raise EnergyAxisError(
            f"the energy axis{where} ends at {e_last:g} eV: a Kramers-Kronig analysis needs "
            f"losses up to well beyond the plasmon (at least {MIN_LOSS_RANGE_EV:g} eV, in "
            "practice several times the plasmon energy)"
        )
    i_zero = -e_first / de  # fractional channel of 0 eV
    pad = 0
    if i_zero < 0:
        if i_zero < -10.5:
            raise EnergyAxisError(
                f"the energy axis{where} starts at {e_first:g} eV, far above 0 eV: the sum rule "
                "needs the loss function from 0 eV (give the SSD from 0 eV)"
            )
        pad = int(math.ceil(-i_zero - 1e-9))
        i_zero += pad
    start = int(math.floor(i_zero + 1e-6))
    frac = i_zero - start
    if frac < 1e-6:
        frac = 0.0
    n = n_e + pad - start - (1 if frac > 0 else 0)
    return LossGrid(start=start, frac=float(frac), n=int(n), dispersion_eV=float(de), pad=pad)


def on_loss_grid(xp: Any, block: Any, grid: LossGrid) -> Any:
    """The block's channels resampled onto the loss grid, (n_pix, grid.n)."""
    if grid.pad:
        zeros = xp.zeros((block.shape[0], grid.pad), dtype=block.dtype)
        block = xp.concat([zeros, block], axis=-1)
    a = block[:, grid.start : grid.start + grid.n]
    if grid.frac == 0.0:
        return a
    b = block[:, grid.start + 1 : grid.start + 1 + grid.n]
    return (1.0 - grid.frac) * a + grid.frac * b


def cutoff_index(grid: LossGrid, low_energy_cutoff_eV: float) -> tuple[int, int]:
    """(kc, kf): channels below kc are extrapolated, c is fitted over [kc, kf)."""
    if low_energy_cutoff_eV < 0 or not math.isfinite(low_energy_cutoff_eV):
        raise ValueError(f"low_energy_cutoff_eV must be >= 0, not {low_energy_cutoff_eV!r}")
    kc = max(1, int(round(low_energy_cutoff_eV / grid.dispersion_eV)))
    kf = max(2 * kc, kc + 3)
    if kf > grid.n // 2:
        raise EnergyAxisError(
            f"the low-energy cut-off {low_energy_cutoff_eV:g} eV is too high for a loss window "
            f"ending at {(grid.n - 1) * grid.dispersion_eV:g} eV"
        )
    return kc, kf


def tail_start(n: int) -> int:
    """First channel of the A/E^3 tail fit: the last :data:`TAIL_FRACTION` of n (at least 8)."""
    return n - max(8, int(round(TAIL_FRACTION * n)))


def tail_decayed(
    xp: Any, loss: Any, above: Any, tail_coefficient: Any, integral: Any, grid: LossGrid
) -> Any:
    """Per pixel: the loss function has decayed before the window ends.

    True where the mean of Im[-1/eps] over the tail-fit channels is at most 5 % of its maximum
    above E_c and the A/E^3 tail beyond the window holds at most 2 % of the sum-rule integral.

    Parameters
    ----------
    loss : array (n, K)
        Im[-1/eps] on the loss grid (dimensionless).
    above : array (K - 1,) or (n, K - 1) bool
        Channels k >= 1 at or above E_c (per pixel where the cut-off is).
    tail_coefficient : array (n,)
        A of the A/E^3 tail of the SSD's f (see :func:`eelsgpu.kernels.sum_rule.sum_rule_integral_rows`).
    integral : array (n,)
        The sum-rule integral J of f (1/eV units of f), see :mod:`eelsgpu.kernels.sum_rule`.
    """
    sl = slice(1, grid.n)
    f_tail = xp.mean(loss[:, tail_start(grid.n) :], axis=-1)
    above2 = above if above.ndim == 2 else above[None, :]
    f_max = xp.max(xp.where(above2, loss[:, sl], 0.0), axis=-1)
    # the tail's share of J, A/(3 E_m^3) / J (J not positive: the pixel is not analysed)
    e_m3 = 3.0 * ((grid.n - 0.5) * grid.dispersion_eV) ** 3
    tail_part = tail_coefficient / (e_m3 * xp.where(integral > 0, integral, math.inf))
    return (f_tail <= 0.05 * f_max) & (tail_part <= 0.02)
