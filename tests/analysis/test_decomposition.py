"""PCA / NMF decomposition and denoising against a synthetic mixture with known spectra and maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from eelsgpu.analysis.decomposition import decompose, denoise
from eelsgpu.errors import InputError
from eelsgpu.model import spectrum_image


def _mixture(ny=32, nx=32, ne=200, scale=40.0, seed=0):
    """Three known spectra mixed with three known smooth maps, Poisson noise."""
    e = np.linspace(100, 300, ne)

    def g(c, s):
        return np.exp(-0.5 * ((e - c) / s) ** 2)

    spectra = np.stack(
        [g(150, 10) + 0.3 * g(220, 20), g(190, 8) + 0.5 * g(260, 15), g(240, 12) + 0.2 * g(130, 30)]
    )
    yy, xx = np.mgrid[0:ny, 0:nx] / (max(ny, nx) - 1.0)
    maps = np.stack(
        [np.clip(1 - xx, 0, 1) ** 2, np.exp(-((xx - 0.6) ** 2 + (yy - 0.4) ** 2) / 0.05), yy**2]
    )
    truth = scale * np.einsum("kyx,ke->yxe", maps, spectra)
    noisy = np.random.default_rng(seed).poisson(truth).astype(float)
    return e, spectra, maps, truth, noisy


@pytest.fixture(scope="module")
def mixture():
    e, spectra, maps, truth, noisy = _mixture()
    si = spectrum_image(noisy, e, chunks=(16, 16), source="mixture")
    return si, spectra, maps, truth, noisy


def test_pca_scree_shows_three_components(mixture):
    """Truth: the image is a mixture of exactly 3 spectra. The Poisson-normalised PCA scree has
    3 components far above a flat noise floor (the 3rd > 20x the 4th; the 4th to 10th within
    a factor 1.5 of each other)."""
    si = mixture[0]
    ds = decompose(si, "pca", n_components=3, device="cpu")
    ev = ds["explained_variance_ratio"].values
    assert ds["loadings"].dims == ("y", "x", "component")
    assert ds["factors"].dims == ("component", "energy")
    assert ev[2] > 20 * ev[3]
    assert ev[3:10].max() < 1.5 * ev[3:10].min()
    assert ev.sum() <= 1.0 + 1e-9 and ev[:3].sum() > 0.85


def test_pca_denoising_beats_noisy_data(mixture):
    """Truth: the noise-free mixture. The 3-component reconstruction is at least 3x closer
    (RMS) to it than the Poisson-noisy data are, and is lazy until computed."""
    si, _, _, truth, noisy = mixture
    ds = decompose(si, "pca", n_components=3, device="cpu")
    den = denoise(si, ds, 3, device="cpu")
    assert den.chunks is not None and den.dims == si.dims
    rms_noisy = np.sqrt(np.mean((noisy - truth) ** 2))
    rms_den = np.sqrt(np.mean((den.values - truth) ** 2))
    assert rms_den < rms_noisy / 3, (rms_den, rms_noisy)


def test_nmf_recovers_maps_and_spectra(mixture):
    """Truth: the known maps and spectra. NMF (Poisson loss, mini-batch over pixel blocks)
    loadings correlate > 0.95 with the true maps after optimal matching, its factors > 0.95
    with the true spectra, and its reconstruction is closer to the truth than the data."""
    si, spectra, maps, truth, noisy = mixture
    ds = decompose(si, "nmf", n_components=3, device="cpu").compute()
    assert float(ds["loadings"].min()) >= 0 and float(ds["factors"].min()) >= 0
    load = ds["loadings"].values.reshape(-1, 3)
    c_maps = np.corrcoef(load.T, maps.reshape(3, -1))[:3, 3:]
    rows, cols = linear_sum_assignment(-c_maps)
    assert c_maps[rows, cols].min() > 0.95, c_maps[rows, cols]
    c_spec = np.corrcoef(ds["factors"].values, spectra)[:3, 3:]
    assert c_spec[rows, cols].min() > 0.95, c_spec[rows, cols]
    den = denoise(si, ds, device="cpu").values
    assert np.sqrt(np.mean((den - truth) ** 2)) < np.sqrt(np.mean((noisy - truth) ** 2)) / 3


def test_bad_input_is_a_clear_error(mixture):
    """Truth: bad input raises clear errors: an unknown method, no components, a single spectrum
    where an image is needed (the picture half of this test is in tests/test_plotting.py)."""
    si = mixture[0]
    with pytest.raises(InputError, match="method"):
        decompose(si, "ica", 2)
    with pytest.raises(InputError, match="n_components"):
        decompose(si, "pca", 0)
    with pytest.raises(InputError, match="energy"):
        decompose(si.isel(y=0, x=0), "pca", 1)


def test_numeric_arguments_are_range_checked(mixture):
    """Truth: counts of components, iterations and seeds are whole numbers >= their minimum;
    each mistake names the argument (before: a negative n_scree or seed reached NumPy/sklearn)."""
    si = mixture[0]
    for kwargs, name in [
        ({"n_scree": 0}, "n_scree"),
        ({"seed": -1}, "seed"),
        ({"n_components": 2.5}, "n_components"),
        ({"method": "nmf", "epochs": 0}, "epochs"),
    ]:
        with pytest.raises(InputError, match=f"{name} must be a whole number"):
            decompose(si, **{"device": "cpu", **kwargs})
