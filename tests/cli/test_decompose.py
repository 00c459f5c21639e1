"""`eelsgpu decompose` end to end on a synthetic three-spectrum mixture."""

from __future__ import annotations

import numpy as np
import pytest

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
