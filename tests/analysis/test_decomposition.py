"""PCA / NMF decomposition and denoising against a synthetic mixture with known spectra and maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from eelsgpu.analysis.decomposition import decompose, denoise
from eelsgpu.errors import InputError


def test_pca_scree_shows_three_components(mixture_image):
    """Truth: the image is a mixture of exactly 3 spectra. The Poisson-normalised PCA scree has
    3 components far above a flat noise floor (the 3rd > 20x the 4th; the 4th to 10th within
    a factor 1.5 of each other)."""
    si = mixture_image[0]
    ds = decompose(si, "pca", n_components=3, device="cpu")
    ev = ds["explained_variance_ratio"].values
    assert ds["loadings"].dims == ("y", "x", "component")
    assert ds["factors"].dims == ("component", "energy")
    assert ev[2] > 20 * ev[3]
    assert ev[3:10].max() < 1.5 * ev[3:10].min()
    assert ev.sum() <= 1.0 + 1e-9 and ev[:3].sum() > 0.85


def test_pca_denoising_beats_noisy_data(mixture_image):
    """Truth: the noise-free mixture. The 3-component reconstruction is at least 3x closer
    (RMS) to it than the Poisson-noisy data are, and is lazy until computed."""
    si, _, _, truth, noisy = mixture_image
    ds = decompose(si, "pca", n_components=3, device="cpu")
    den = denoise(si, ds, 3, device="cpu")
    assert den.chunks is not None and den.dims == si.dims
    rms_noisy = np.sqrt(np.mean((noisy - truth) ** 2))
    rms_den = np.sqrt(np.mean((den.values - truth) ** 2))
    assert rms_den < rms_noisy / 3, (rms_den, rms_noisy)


def test_nmf_recovers_maps_and_spectra(mixture_image):
    """Truth: the known maps and spectra. NMF (Poisson loss, mini-batch over pixel blocks)
    loadings correlate > 0.95 with the true maps after optimal matching, its factors > 0.95
    with the true spectra, and its reconstruction is closer to the truth than the data."""
    si, spectra, maps, truth, noisy = mixture_image
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


def test_bad_input_is_a_clear_error(mixture_image):
    """Truth: bad input raises clear errors: an unknown method, no components, a single spectrum
    where an image is needed (the picture half of this test is in tests/test_plotting.py)."""
    si = mixture_image[0]
    with pytest.raises(InputError, match="method"):
        decompose(si, "ica", 2)
    with pytest.raises(InputError, match="n_components"):
        decompose(si, "pca", 0)
    with pytest.raises(InputError, match="energy"):
        decompose(si.isel(y=0, x=0), "pca", 1)


def test_numeric_arguments_are_range_checked(mixture_image):
    """Truth: counts of components, iterations and seeds are whole numbers >= their minimum;
    each mistake names the argument (before: a negative n_scree or seed reached NumPy/sklearn)."""
    si = mixture_image[0]
    for kwargs, name in [
        ({"n_scree": 0}, "n_scree"),
        ({"seed": -1}, "seed"),
        ({"n_components": 2.5}, "n_components"),
        ({"method": "nmf", "epochs": 0}, "epochs"),
    ]:
        with pytest.raises(InputError, match=f"{name} must be a whole number"):
            decompose(si, **{"device": "cpu", **kwargs})
