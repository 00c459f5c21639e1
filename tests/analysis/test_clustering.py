"""k-means clustering of spectrum images against synthetic images with known regions."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from sklearn.metrics import adjusted_rand_score

import eelsgpu
from eelsgpu import synthetic
from eelsgpu.analysis.clustering import cluster, cluster_sums, per_cluster
from eelsgpu.engine import BlockKernel, Output, apply_kernel
from eelsgpu.errors import InputError


def test_spectrum_clustering_recovers_regions(three_phase):
    """Truth: the region map the synthetic image was built from (3 dielectric models).
    Features: whole normalised spectra; model fitted on a sample of 100 of 256 pixels, all
    assigned block by block. Adjusted Rand index >= 0.95; the cluster-mean spectra are the
    means of the spectra in each cluster (NumPy) and the sizes add up."""
    si = three_phase["signal"]
    truth = three_phase["true_region"].values
    ds = cluster(si, n_clusters=3, sample_size=100, seed=1, device="cpu")
    labels = ds["cluster"].values
    assert labels.shape == truth.shape and labels.dtype == np.int32
    assert adjusted_rand_score(truth.ravel(), labels.ravel()) >= 0.95
    assert ds["cluster_size"].values.sum() == truth.size
    data = si.values.astype(float)
    for k in range(3):
        expect = data[labels == k].mean(axis=0)
        assert np.allclose(ds["cluster_mean_spectrum"].values[k], expect, rtol=1e-6)
    assert ds["cluster_mean_spectrum"].dims == ("cluster_id", "energy")
    assert ds.attrs["cluster_sample_size"] == 100


def test_feature_maps_with_nan_are_flagged(three_phase):
    """Truth: the t/lambda terraces of synthetic.thickness_map('steps') (4 levels), measured
    with 3 % noise; NaN pixels (failed fits upstream) must come out as cluster -1, not a guess."""
    tl = synthetic.thickness_map((16, 16), "steps", (0.2, 1.4))
    rng = np.random.default_rng(0)
    noisy = tl * (1 + 0.03 * rng.standard_normal(tl.shape))
    noisy[0, :3] = np.nan
    res = xr.Dataset({"t_over_lambda": (("y", "x"), noisy, {"units": ""})})
    ds = cluster(res, n_clusters=4, features=["t_over_lambda"], device="cpu")
    lab = ds["cluster"].values
    assert (lab[0, :3] == -1).all()
    ok = np.isfinite(noisy)
    terrace = np.unique(tl, return_inverse=True)[1].reshape(tl.shape)
    assert adjusted_rand_score(terrace[ok], lab[ok]) >= 0.95
    # clusters are numbered by increasing centre: the thinnest terrace is cluster 0
    centres = ds["cluster_centre_t_over_lambda"].values
    assert np.all(np.diff(centres) > 0)
    assert np.allclose(centres, np.unique(tl), atol=0.05)
    assert "cluster_mean_spectrum" not in ds


def test_mixed_feature_list_uses_dataset_variables(three_phase):
    """Truth: the region map; features: integrated intensity (computed from the SI) plus a
    variable of the Dataset (the true mean free path, which differs per material)."""
    ds_in = xr.Dataset(
        {"signal": three_phase["signal"], "mfp": three_phase["true_mean_free_path_nm"]}
    )
    ds = cluster(ds_in, n_clusters=3, features=["mfp", "integrated_intensity"], device="cpu")
    assert (
        adjusted_rand_score(three_phase["true_region"].values.ravel(), ds["cluster"].values.ravel())
        >= 0.95
    )
    assert ds.attrs["cluster_features"] == ["mfp", "integrated_intensity"]
    assert ds["cluster_centre_mfp"].attrs["units"] == "nm"
    assert ds["cluster_centre_integrated_intensity"].attrs["units"] == "counts"
    with pytest.raises(InputError, match="nope"):
        cluster(ds_in, n_clusters=2, features=["nope"], device="cpu")


def _total(si, **_):
    def kern(block, energy_eV):
        return {"total": block.sum(axis=-1)}

    return apply_kernel(BlockKernel(kern, [Output("total", "counts")]), si, device="cpu")


def test_per_cluster_runs_pipeline_on_summed_spectra(three_phase):
    """Truth: NumPy sums of the spectra of each region; the pipeline (total counts) run per
    cluster sees exactly those sums, and cluster_sums leaves out -1 pixels."""
    si = three_phase["signal"]
    reg = three_phase["true_region"].values.copy()
    res = per_cluster(si, reg, _total)
    data = si.values.astype(float)
    for k in range(3):
        assert np.isclose(res["total"].values[k], data[reg == k].sum(), rtol=1e-5)
    assert res["cluster_size"].values.tolist() == [int((reg == k).sum()) for k in range(3)]
    reg[0, 0] = -1
    sums = cluster_sums(si, reg, 3)
    assert np.allclose(
        sums[reg[0, 1]] + data[0, 0],
        data[(reg == reg[0, 1]) | (np.arange(256).reshape(16, 16) == 0)].sum(axis=0),
        rtol=1e-6,
    )


def test_per_cluster_thickness_beats_single_pixels(three_phase):
    """Truth: the synthetic t/lambda. The log-ratio t/lambda (eelsgpu.thickness) of each
    region's summed spectrum is within 5 % of the region's mean true t/lambda (the Lorentz
    material loses some of its tail beyond the 46 eV window, a bias shared by every pixel), and
    it is no further from the truth than the average of the region's single-pixel results plus
    the counting scatter of one pixel: one summed spectrum does at least as well as averaging
    all the noisy pixels' results (where noise biases the single pixels, it does better)."""
    si = three_phase["signal"]
    reg = three_phase["true_region"].values
    res = per_cluster(si, reg, eelsgpu.thickness, device="cpu")
    truth = three_phase["true_t_over_lambda"].values
    single = eelsgpu.thickness(si, device="cpu")["t_over_lambda"].values
    for k in range(3):
        t_true = truth[reg == k].mean()
        err = abs(float(res["t_over_lambda"].values[k]) - t_true)
        assert err < 0.05 * t_true
        scatter = np.nanstd(single[reg == k] - truth[reg == k])
        assert err <= abs(np.nanmean(single[reg == k]) - t_true) + scatter


