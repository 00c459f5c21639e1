"""The band-gap kernel against synthetic onsets with known Eg and b, on every namespace."""

from __future__ import annotations

import numpy as np
import pytest
from _data import ONSET_DISP as DISP
from _data import onset_spectra
from conftest import asarray, to_numpy

from eelsgpu.kernels import quality as q
from eelsgpu.kernels.bandgap import B_FREE, bandgap_kernel


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


def _zlp(e, centre, fwhm, counts):
    """A Gaussian zero-loss peak with slowly decaying (Lorentzian) wings, counts per channel."""
    s = fwhm / 2.3548
    g = np.exp(-0.5 * ((e - centre) / s) ** 2)
    wings = 0.002 / (1 + ((e - centre) / fwhm) ** 2)
    shape = g + wings
    return counts * shape / shape.sum()


@pytest.mark.parametrize("shift", [0.0, 0.013])
def test_reference_zlp_route_over_namespaces(xp, shift):
    """Truth: spectra drawn (Poisson) as a ZLP with broad wings (centre 0.02 eV, 0.1 eV FWHM,
    1e8 counts) plus a direct onset at Eg = 1.6 eV (300 counts per channel at 1 eV above it)
    on a flat floor of 50 counts; the reference is the same ZLP shape, noise-free, of another
    intensity and moved by ``shift``. bandgap_block subtracts it (shifted and scaled to each
    pixel), fits on energy relative to each ZLP centre: Eg within 0.05 eV, the centre within
    a channel, N0 within 1 %, no residue flag from a window starting at 0.8 eV."""
    from eelsgpu.kernels.bandgap import bandgap_block

    e = np.arange(-0.9, 4.0, 0.005)
    z = _zlp(e, 0.02, 0.1, 1e8)
    lam = z + 300.0 * np.clip(e - 0.02 - 1.6, 0, None) ** 0.5 + 50.0
    y = np.random.default_rng(4).poisson(np.broadcast_to(lam, (6, e.size))).astype(float)
    ref = _zlp(e, 0.02 + shift, 0.1, 3e6)
    i0, i1 = np.searchsorted(e, [0.8, 3.5])
    out = bandgap_block(
        asarray(xp, y),
        asarray(xp, e),
        window=(int(i0), int(i1)),
        eg_grid_eV=asarray(xp, np.arange(e[i0], e[i1] - 0.05, 0.01)),
        b_values=B_FREE,
        background="constant",
        zlp_method="reference",
        reference=asarray(xp, ref),
        search_eV=(-0.5, 0.5),
    )
    out = {k: to_numpy(v) for k, v in out.items()}
    assert np.all(out["valid"])
    assert np.all(np.abs(out["bandgap_eV"] - 1.6) < 0.05)
    assert np.all(np.abs(out["zlp_centre_eV"] - 0.02) < 0.005)
    assert np.all(np.abs(out["zlp_intensity"] / z.sum() - 1) < 0.01)
    assert np.all(out["quality"] == 0)


def test_window_in_the_zlp_residue_is_flagged(xp):
    """Truth: constructed ZLP-removed spectra: a residue decaying as 4000 exp(-E / 0.1 eV) over
    a floor of 100 counts and a direct onset at 2.0 eV rising by 735 counts over the window's
    top third (2.7-3.5 eV). A window from 0.15 eV starts where the residue, averaged over the
    window's first 0.04 eV, is 1.0 times that rise (0.8-1.1 measured with the noise): excess
    above the 0.5 limit, WINDOW_IN_ZLP_RESIDUE, not valid, and the residue's end
    (where it is half the rise: 0.1 ln(4000/368) = 0.24 eV, plus the 0.04 eV smoothing) reported
    within 0.22-0.30 eV; a window from 0.8 eV is clean (no bit, valid, Eg within 0.05 eV). Not
    said to be ZLP-removed (a raw spectrum's tail), the first window is not flagged for the
    residue."""
    from eelsgpu.kernels.bandgap import RESIDUE_LIMIT, bandgap_block

    e = np.arange(0.05, 4.0, 0.01)
    lam = 4000 * np.exp(-e / 0.1) + 100.0 + 600.0 * np.clip(e - 2.0, 0, None) ** 0.5
    y = np.random.default_rng(5).poisson(np.broadcast_to(lam, (4, e.size))).astype(float)

    def run(lo, removed):
        i0, i1 = np.searchsorted(e, [lo, 3.5])
        out = bandgap_block(
            asarray(xp, y),
            asarray(xp, e),
            window=(int(i0), int(i1)),
            eg_grid_eV=asarray(xp, np.arange(e[i0], e[i1] - 0.1, 0.01)),
            b_values=(0.5,),
            background="constant",
            zlp_removed=removed,
        )
        return {k: to_numpy(v) for k, v in out.items()}

    early = run(0.15, True)
    assert np.all(early["residue_excess"] > RESIDUE_LIMIT)
    assert np.all(early["quality"] & q.WINDOW_IN_ZLP_RESIDUE) and not early["valid"].any()
    assert np.all((early["residue_excess"] > 0.7) & (early["residue_excess"] < 1.1))
    assert np.all((early["zlp_residue_end_eV"] > 0.22) & (early["zlp_residue_end_eV"] < 0.30))
    late = run(0.8, True)
    assert np.all(late["quality"] == 0) and np.all(late["valid"])
    assert np.all(np.abs(late["bandgap_eV"] - 2.0) < 0.05)
    raw = run(0.15, False)
    assert not np.any(raw["quality"] & q.WINDOW_IN_ZLP_RESIDUE)


def test_float32_counts_give_the_float64_answer(xp):
    """Truth: the float64 run on the same spectra (Poisson counts: integers, exact in float32).
    The kernel fits in float64 whatever its input (its chi^2 profile is a difference of large
    sums; see bandgap_kernel), so float32 counts, on NumPy and array-api-strict, give exactly
    the float64 input's gap, error, exponent and flags."""
    e, y = onset_spectra(2.0, 1.5, 8, seed=2)
    i0, i1 = np.searchsorted(e, [1.2, 3.5])
    eg_grid = np.arange(e[i0], e[i1] - 10 * DISP, DISP)
    kw = dict(window=(int(i0), int(i1)), b_values=B_FREE, background="power-law")
    out = {}
    for dtype in (np.float32, np.float64):
        res = bandgap_kernel(
            asarray(xp, y, dtype), asarray(xp, e), eg_grid_eV=asarray(xp, eg_grid), **kw
        )
        out[dtype] = {k: to_numpy(v) for k, v in res.items()}
    assert out[np.float64]["valid"].mean() >= 0.9
    for k in ("bandgap_eV", "bandgap_error_eV", "exponent_b", "gap_type", "valid"):
        np.testing.assert_array_equal(out[np.float32][k], out[np.float64][k])
