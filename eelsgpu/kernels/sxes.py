"""SXES emission lines and the grating energy axis: pure data and host floats.

A grating spectrometer's energy axis is not uniform: the CCD pixel ``p`` maps to a wavelength by
a polynomial and ``E = hc / lambda`` (eV, with lambda in nm). A line of first-order photon energy
``E`` diffracted in order ``m`` appears at the first-order energy ``E / m`` (grating equation
``m lambda = d (sin a + sin b)``), so e.g. O-K (524.9 eV) in 3rd order lands at 175.0 eV, inside
a B-K 170-188 eV window. See ../shared/docs/sxes.md for the physics of SXES.

* :data:`JS300N_PROVISIONAL`: the provisional cubic calibration of the JS300N grating derived
  from 13 line centroids of the JEOL test spectra (../shared/data/README.md sec. 2):
  ``lambda(nm) = 1.50453 + 3.71278e-3 p + 1.40811e-6 p^2 - 5.35775e-11 p^3``,
  ``E(eV) = 1239.84 / lambda`` (first order; 824 eV at p = 0 to 85 eV at p = 2047);
  :func:`grating_energy_eV` evaluates it.
* :data:`EMISSION_LINES`: first-order energies (eV) of the emission lines used in SXES work;
  :func:`lines_in_window` and :func:`higher_order_lines_in_window` look them up by window.

The JEOL file reader is :mod:`eelsgpu.io.sxes`, the synthetic SXES image :func:`eelsgpu.synthetic.sxes_image`.

Examples
--------
>>> round(float(grating_energy_eV(0)), 1), round(float(grating_energy_eV(2047)), 1)
(824.1, 85.2)
>>> [h.describe() for h in higher_order_lines_in_window((170, 188), ["O"])]
['O Ka (524.9 eV) in order 3 at 175.0 eV']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = [
    "EMISSION_LINES",
    "HC_EV_NM",
    "JS300N_PROVISIONAL",
    "N_PIXELS",
    "EmissionLine",
    "HigherOrderLineWarning",
    "LineHit",
    "grating_energy_eV",
    "higher_order_lines_in_window",
    "lines_in_window",
]

#: h c in eV nm (E[eV] = HC_EV_NM / lambda[nm]).
HC_EV_NM = 1239.84

#: Provisional JS300N calibration: lambda(nm) = sum c_k p^k, p the CCD pixel 0..2047 (first order).
JS300N_PROVISIONAL: tuple[float, ...] = (1.50453, 3.71278e-3, 1.40811e-6, -5.35775e-11)

#: CCD pixels along the dispersion axis of the JS300N spectrometer.
N_PIXELS = 2048


class HigherOrderLineWarning(UserWarning):
    """A window holds a higher diffraction order of a line of an element that is present."""


@dataclass(frozen=True)
class EmissionLine:
    """One emission line: element, Siegbahn-style name and first-order photon energy (eV)."""

    element: str
    line: str
    energy_eV: float


#: First-order photon energies (eV). K-alpha, L-alpha1 and L-beta1: J. A. Bearden, Rev. Mod. Phys.
#: 39, 78 (1967), as tabulated in the X-ray Data Booklet (LBNL, 3rd ed. 2009), Table 1-2; L-l and
#: L-eta: Bearden (1967) (they agree with exspy's element table within 0.3 eV). S-L (148.7 eV) is
#: the approximate maximum of the S L2,3 valence-band emission. Valence-band emissions are broad:
#: B-K spans ~170-188 eV around its tabulated K-alpha, 183.3 eV.
EMISSION_LINES: tuple[EmissionLine, ...] = (
    EmissionLine("Li", "Ka", 54.3),
    EmissionLine("Be", "Ka", 108.5),
    EmissionLine("B", "Ka", 183.3),
    EmissionLine("C", "Ka", 277.0),
    EmissionLine("N", "Ka", 392.4),
    EmissionLine("O", "Ka", 524.9),
    EmissionLine("F", "Ka", 676.8),
    EmissionLine("Na", "Ka", 1041.0),
    EmissionLine("Mg", "Ka", 1253.6),
    EmissionLine("S", "Ll", 148.7),
    EmissionLine("Ca", "Ll", 302.7),
    EmissionLine("Ca", "Leta", 306.6),
    EmissionLine("Ca", "La", 341.3),
    EmissionLine("Ti", "Ll", 395.3),
    EmissionLine("Ti", "La", 452.2),
    EmissionLine("Ti", "Lb1", 458.4),
    EmissionLine("V", "Ll", 446.5),
    EmissionLine("V", "La", 511.3),
    EmissionLine("Cr", "Ll", 500.3),
    EmissionLine("Cr", "La", 572.8),
    EmissionLine("Mn", "Ll", 556.3),
    EmissionLine("Mn", "La", 637.4),
    EmissionLine("Fe", "Ll", 615.2),
    EmissionLine("Fe", "La", 705.0),
    EmissionLine("Fe", "Lb1", 718.5),
    EmissionLine("Co", "Ll", 677.8),
    EmissionLine("Co", "La", 776.2),
    EmissionLine("Ni", "Ll", 742.7),
    EmissionLine("Ni", "La", 851.5),
    EmissionLine("Cu", "Ll", 811.1),
    EmissionLine("Cu", "La", 929.7),
    EmissionLine("Zn", "Ll", 884.0),
    EmissionLine("Zn", "La", 1011.7),
)


@dataclass(frozen=True)
class LineHit:
    """A line of ``element`` in diffraction ``order`` seen at first-order energy ``apparent_eV``."""

    element: str
    line: str
    energy_eV: float
    order: int
    apparent_eV: float

    def describe(self) -> str:
        return (
            f"{self.element} {self.line} ({self.energy_eV:.1f} eV) in order {self.order} at "
            f"{self.apparent_eV:.1f} eV"
        )


def _known_elements() -> set[str]:
    return {ln.element for ln in EMISSION_LINES}


def lines_in_window(
    window: Sequence[float],
    elements: Iterable[str] | None = None,
    max_order: int = 3,
    min_order: int = 1,
) -> list[LineHit]:
    """Emission lines whose order-``m`` image ``E/m`` falls in ``window`` (eV), m = min..max.

    Parameters
    ----------
    window : (lo_eV, hi_eV)
        First-order energy window.
    elements : iterable of str, optional
        Element symbols to consider (all in :data:`EMISSION_LINES` when None). Unknown symbols are
        an :class:`InputError`.
    max_order, min_order : int
        Diffraction orders to consider.

    Returns
    -------
    list of LineHit
        Sorted by order, then by apparent (first-order) energy in eV.

    Examples
    --------
    >>> [h.describe() for h in lines_in_window((390, 400), ["N", "Ti"])]
    ['N Ka (392.4 eV) in order 1 at 392.4 eV', 'Ti Ll (395.3 eV) in order 1 at 395.3 eV']
    """
    lo, hi = float(window[0]), float(window[1])
    if elements is None:
        wanted = _known_elements()
    else:
        wanted = {str(e).strip().capitalize() for e in elements if str(e).strip()}
        unknown = wanted - _known_elements()
        if unknown:
            raise InputError(
                f"no emission lines tabulated for {sorted(unknown)}; known elements: "
                f"{sorted(_known_elements())}"
            )
    hits = []
    for ln in EMISSION_LINES:
        if ln.element not in wanted:
            continue
        for m in range(int(min_order), int(max_order) + 1):
            apparent = ln.energy_eV / m
            if lo <= apparent <= hi:
                hits.append(LineHit(ln.element, ln.line, ln.energy_eV, m, apparent))
    return sorted(hits, key=lambda h: (h.order, h.apparent_eV))


def higher_order_lines_in_window(
    window: Sequence[float], elements: Iterable[str] | None = None, max_order: int = 3
) -> list[LineHit]:
    """Lines of ``elements`` that fall in ``window`` (eV) in diffraction order 2..``max_order``.

    The grating equation: order ``m`` shows a line of energy ``E`` at ``E / m`` (eV).

    Parameters
    ----------
    window : (lo_eV, hi_eV)
        First-order energy window.
    elements : iterable of str, optional
        Element symbols (all tabulated ones when None).
    max_order : int
        Highest diffraction order considered.

    Returns
    -------
    list of LineHit

    Examples
    --------
    With the JS300N grating O-K in 3rd order lands at 175 eV, inside a B-K 170-188 eV window:

    >>> [h.order for h in higher_order_lines_in_window((170, 188), ["B", "O"])]
    [3]
    """
    return lines_in_window(window, elements, max_order=max_order, min_order=2)


def grating_energy_eV(
    pixel: Any, coefficients: Sequence[float] = JS300N_PROVISIONAL, order: int = 1
) -> np.ndarray:
    """Photon energy (eV) of CCD ``pixel`` in diffraction ``order``: ``m hc / lambda(p)``.

    ``lambda(p)`` (nm) is the first-order polynomial ``sum c_k p^k`` (default: the provisional
    JS300N cubic, ../shared/data/README.md sec. 2); in order ``m`` the same pixel sees photons of
    ``m`` times the first-order energy (grating equation ``m lambda = d (sin a + sin b)``).

    Parameters
    ----------
    pixel : int or array of int
        CCD pixel(s), 0..2047.
    coefficients : sequence of float
        ``c_k`` of ``lambda(p) = sum c_k p^k``, lambda in nm.
    order : int
        Diffraction order ``m``.

    Returns
    -------
    numpy.ndarray
        Photon energy in eV (host float64).
    """
    p = np.asarray(pixel, dtype=np.float64)
    lam = np.polynomial.polynomial.polyval(p, np.asarray(coefficients, dtype=np.float64))
    return int(order) * HC_EV_NM / lam