def test_sxes_two_bonding_states_segmented():
    """Truth: the two-region map of the synthetic SXES image (eelsgpu.synthetic.sxes_image),
    whose band top edge shifts between the regions; clustering the spectra recovers it."""
    from eelsgpu.synthetic import sxes_image

    sim = sxes_image()
    si = sim["signal"] if isinstance(sim, xr.Dataset) else sim
    truth_name = next(n for n in ("true_region", "region", "true_state") if n in sim)
    ds = cluster(si, n_clusters=2, device="cpu")
    assert adjusted_rand_score(sim[truth_name].values.ravel(), ds["cluster"].values.ravel()) >= 0.95
    # the same from two window maps as features: the top of the B-K band and the Ca-L lines
    wm = eelsgpu.window_maps(
        si, windows={"top": (187.0, 188.0), "Ca": (150.0, 154.0)}, device="cpu"
    )
    ds2 = cluster(wm, n_clusters=2, features=["top", "Ca"], device="cpu")
    assert (
        adjusted_rand_score(sim[truth_name].values.ravel(), ds2["cluster"].values.ravel()) >= 0.95
    )


def test_per_cluster_kramers_kronig_finds_each_plasmon():
    """Truth: a two-metal synthetic image (Drude plasmons at 15 and 25 eV). Clustered, then
    Kramers-Kronig (eelsgpu.kramers_kronig, metal normalisation) on each cluster's summed
    spectrum: the loss function Im[-1/eps] of each cluster peaks at its metal's Drude energy
    (sqrt(Ep^2 - Gamma^2/2)) within 0.3 eV."""
    reg = np.zeros((8, 8), int)
    reg[:, 4:] = 1
    metals = [synthetic.Drude(15.0, 1.0), synthetic.Drude(25.0, 3.0)]
    sim = synthetic.low_loss_image(
        metals,
        regions=reg,
        shape=(8, 8),
        n_channels=1024,
        dispersion_eV=0.05,
        t_over_lambda=0.5,
        noise=True,
        total_counts=1e6,
    )
    ds = cluster(sim["signal"], n_clusters=2, device="cpu")
    res = per_cluster(
        sim["signal"], ds, eelsgpu.kramers_kronig, metal=True, cubes=("loss_function",),
        device="cpu",
    )  # fmt: skip
    assert res.sizes["cluster_id"] == 2
    e = res["energy"].values
    for k in range(2):
        region = int(np.bincount(reg[ds["cluster"].values == k]).argmax())
        m = metals[region]
        expect = np.sqrt(m.plasmon_energy_eV**2 - m.damping_eV**2 / 2)
        peak = e[np.nanargmax(res["loss_function"].values[k])]
        assert abs(peak - expect) < 0.3


def test_numeric_arguments_are_range_checked(three_phase):
    """Truth: k, the sample size, the seed and the energy range are checked with the argument
    named (before: n_clusters=0 was a bare ValueError, a reversed energy range reached NumPy)."""
    si = three_phase["signal"]
    for kwargs, message in [
        ({"n_clusters": 0}, "n_clusters must be a whole number >= 1"),
        ({"sample_size": 1}, "sample_size must be a whole number >= 2"),
        ({"seed": -3}, "seed must be a whole number >= 0"),
        (
            {"energy_range_eV": (20.0, 5.0)},
            r"energy_range_eV must be \(lo_eV, hi_eV\) with lo < hi",
        ),
    ]:
        with pytest.raises(InputError, match=message):
            cluster(si, **{"n_clusters": 3, "device": "cpu", **kwargs})
