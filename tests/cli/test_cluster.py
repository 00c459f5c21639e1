"""`eelsgpu cluster` end to end on a synthetic three-material image."""

from __future__ import annotations

import xarray as xr
from sklearn.metrics import adjusted_rand_score


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


def test_cluster_cli_shows_the_fit_as_it_runs(tmp_path, three_phase, capsys):
    """Truth: the sample size the command fits (issue 12: the fit ran for seconds without a word).
    Without -q the k-means fit shows a bar naming how many spectra it fits, before the store is
    written, and the labels are the same as with -q."""
    from eelsgpu import io
    from eelsgpu.cli import main

    si_path = io.write_store(three_phase[["signal"]], tmp_path / "si.zarr")
    args = ["cluster", str(si_path), "-k", "3", "--sample-size", "200", "--device", "cpu"]
    assert main([*args, "-o", str(tmp_path / "a.zarr")]) == 0
    err = capsys.readouterr().err
    assert "fitting the model to 200 spectra" in err
    assert err.index("fitting the model") < err.index("writing")
    assert main([*args, "-o", str(tmp_path / "b.zarr"), "-q"]) == 0
    a, b = io.open_store(tmp_path / "a.zarr"), io.open_store(tmp_path / "b.zarr")
    assert (a["cluster"].values == b["cluster"].values).all()
