"""The per-pixel ``quality`` bitmask every result carries: what went wrong where, and how badly.

A number that cannot be trusted is flagged, never returned as good. Each analysis sets the bits
its checks raise in a ``quality`` map (uint32, one bit per problem); ``valid`` is True exactly
where no *fatal* bit is set (and the pixel had data at all). The non-fatal bits are warnings: the
result is computed and kept, but the user should look (the report draws every bit as a map).

=====  ==========================  =====  ======================================================
bit    name                        fatal  meaning, and what to do about it
=====  ==========================  =====  ======================================================
0      NO_ZLP                      yes    no usable zero-loss peak: none in the window, not
                                          significant above the noise, saturated, cut by the
                                          window's edge, or non-finite counts
1      ZLP_MISMATCH                yes    the ZLP model does not fit this pixel (its N0 against
                                          truncation's, or its excess over the data on the loss
                                          side beyond counting noise): try another ``zlp=``
                                          (``threshold``, a measured vacuum reference)
2      NEGATIVE_TAIL               no     the counts extrapolated beyond the window came out
                                          negative; the tail is dropped (window only)
3      TAIL_UNTRUSTED              no     the tail beyond the window is no larger than its own
                                          uncertainty; t/lambda counts the window only
4      RINGING                     yes    the raw SSD rings above 0.1 of its peak
5      NEGATIVE_LOBE               yes    the SSD has a negative lobe below -0.1 of its peak
                                          beyond 3 ZLP FWHM: the spectrum breaks the
                                          Fourier-log model (off-axis, q-resolved, or a
                                          background under the spectrum)
6      NEGATIVE_T_OVER_LAMBDA      yes    t/lambda < 0 (N0 above the total counts)
7      EPS2_NEGATIVE               yes    eps2 or Im[-1/eps] < 0 in more channels than counting
                                          noise explains (the share is its own map)
8      KK_THICKNESS_DISAGREES      no     the KK thickness and the log-ratio thickness (with the
                                          mean free path) differ by more than the stated factor
9      SURFACE_NOT_CORRECTED       no     a thin film whose surface losses matter (eq. 36) but
                                          whose surface correction did not run or failed: eps
                                          below the plasmon is not to be trusted
10     UNPHYSICAL_BACKGROUND       no     counts far from the ZLP (below its gain side, or at
                                          the window's high end) well above what the spectrum's
                                          E^-3 tail allows: a dark-current or background offset
11     WINDOW_IN_ZLP_RESIDUE       yes    (band gap) the fit window starts where the ZLP's
                                          residue still dominates
12     AXIS_OFFSET                 no     the ZLP sits far from 0 eV on the stored axis (the
                                          axis was not calibrated); results are on energy
                                          relative to the ZLP
13     NO_ONSET                    yes    (band gap) the onset fit failed: not significant above
                                          the noise, its Eg or b at the edge of the search
                                          range, or far worse than the image's median fit
14     FIT_NOT_CONVERGED           yes    (film fit) the fit still gains deviance at its last
                                          step, or no finite fit: more iterations, other starts
15     FIT_AT_BOUND                no     (film fit) a parameter ended on its box bound
16     FIT_NON_UNIQUE              no     (film fit) another start fits as well (delta D < 2)
                                          more than 3 sigma away: the data do not settle eps
17     FIT_BAD                     no     (film fit) reduced deviance > 2: the model misses the
                                          data (another oscillator, an oxide, retardation)
18     CERENKOV_NO_RETARDATION     yes    (film fit) eps1 > 1/beta_v^2 fitted without
                                          retardation: refit with ``retardation=True``
19     THIN_UNCOUPLED              no     (film fit) t < 2 v/omega_p fitted with eq. 36's
                                          uncoupled surfaces: use ``model="film"``
20     METAL_LOW_E_NO_RETARDATION  no     (film fit) a metal fitted below 8 eV without
                                          retardation
21     OSCILLATOR_OUTSIDE_WINDOW   no     (film fit) an oscillator outside the window (fixed)
22     QUADRATURE                  no     (film fit) the fine angular rule moves a channel by
                                          more than 0.3 sigma
23     BETA_EXCEEDS_CUTOFF         no     (film fit) the collection angle is beyond the plasmon
                                          cut-off q_c/k0: give ``cutoff_mrad``

Bits 14-23 are :data:`eelsgpu.kernels.film_fit.FIT_BITS` (``fit_flags``) shifted by
:data:`FIT_SHIFT`, in the same order (thin-film-theory.md section 3.5).
=====  ==========================  =====  ======================================================

Examples
--------
>>> int(NO_ZLP | RINGING)
17
>>> names(NO_ZLP | AXIS_OFFSET)
['NO_ZLP', 'AXIS_OFFSET']
>>> bool(FATAL & NEGATIVE_TAIL)
False
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AXIS_OFFSET",
    "BITS",
    "BETA_EXCEEDS_CUTOFF",
    "CERENKOV_NO_RETARDATION",
    "EPS2_NEGATIVE",
    "FATAL",
    "FIT_AT_BOUND",
    "FIT_BAD",
    "FIT_NON_UNIQUE",
    "FIT_NOT_CONVERGED",
    "FIT_SHIFT",
    "KK_THICKNESS_DISAGREES",
    "METAL_LOW_E_NO_RETARDATION",
    "NEGATIVE_LOBE",
    "NEGATIVE_TAIL",
    "NEGATIVE_T_OVER_LAMBDA",
    "NO_ONSET",
    "NO_ZLP",
    "OSCILLATOR_OUTSIDE_WINDOW",
    "QUADRATURE",
    "RINGING",
    "SURFACE_NOT_CORRECTED",
    "TAIL_UNTRUSTED",
    "THIN_UNCOUPLED",
    "UNPHYSICAL_BACKGROUND",
    "WINDOW_IN_ZLP_RESIDUE",
    "ZLP_MISMATCH",
    "describe",
    "names",
    "set_bit",
]

NO_ZLP = 1 << 0
ZLP_MISMATCH = 1 << 1
NEGATIVE_TAIL = 1 << 2
TAIL_UNTRUSTED = 1 << 3
RINGING = 1 << 4
NEGATIVE_LOBE = 1 << 5
NEGATIVE_T_OVER_LAMBDA = 1 << 6
EPS2_NEGATIVE = 1 << 7
KK_THICKNESS_DISAGREES = 1 << 8
SURFACE_NOT_CORRECTED = 1 << 9
UNPHYSICAL_BACKGROUND = 1 << 10
WINDOW_IN_ZLP_RESIDUE = 1 << 11
AXIS_OFFSET = 1 << 12
NO_ONSET = 1 << 13
#: The film fit's flags (``film_fit.FIT_BITS``, bits 0-9) sit at bits 14-23 here.
FIT_SHIFT = 14
FIT_NOT_CONVERGED = 1 << 14
FIT_AT_BOUND = 1 << 15
FIT_NON_UNIQUE = 1 << 16
FIT_BAD = 1 << 17
CERENKOV_NO_RETARDATION = 1 << 18
THIN_UNCOUPLED = 1 << 19
METAL_LOW_E_NO_RETARDATION = 1 << 20
OSCILLATOR_OUTSIDE_WINDOW = 1 << 21
QUADRATURE = 1 << 22
BETA_EXCEEDS_CUTOFF = 1 << 23

#: name -> (bit value, fatal, one-line meaning), in bit order.
BITS: dict[str, tuple[int, bool, str]] = {
    "NO_ZLP": (NO_ZLP, True, "no usable zero-loss peak"),
    "ZLP_MISMATCH": (ZLP_MISMATCH, True, "the ZLP model does not fit this pixel"),
    "NEGATIVE_TAIL": (NEGATIVE_TAIL, False, "negative tail beyond the window (dropped)"),
    "TAIL_UNTRUSTED": (TAIL_UNTRUSTED, False, "tail beyond the window within its uncertainty"),
    "RINGING": (RINGING, True, "the raw SSD rings above 0.1 of its peak"),
    "NEGATIVE_LOBE": (NEGATIVE_LOBE, True, "negative SSD lobe: the Fourier-log model fails"),
    "NEGATIVE_T_OVER_LAMBDA": (NEGATIVE_T_OVER_LAMBDA, True, "t/lambda < 0"),
    "EPS2_NEGATIVE": (EPS2_NEGATIVE, True, "eps2 or Im[-1/eps] negative beyond noise"),
    "KK_THICKNESS_DISAGREES": (
        KK_THICKNESS_DISAGREES,
        False,
        "KK and log-ratio thickness disagree",
    ),
    "SURFACE_NOT_CORRECTED": (
        SURFACE_NOT_CORRECTED,
        False,
        "surface losses matter but were not corrected",
    ),
    "UNPHYSICAL_BACKGROUND": (UNPHYSICAL_BACKGROUND, False, "background offset under the data"),
    "WINDOW_IN_ZLP_RESIDUE": (WINDOW_IN_ZLP_RESIDUE, True, "fit window inside the ZLP residue"),
    "AXIS_OFFSET": (AXIS_OFFSET, False, "ZLP far from 0 eV on the stored axis"),
    "NO_ONSET": (NO_ONSET, True, "no significant band-gap onset, or a fit at its range's edge"),
    "FIT_NOT_CONVERGED": (FIT_NOT_CONVERGED, True, "film fit not converged, or no finite fit"),
    "FIT_AT_BOUND": (FIT_AT_BOUND, False, "a film-fit parameter ended on its box bound"),
    "FIT_NON_UNIQUE": (
        FIT_NON_UNIQUE,
        False,
        "another film-fit start fits as well, > 3 sigma away",
    ),
    "FIT_BAD": (FIT_BAD, False, "film fit's reduced deviance > 2: the model misses the data"),
    "CERENKOV_NO_RETARDATION": (
        CERENKOV_NO_RETARDATION,
        True,
        "eps1 > 1/beta_v^2 fitted without retardation",
    ),
    "THIN_UNCOUPLED": (THIN_UNCOUPLED, False, "thin film fitted with uncoupled surfaces (eq. 36)"),
    "METAL_LOW_E_NO_RETARDATION": (
        METAL_LOW_E_NO_RETARDATION,
        False,
        "a metal fitted below 8 eV without retardation",
    ),
    "OSCILLATOR_OUTSIDE_WINDOW": (
        OSCILLATOR_OUTSIDE_WINDOW,
        False,
        "a film-fit oscillator outside the window (fixed)",
    ),
    "QUADRATURE": (QUADRATURE, False, "the fine angular rule moves a channel by > 0.3 sigma"),
    "BETA_EXCEEDS_CUTOFF": (BETA_EXCEEDS_CUTOFF, False, "beta beyond the plasmon cut-off"),
}

#: The bits that make a pixel not valid.
FATAL: int = sum(bit for bit, fatal, _ in BITS.values() if fatal)


def names(mask: int) -> list[str]:
    """The names of the bits set in ``mask`` (an int), in bit order."""
    return [name for name, (bit, _, _) in BITS.items() if int(mask) & bit]


def describe() -> dict[str, Any]:
    """The bit table as plain data, for a result's ``quality`` attributes (JSON-safe)."""
    return {
        name: {"bit": bit, "fatal": fatal, "meaning": text}
        for name, (bit, fatal, text) in BITS.items()
    }


def set_bit(xp: Any, quality: Any, condition: Any, bit: int) -> Any:
    """``quality | bit`` where ``condition`` (n,) is True; ``quality`` (n,) uint32 (array API)."""
    return xp.where(condition, quality | bit, quality)
