"""Noise realisations and coverage statistics for the uncertainty tests (issue 14).

A coverage test draws several hundred Poisson realisations of ONE noise-free truth as the pixels
of one image (so one kernel call does them all), runs the estimator with its sigma, and compares:

* the quoted sigma (median over realisations) with the observed scatter (standard deviation of
  the estimates): :attr:`Coverage.ratio`, honest within 0.85-1.15;
* the fraction of realisations whose truth lies inside +-1 sigma (62-74 % honest) and +-2 sigma
  (92-98 %), where the estimator's bias is small against sigma (:attr:`Coverage.bias`).

The truths: :func:`sxes_truth` (``eelsgpu.synthetic.sxes_image``, noise-free), :func:`edge_truth`
(a power-law background ``A E^-r`` with an L-edge-like step, analytic), :func:`log_ratio_image`
(``eelsgpu.synthetic.low_loss_image`` at set ZLP counts and t/lambda).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eelsgpu import synthetic

#: Counting levels of the issue (counts in the window, or in the ZLP).
LEVELS = (1e4, 1e5, 1e6)


def poisson_realisations(expected: np.ndarray, n: int, seed: int, gain: float = 1.0) -> np.ndarray:
    """``n`` realisations ``gain * Poisson(expected / gain)`` of one expected spectrum: (n, n_E)."""
    rng = np.random.default_rng(seed)
    lam = np.clip(np.asarray(expected, dtype=np.float64), 0, None) / gain
    return gain * rng.poisson(np.broadcast_to(lam, (n, lam.size))).astype(np.float64)


@dataclass(frozen=True)
class Coverage:
    """How honest sigmas are across realisations of one truth."""

    ratio: float  # median quoted sigma / observed standard deviation
    inside1: float  # fraction with |estimate - truth| < sigma
    inside2: float  # fraction with |estimate - truth| < 2 sigma
    bias: float  # (mean estimate - truth) / median sigma
    n: int  # finite realisations

    def describe(self) -> str:
        return (
            f"sigma/scatter {self.ratio:.3f}, inside 1 sigma {self.inside1:.3f}, "
            f"2 sigma {self.inside2:.3f}, bias {self.bias:+.3f} sigma, n {self.n}"
        )


def coverage(estimates, sigmas, truth: float) -> Coverage:
    """:class:`Coverage` of ``estimates`` with their ``sigmas`` about ``truth`` (NaNs dropped)."""
    v = np.asarray(estimates, dtype=np.float64).ravel()
    s = np.asarray(sigmas, dtype=np.float64).ravel()
    ok = np.isfinite(v) & np.isfinite(s) & (s > 0)
    v, s = v[ok], s[ok]
    z = np.abs(v - truth) / s
    med = float(np.median(s))
    return Coverage(
        ratio=med / float(np.std(v, ddof=1)),
        inside1=float(np.mean(z < 1)),
        inside2=float(np.mean(z < 2)),
        bias=(float(np.mean(v)) - truth) / med,
        n=int(v.size),
    )


def assert_honest(cov: Coverage, what: str, *, intervals: bool = True, ratio: bool = True) -> None:
    """The issue's bounds: with ``ratio``, sigma/scatter 0.85-1.15; with ``intervals`` (bias
    small), truth inside +-1 sigma in 62-74 % and inside +-2 sigma in 92-98 % of realisations."""
    if ratio:
        assert 0.85 <= cov.ratio <= 1.15, f"{what}: {cov.describe()}"
    if intervals:
        assert abs(cov.bias) < 0.3, f"{what}: bias not small, {cov.describe()}"
        assert 0.62 <= cov.inside1 <= 0.74, f"{what}: {cov.describe()}"
        assert 0.92 <= cov.inside2 <= 0.98, f"{what}: {cov.describe()}"


def agree(a, b, what: str, tol: float = 0.2) -> float:
    """Median of ``a`` / median of ``b`` within 1 +- ``tol`` (analytic vs replica sigmas)."""
    r = float(np.nanmedian(np.asarray(a, float)) / np.nanmedian(np.asarray(b, float)))
    assert abs(r - 1) <= tol, f"{what}: analytic/replicas {r:.3f}"
    return r


# --------------------------------------------------------------------------- truths
def sxes_truth() -> tuple[np.ndarray, np.ndarray]:
    """(energy, expected counts per channel) of the CaB6-like state of
    ``eelsgpu.synthetic.sxes_image`` (non-uniform JS300N axis, 140-200 eV), noise-free."""
    ds = synthetic.sxes_image((1, 1), regions="halves", noise=False, dtype=np.float64)
    return ds["energy"].values, ds["true_signal"].values.reshape(-1)


def edge_truth(n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(energy, expected counts) of a core-loss spectrum: ``A E^-3`` background on 700-1100 eV
    (1 eV channels) plus a Cu-L3-like step of half the background at 931 eV that rises over
    2 eV and decays slowly (analytic)."""
    e = 700.0 + np.arange(n, dtype=np.float64)
    bg = (e / 700.0) ** -3.0
    step = 0.5 * (1 + np.tanh((e - 932.0) / 1.0)) / 2 * (e / 931.0) ** -1.5
    return e, bg + step


def scaled(energy: np.ndarray, expected: np.ndarray, window: tuple[float, float], total: float):
    """``expected`` scaled so that the channels inside ``window`` (eV) hold ``total`` counts."""
    inside = (energy >= window[0]) & (energy <= window[1])
    return expected * (total / expected[inside].sum())


def log_ratio_image(groups, n_pix: int, seed: int = 5):
    """A synthetic Drude image (``eelsgpu.synthetic.low_loss_image``), one row per (N0, t/lambda)
    group of ``groups`` with ``n_pix`` Poisson realisations each: the ZLP holds N0 counts; 1024
    channels of 0.1 eV from -5 eV."""
    g = np.asarray(groups, dtype=np.float64)
    tl = np.repeat(g[:, 1], n_pix).reshape(len(g), n_pix)
    total = np.repeat(g[:, 0] * np.exp(g[:, 1]), n_pix).reshape(len(g), n_pix)
    return synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0),
        t_over_lambda=tl,
        shape=tl.shape,
        n_channels=1024,
        dispersion_eV=0.1,
        total_counts=total,
        noise=True,
        seed=seed,
        dtype=np.float64,
    )
