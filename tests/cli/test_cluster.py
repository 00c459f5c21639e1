"""`eelsgpu cluster` end to end on a synthetic three-material image."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from sklearn.metrics import adjusted_rand_score

from eelsgpu import synthetic

MATERIALS = [
    synthetic.Drude(15.0, 1.0),  # Al-like metal
    synthetic.Lorentz(16.6, 5.07, 3.7),  # Si-like insulator
    synthetic.Drude(22.0, 4.0),  # a broader, higher plasmon
]


def _regions(shape=(16, 16)):
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    reg = np.zeros(shape, int)
    reg[:, nx // 2 :] = 1
    reg[(yy - ny // 2) ** 2 + (xx - nx // 4) ** 2 <= (ny // 5) ** 2] = 2  # a particle
    return reg


@pytest.fixture(scope="module")
def three_phase():
    """16 x 16 Poisson image of three materials in known regions (t/lambda 0.4 to 0.6)."""
    reg = _regions()
    tl = 0.4 + 0.2 * np.linspace(0, 1, 16)[None, :] * np.ones((16, 1))
    return synthetic.low_loss_image(
        MATERIALS,
        regions=reg,
        shape=(16, 16),
        t_over_lambda=tl,
        n_channels=512,
        dispersion_eV=0.1,
        offset_eV=-5.0,
        total_counts=2e5,
        noise=True,
        seed=2,
        chunks=(8, 8),
    )


def test_cluster_cli_on_result_maps_with_spectra(tmp_path, three_phase):
    """Truth: the region map. `eelsgpu cluster RESULT --features NAME --spectra SI` clusters a
    result store's map (here the true mean free path, which differs per material) and adds the
    cluster-mean spectra from the spectrum image given beside it."""
    from eelsgpu import io
    from eelsgpu.cli import main

    si_path = io.write_store(three_phase[["signal"]], tmp_path / "si.zarr")
    res = xr.Dataset({"mfp": three_phase["true_mean_free_path_nm"]})
    res_path = io.write_store(res, tmp_path / "res.zarr")
    out = tmp_path / "cl.zarr"
    rc = main(
        [
            "cluster",
            str(res_path),
            "-o",
            str(out),
            "-k",
            "3",
            "--features",
            "mfp",
            "--spectra",
            str(si_path),
            "-q",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    ds = io.open_store(out)
    assert (
        adjusted_rand_score(three_phase["true_region"].values.ravel(), ds["cluster"].values.ravel())
        >= 0.95
    )
    assert ds["cluster_mean_spectrum"].sizes["cluster_id"] == 3
    assert "cluster_centre_mfp" in ds
