"""Inelastic mean free paths, for absolute thickness from the log-ratio t/lambda (host floats).

* :func:`mean_free_path_iakoubovskii_nm`: Iakoubovskii et al., Microsc. Res. Tech. 71, 626 (2008),
  from the density, with :func:`iakoubovskii_angular_correction` for a finite collection and
  convergence angle;
* :func:`mean_free_path_malis_nm`: Malis, Cheng & Egerton, J. Electron Microsc. Tech. 8, 193
  (1988), from the effective atomic number (:func:`effective_atomic_number`).

All take and return Python floats: E0 in keV, angles in mrad, density in g/cm^3, lengths in nm.
Both papers use the rounded 1022/511 keV form of the relativistic factor F, so this module has
its own (:func:`relativistic_factor_F_rounded`), not :func:`eelsgpu.physics.relativistic_factor_F`.

Examples
--------
>>> round(mean_free_path_iakoubovskii_nm(2.70, 200.0), 1)  # Al, large aperture
143.5
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = [
    "effective_atomic_number",
    "iakoubovskii_angular_correction",
    "mean_free_path_iakoubovskii_nm",
    "mean_free_path_malis_nm",
    "relativistic_factor_F_rounded",
]


def relativistic_factor_F_rounded(beam_energy_keV: float) -> float:
    """F = (1 + E0/1022) / (1 + E0/511)^2 with E0 in keV, as Iakoubovskii's and Malis's papers
    round it (dimensionless)."""
    e0 = float(beam_energy_keV)
    if not (math.isfinite(e0) and e0 > 0):
        raise ValueError(
            f"beam_energy_keV must be a positive number of keV, not {beam_energy_keV!r}"
        )
    return (1.0 + e0 / 1022.0) / (1.0 + e0 / 511.0) ** 2


def iakoubovskii_angular_correction(
    density_g_cm3: float,
    beam_energy_keV: float,
    collection_angle_mrad: float,
    convergence_angle_mrad: float = 0.0,
) -> float:
    """Angular correction C of Iakoubovskii et al. (2008) for a finite aperture.

    ``C = ln(thC^2/thE^2) / ln(A thC^2 / (B thE^2))`` with ``A = a^2 + b^2 + 2 thE^2 + |a^2 - b^2|``,
    ``B = a^2 + b^2 + 2 thC^2 + |a^2 - b^2|``, ``thE = 5.5 rho^0.3 / (F E0)`` mrad, ``thC = 20``
    mrad (a = convergence, b = collection semi-angle, mrad; E0 keV; rho g/cm^3). The measured
    t/lambda times C is t over the large-aperture mean free path.

    Examples
    --------
    >>> round(iakoubovskii_angular_correction(3.6, 200.0, 20.0, 10.0), 3)
    1.064
    """
    f = relativistic_factor_F_rounded(beam_energy_keV)
    th_e = 5.5 * float(density_g_cm3) ** 0.3 / (f * float(beam_energy_keV))
    th_c = 20.0
    a2, b2 = float(convergence_angle_mrad) ** 2, float(collection_angle_mrad) ** 2
    big_a = a2 + b2 + 2.0 * th_e**2 + abs(a2 - b2)
    big_b = a2 + b2 + 2.0 * th_c**2 + abs(a2 - b2)
    return math.log(th_c**2 / th_e**2) / math.log(big_a * th_c**2 / (big_b * th_e**2))


def mean_free_path_iakoubovskii_nm(
    density_g_cm3: float,
    beam_energy_keV: float,
    collection_angle_mrad: float | None = None,
    convergence_angle_mrad: float = 0.0,
) -> float:
    """Inelastic mean free path (nm) from the density, Iakoubovskii et al., Microsc. Res. Tech.
    71, 626 (2008), eq. 9.

    ``1/lambda = 11 rho^0.3 / (200 F E0) ln(thC^2 / thE^2)`` (per nm; rho in g/cm^3, E0 in keV,
    F = (1 + E0/1022)/(1 + E0/511)^2, thE = 5.5 rho^0.3/(F E0) mrad, thC = 20 mrad). That is the
    large-aperture value; with ``collection_angle_mrad`` (and the convergence angle, mrad) it is
    multiplied by :func:`iakoubovskii_angular_correction`, giving the effective lambda for the
    t/lambda measured with that aperture (t = t/lambda x lambda).

    Examples
    --------
    >>> round(mean_free_path_iakoubovskii_nm(2.70, 200.0), 1)  # Al, large aperture
    143.5
    """
    rho = float(density_g_cm3)
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"density_g_cm3 must be positive, not {density_g_cm3!r}")
    f = relativistic_factor_F_rounded(beam_energy_keV)
    e0 = float(beam_energy_keV)
    th_e = 5.5 * rho**0.3 / (f * e0)
    inv = 11.0 * rho**0.3 / (200.0 * f * e0) * math.log(20.0**2 / th_e**2)
    lam = 1.0 / inv
    if collection_angle_mrad is not None:
        lam *= iakoubovskii_angular_correction(
            rho, e0, collection_angle_mrad, convergence_angle_mrad or 0.0
        )
    return lam


_SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se "
    "Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy "
    "Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U"
).split()


def effective_atomic_number(composition: Mapping[str | int, float]) -> float:
    """Zeff = sum f_i Z_i^1.3 / sum f_i Z_i^0.3 (Malis et al. 1988), f_i atom fractions.

    ``composition`` maps element symbols or atomic numbers to atom counts or fractions.

    Examples
    --------
    >>> round(effective_atomic_number({"Si": 1, "O": 2}), 2)
    10.23
    """
    num = den = 0.0
    for el, frac in composition.items():
        z = el if isinstance(el, int) else _SYMBOLS.index(str(el).capitalize()) + 1
        num += float(frac) * z**1.3
        den += float(frac) * z**0.3
    if den <= 0:
        raise ValueError("composition needs at least one element with a positive fraction")
    return num / den


def mean_free_path_malis_nm(
    beam_energy_keV: float,
    collection_angle_mrad: float,
    zeff: float | None = None,
    composition: Mapping[str | int, float] | None = None,
) -> float:
    """Inelastic mean free path (nm), Malis, Cheng & Egerton, J. Electron Microsc. Tech. 8, 193
    (1988): ``lambda = 106 F E0 / (Em ln(2 beta E0 / Em))``, ``Em = 7.6 Zeff^0.36`` eV.

    E0 in keV, beta (collection semi-angle) in mrad, F = (1 + E0/1022)/(1 + E0/511)^2; Zeff given
    or from ``composition`` (see :func:`effective_atomic_number`). Valid for beta below about
    15 mrad and E0 of 100-300 keV (the paper's range); larger beta is outside it.

    Examples
    --------
    >>> round(mean_free_path_malis_nm(200.0, 100.0, zeff=13), 1)  # Al
    89.5
    """
    if zeff is None:
        if composition is None:
            raise ValueError("give zeff= or composition= for the Malis mean free path")
        zeff = effective_atomic_number(composition)
    f = relativistic_factor_F_rounded(beam_energy_keV)
    e0 = float(beam_energy_keV)
    em = 7.6 * float(zeff) ** 0.36
    return 106.0 * f * e0 / (em * math.log(2.0 * float(collection_angle_mrad) * e0 / em))
