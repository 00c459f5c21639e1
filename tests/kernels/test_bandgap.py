"""The band-gap kernel against synthetic onsets with known Eg and b, on every namespace."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import asarray, to_numpy

from eelsgpu.kernels.bandgap import B_FREE, bandgap_kernel

DISP = 0.02  # eV per channel of the synthetic onsets


def onset_spectra(eg_eV, b, n_pix, *, amplitude=1000.0, tail=2e4, floor=20.0, seed=0):
    """Poisson spectra of A (E - Eg)^b + a ZLP tail tail*(E/0.5)^-2.5 + a flat floor.

    The noise level: A = 1000 counts per channel at 1 eV above the gap, a tail of 2e4 counts at
    0.5 eV (about 700 at 2 eV), 20 counts of floor; channels of 0.02 eV from 0.1 to 9 eV. The
    tail exponent 2.5 is not on the fit's grid of power-law exponents (1, 2, 3, 4, 6).
    """
    e = np.arange(0.1, 9.0, DISP)
    lam = amplitude * np.clip(e - eg_eV, 0, None) ** b + tail * (e / 0.5) ** -2.5 + floor
    rng = np.random.default_rng(seed)
    return e, rng.poisson(np.broadcast_to(lam, (n_pix, e.size))).astype(np.float64)


@pytest.mark.parametrize("eg_true,b_true", [(1.5, 0.5), (3.0, 1.5)])
def test_kernel_recovers_gap_over_namespaces(xp, eg_true, b_true):
    """Truth: the Eg and b the synthetic Poisson onsets were drawn with (noise level of
    onset_spectra). The kernel alone, in NumPy and array-api-strict: Eg within 0.1 eV, type right."""
    e, y = onset_spectra(eg_true, b_true, 12, seed=1)
    i0, i1 = np.searchsorted(e, [eg_true - 0.8, eg_true + 1.5])
    eg_grid = np.arange(e[i0], e[i1] - 10 * DISP, DISP)
    out = bandgap_kernel(
        asarray(xp, y),
        asarray(xp, e),
        window=(int(i0), int(i1)),
        eg_grid_eV=asarray(xp, eg_grid),
        b_values=B_FREE,
        background="power-law",
    )
    valid = to_numpy(out["valid"])
    eg = to_numpy(out["bandgap_eV"])
    assert valid.mean() >= 0.9
    assert np.all(np.abs(eg[valid] - eg_true) < 0.1)
    assert np.all(to_numpy(out["gap_type"])[valid] == (1 if b_true > 1 else 0))
    assert np.all(np.abs(to_numpy(out["exponent_b"])[valid] - b_true) < 0.35)
    assert np.all(np.isnan(eg[~valid]))
