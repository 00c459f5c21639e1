"""PCA / NMF decomposition and denoising against a synthetic mixture with known spectra and maps."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import asarray, to_numpy
from scipy.optimize import linear_sum_assignment

from eelsgpu.decomposition import (
    decompose,
    denoise,
    nnls_loadings_kernel,
    plot_decomposition,
    project_kernel,
    reconstruct_kernel,
)
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


def test_kernels_exact_on_a_rank_two_matrix(xp):
    """Truth: an exact rank-2 non-negative matrix D = W H. Projection on its orthonormal basis
    and reconstruction give D back; the NNLS loadings recover W (noise-free)."""
    rng = np.random.default_rng(1)
    w = rng.random((30, 2)) + 0.1
    h = np.stack(
        [
            np.exp(-0.5 * ((np.arange(40) - 12) / 4.0) ** 2),
            np.exp(-0.5 * ((np.arange(40) - 27) / 5.0) ** 2),
        ]
    )
    d = w @ h
    e = asarray(xp, np.arange(40.0))
    _, _, vt = np.linalg.svd(d, full_matrices=False)
    for poisson in (False, True):
        sqrt_h = np.sqrt(d.mean(axis=0)) if poisson else np.ones(40)
        g = np.sqrt(d.mean(axis=1)) if poisson else np.ones(30)
        _, _, vt = np.linalg.svd(d / g[:, None] / sqrt_h, full_matrices=False)
        out = project_kernel(
            asarray(xp, d),
            e,
            components=asarray(xp, vt[:2]),
            energy_weight=asarray(xp, sqrt_h),
            poisson=poisson,
        )
        load = to_numpy(out["loadings"])
        rec = reconstruct_kernel(
            asarray(xp, d), e, loadings=asarray(xp, load), factors=asarray(xp, vt[:2] * sqrt_h)
        )
        np.testing.assert_allclose(to_numpy(rec["denoised"]), d, atol=1e-10)
    for kl in (False, True):
        out = nnls_loadings_kernel(asarray(xp, d), e, factors=asarray(xp, h), n_iter=300, kl=kl)
        np.testing.assert_allclose(to_numpy(out["loadings"]), w, rtol=1e-3)
        assert to_numpy(out["residual_rms"]).max() < 1e-3


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


def test_pictures_and_errors(mixture, tmp_path):
    """Truth: files exist; bad input raises clear errors."""
    si = mixture[0]
    ds = decompose(si, "pca", n_components=2, n_scree=8, device="cpu")
    paths = plot_decomposition(ds, tmp_path)
    assert {p.name for p in paths} == {"scree.png", "component_00.png", "component_01.png"}
    assert all(p.stat().st_size > 1000 for p in paths)
    with pytest.raises(InputError, match="method"):
        decompose(si, "ica", 2)
    with pytest.raises(InputError, match="n_components"):
        decompose(si, "pca", 0)
    with pytest.raises(InputError, match="energy"):
        decompose(si.isel(y=0, x=0), "pca", 1)


def test_decompose_cli(mixture, tmp_path):
    """Truth: the 3-spectrum mixture (3 components above the noise on the stored scree)."""
    from eelsgpu import io
    from eelsgpu.cli import main

    io.write_store(mixture[0].to_dataset(name="signal"), tmp_path / "mix.zarr")
    rc = main(
        [
            "decompose",
            str(tmp_path / "mix.zarr"),
            "-o",
            str(tmp_path / "pca.zarr"),
            "--method",
            "pca",
            "-n",
            "3",
            "--denoise",
            "--png-dir",
            str(tmp_path / "png"),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert rc == 0
    res = io.open_store(tmp_path / "pca.zarr")
    ev = res["explained_variance_ratio"].values
    assert ev[2] > 20 * ev[3]
    assert res["denoised"].dims == ("y", "x", "energy")
    assert (tmp_path / "png" / "scree.png").exists()
