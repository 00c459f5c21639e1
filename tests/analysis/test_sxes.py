"""SXES: the real JEOL spectra (known emission lines), the higher-order warning of window_maps,
and a synthetic two-state SXES image segmented by the top-of-band window map."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from eelsgpu.analysis.maps import window_maps
from eelsgpu.errors import InputError
from eelsgpu.io.sxes import read_sxes
from eelsgpu.kernels.sxes import HigherOrderLineWarning
from eelsgpu.synthetic import sxes_image


@pytest.fixture(scope="module")
def sxes_dir(shared_data):
    p = shared_data / "sxes"
    if not (p / "test_plzip").is_dir():
        pytest.skip(f"real SXES data not found at {p}")
    return p


@pytest.fixture(scope="module")
def spectra(sxes_dir):
    return read_sxes(sxes_dir / "test_plzip")


def _one(spectra, prefix):
    (key,) = [k for k in spectra if k.startswith(prefix)]
    return spectra[key]


def test_read_sxes_formats_agree(sxes_dir, spectra):
    """Truth: the real files. The .plzip archive, its unzipped folder and the converted .npz hold
    the same 14 spectra; the energy axis increases, is non-uniform (~0.06 to ~0.6 eV/channel) and
    spans the calibration's 85-824 eV; metadata come from state.json (5 kV, ~100 nA)."""
    assert len(spectra) == 14
    zipped = read_sxes(sxes_dir / "test.plzip")
    npz = read_sxes(sxes_dir / "converted_npz")
    key = "Si3N4 5kV 100nA 5 min : Pos. : 1"
    np.testing.assert_array_equal(spectra[key].values, zipped[key].values)
    np.testing.assert_array_equal(spectra[key].values, npz[key].values)
    s = spectra[key]
    e = s["energy"].values
    step = np.diff(e)
    assert np.all(step > 0) and step.min() < 0.07 and step.max() > 0.5
    assert e[0] == pytest.approx(85.24, abs=0.01) and e[-1] == pytest.approx(824.07, abs=0.01)
    assert s["pixel"].values[0] == 2047 and s["pixel"].values[-1] == 0
    assert s.attrs["beam_energy_keV"] == 5.0 and 99 < s.attrs["probe_current_nA"] < 102
    assert s.attrs["grating"] == "JS300N" and "dispersion_eV" not in s.attrs
    with pytest.raises(InputError, match="no such file"):
        read_sxes(sxes_dir / "missing.plzip")


REAL_LINES = [
    ("Si3N4", (385, 400), [(365, 380), (405, 420)], 392.4, 1, 2.0),  # N-K
    ("Si3N4", (193, 200), [(188, 191), (202, 205)], 392.4, 2, 1.0),  # N-K, 2nd order
    ("HOPG", (268, 288), [(250, 262), (295, 305)], 277.0, 1, 2.0),  # C-K
    ("HOPG", (134, 142), [(128, 132), (145, 150)], 277.0, 2, 1.0),  # C-K, 2nd order
    ("Ti metal", (445, 460), [(425, 438), (470, 480)], 452.2, 1, 2.0),  # Ti-L alpha
    ("Ti metal", (390, 400), [(375, 385), (410, 420)], 395.3, 1, 2.0),  # Ti-Ll
    ("CuFeS2-1", (695, 715), [(675, 690), (730, 745)], 705.0, 1, 4.0),  # Fe-L alpha
    ("CuFeS2-1", (145, 152), [(135, 141), (156, 162)], 148.7, 1, 2.0),  # S-L
]


@pytest.mark.parametrize("sample,window,bg,line_eV,order,tol", REAL_LINES)
def test_real_spectra_show_known_lines(spectra, sample, window, bg, line_eV, order, tol):
    """Truth: real measurements and tabulated line energies (Bearden 1967). The fitted peak of
    each line (Gaussian on the top 5 channels over a linear background) lies within ``tol`` eV
    of the tabulated energy / order, and the line stands well above the background. The
    calibration is provisional (fitted on N, C, Ti, O lines of these data), so Fe-L alpha, which it
    puts ~3 eV high, gets 4 eV."""
    s = _one(spectra, sample)
    ds = window_maps(
        s,
        {"line": window},
        background={"line": bg},
        background_model="linear",
        peak="line",
        peak_channels=5,
        device="cpu",
    ).compute()
    peak = float(ds["line_peak_eV"])
    assert abs(peak - line_eV / order) < tol, (sample, peak, line_eV / order)
    assert float(ds["line"]) > 0.1 * float(ds["line_background"])


def test_window_maps_warns_of_higher_order_line():
    """Truth: as above; window_maps (and so ``eelsgpu maps --elements``) warns for O in the B-K
    window and stays silent when O is not among the elements."""
    ds = sxes_image((2, 2), regions="halves", noise=False)
    with pytest.warns(HigherOrderLineWarning, match=r"O Ka .* order 3 at 175.0 eV"):
        window_maps(ds["signal"], {"BK": (170, 188)}, elements=["B", "O"], device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", HigherOrderLineWarning)
        window_maps(ds["signal"], {"BK": (170, 188)}, elements=["B"], device="cpu")


def test_sxes_image_segmented_by_top_of_band_map():
    """Truth: the generator's region labels. A 24x24 SXES image (non-uniform JS300N axis,
    Poisson noise) of CaB6-like and Na-doped states (B-K band top at 187.0 vs 187.6 eV): the
    187-188 eV top-of-band map, thresholded (iterative mid-point), gives back the regions
    (>= 98 % of pixels), while the whole B-K band 170-188 eV map does not tell them apart."""
    ds = sxes_image((24, 24), regions="disk", seed=3)
    assert np.ptp(np.diff(ds["energy"].values)) > 0.05  # a non-uniform axis
    truth = ds["true_region"].values
    maps = window_maps(
        ds["signal"],
        {"Ca": (150, 154), "BK": (170, 188), "top": (187, 188)},
        background={"BK": [(160, 168), (192, 198)], "top": [(160, 168), (192, 198)]},
        background_model="linear",
        device="cpu",
    ).compute()
    # Exact integral of the noise-free expectation (counts) over the top window, per region.
    expected = window_maps(ds["true_signal"], {"top": (187, 188)}, device="cpu")["top"].values
    assert expected[truth == 1].mean() > 2 * expected[truth == 0].mean()

    def segment(v):
        t = v.mean()
        for _ in range(20):
            t = 0.5 * (v[v > t].mean() + v[v <= t].mean())
        return v > t

    top = maps["top"].values
    accuracy = np.mean(segment(top) == (truth == 1))
    assert accuracy >= 0.98, accuracy
    bk = maps["BK"].values
    accuracy_bk = max(np.mean(segment(bk) == (truth == 1)), np.mean(segment(bk) != (truth == 1)))
    assert accuracy_bk < 0.8, accuracy_bk
