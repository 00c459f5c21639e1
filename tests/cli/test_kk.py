"""``eelsgpu kk`` (eelsgpu.cli.kk) on an SSD store and on a raw image."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

from eelsgpu import synthetic
from eelsgpu.analysis.kramers_kronig import KKWarning


def test_cli_kk_on_ssd_store_and_raw_image(tmp_path):
    """Truth: synthetic thickness of a 4 x 5 Drude image (t/lambda 0.3-1.5, Ep 15, width 1).
    From an SSD store (exact SSD): thickness within 1 %. From the raw, noisy image (ZLP
    modelled and Fourier-log run by eelsgpu.deconvolve first): within 5 %, a cut-off of 3 ZLP
    FWHM measured on the data (~1.5 eV) recorded in the store. PNGs of the spectra of a region
    and of the thickness and plasmon-energy maps are written; a bad --pixel is an error."""
    from eelsgpu import io
    from eelsgpu.cli import main

    tl = np.linspace(0.3, 1.5, 20).reshape(4, 5)
    sim = synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0),
        t_over_lambda=tl,
        shape=(4, 5),
        n_channels=1024,
        dispersion_eV=0.1,
        noise=True,
        total_counts=1e7,
        seed=2,
    )
    truth = sim["true_t_nm"].values
    io.write_store(sim["signal"], tmp_path / "raw.zarr")
    ssd = xr.Dataset(
        {
            "ssd": sim["true_ssd"],
            "zlp_intensity": sim["true_zlp_intensity"],
            "valid": sim["true_t_nm"] > 0,
        },
        attrs={k: v for k, v in sim.attrs.items() if k != "synthetic_parameters"},
    )
    io.write_store(ssd, tmp_path / "ssd.zarr")
    rc = main(
        [
            "kk",
            str(tmp_path / "ssd.zarr"),
            "-o",
            str(tmp_path / "a.zarr"),
            "--metal",
            "--png",
            str(tmp_path / "a.png"),
            "--pixel",
            "1:3,0:2",
            "-q",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    a = io.open_store(tmp_path / "a.zarr")
    assert np.all(np.abs(a["thickness_nm"].values / truth - 1) < 0.01)
    assert a["eps1"].attrs["long_name"] and a["thickness_nm"].attrs["units"] == "nm"
    for name in ("a.png", "a_thickness.png", "a_plasmon.png"):
        assert (tmp_path / name).stat().st_size > 1000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KKWarning)
        rc = main(
            [
                "kk",
                str(tmp_path / "raw.zarr"),
                "-o",
                str(tmp_path / "b.zarr"),
                "--metal",
                "--beam-energy",
                "200",
                "--collection-angle",
                "10",
                "-q",
                "--device",
                "cpu",
            ]
        )
    assert rc == 0
    b = io.open_store(tmp_path / "b.zarr")
    assert np.all(np.abs(b["thickness_nm"].values / truth - 1) < 0.05)
    assert 1.2 < b.attrs["kk_low_energy_cutoff_eV"] < 1.8
    rc = main(
        [
            "kk",
            str(tmp_path / "ssd.zarr"),
            "-o",
            str(tmp_path / "c.zarr"),
            "--metal",
            "--png",
            str(tmp_path / "c.png"),
            "--pixel",
            "9,9",
            "-q",
        ]
    )
    assert rc == 2


def test_cli_kk_raw_input_band_limited_with_search(tmp_path, capsys):
    """Truth: synthetic thickness of a 3 x 4 Drude image (Ep 15, width 1; Poisson, 1e7 counts)
    whose ZLPs sit at +7 eV on the stored axis (outside the default -5:5 eV search). With
    --search 4:10 the raw image is deconvolved band-limited (the default --kind) and analysed on
    energy loss: thickness within 5 %, each pixel's cut-off 3 x its ZLP FWHM (0.5 eV: 1.5 eV),
    the quality map in the store (the bit table in its attributes) and drawn beside --png; the
    summary line names the bits set."""
    from eelsgpu import io
    from eelsgpu.cli import main

    sim = synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0), t_over_lambda=np.linspace(0.4, 1.2, 12).reshape(3, 4),
        shape=(3, 4), n_channels=1024, dispersion_eV=0.1, drift_eV=7.0, noise=True,
        total_counts=1e7, seed=5,
    )  # fmt: skip
    io.write_store(sim["signal"], tmp_path / "raw.zarr")
    base = ["kk", str(tmp_path / "raw.zarr"), "--metal", "--device", "cpu"]
    base += ["--beam-energy", "200", "--collection-angle", "10"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KKWarning)
        rc = main(
            base + ["-o", str(tmp_path / "k.zarr"), "--search", "4:10", "--png",
                    str(tmp_path / "k.png")]
        )  # fmt: skip
    assert rc == 0
    k = io.open_store(tmp_path / "k.zarr")
    assert np.all(np.abs(k["thickness_nm"].values / sim["true_t_nm"].values - 1) < 0.05)
    assert np.all(np.abs(k["low_energy_cutoff_eV"].values - 1.5) < 0.2)
    assert k["quality"].dtype == np.uint32 and "EPS2_NEGATIVE" in k["quality"].attrs
    assert (tmp_path / "k_quality.png").stat().st_size > 1000
    assert "quality:" in capsys.readouterr().out


def test_cli_kk_cubes_default_and_asked(tmp_path):
    """Truth: eq. 34 (Im[-1/eps] = eps2 / (eps1^2 + eps2^2)) and the same analysis in Python
    (eelsgpu.kramers_kronig with the same cubes), on a synthetic Drude SSD store (Ep 15, width
    1). By default the store holds the cubes eps1 and eps2 only (and every map), and --png still
    draws the loss function (from eps); --cubes loss_function,n_eff stores those two, the loss
    function equal to eq. 34 of the default run's eps; --cubes all stores the eight; an unknown
    cube, or --png without eps, is a one-line error (exit 2) before anything is written."""
    from eelsgpu import io
    from eelsgpu.cli import main
    from eelsgpu.kernels.blocks_kk import CUBE_OUTPUTS

    sim = synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0), t_over_lambda=0.6, shape=(2, 2), n_channels=1024,
        dispersion_eV=0.1,
    )  # fmt: skip
    ssd = xr.Dataset(
        {"ssd": sim["true_ssd"], "zlp_intensity": sim["true_zlp_intensity"]},
        attrs={k: v for k, v in sim.attrs.items() if k != "synthetic_parameters"},
    )
    io.write_store(ssd, tmp_path / "ssd.zarr")
    base = ["kk", str(tmp_path / "ssd.zarr"), "--metal", "--low-energy-cutoff", "1", "-q"]

    def cubes_of(ds):
        return {n for n, v in ds.data_vars.items() if "energy" in v.dims}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KKWarning)
        assert main([*base, "-o", str(tmp_path / "d.zarr"), "--png", str(tmp_path / "d.png")]) == 0
        assert main([*base, "-o", str(tmp_path / "l.zarr"), "--cubes", "loss_function,n_eff"]) == 0
        assert main([*base, "-o", str(tmp_path / "a.zarr"), "--cubes", "all"]) == 0
        assert main([*base, "-o", str(tmp_path / "x.zarr"), "--cubes", "eps3"]) == 2
        assert main([*base, "-o", str(tmp_path / "y.zarr"), "--cubes", "n_eff", "--png",
                     str(tmp_path / "y.png")]) == 2  # fmt: skip
    d, lf, a = (io.open_store(tmp_path / f"{k}.zarr") for k in "dla")
    assert cubes_of(d) == {"eps1", "eps2"} and "plasmon_energy_eV" in d
    assert (tmp_path / "d.png").stat().st_size > 1000
    assert cubes_of(lf) == {"loss_function", "n_eff"}
    e1, e2 = d["eps1"].values, d["eps2"].values
    np.testing.assert_allclose(lf["loss_function"].values, e2 / (e1**2 + e2**2), rtol=1e-4)
    assert cubes_of(a) == set(CUBE_OUTPUTS)
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()


def test_cli_kk_uncertainty_replicas(tmp_path, capsys):
    """Truth: ``eelsgpu.kramers_kronig(..., uncertainty="replicas:8", gain=1, seed=5)`` on the
    same store: `eelsgpu kk --uncertainty replicas:8 --gain 1 --seed 5` writes the same
    eps1/eps2/thickness/plasmon-energy sigmas (replicas seeded per pixel) and prints the noise
    model; `--uncertainty analytic --gain 1` writes the API's analytic sigmas, and is refused
    with `--iterations 3` (exit 2). Covers the CLI wiring; the sigmas' coverage is
    tests/analysis/test_kk_bandgap_uncertainty.py and test_kk_analytic_uncertainty.py."""
    from eelsgpu import io
    from eelsgpu.analysis.kramers_kronig import kramers_kronig
    from eelsgpu.cli import main

    sim = synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0),
        shape=(2, 3),
        t_over_lambda=0.5,
        n_channels=512,
        dispersion_eV=0.1,
        total_counts=1e5,
        noise=False,
        dtype=np.float64,
    )
    rng = np.random.default_rng(0)
    ssd = sim["true_ssd"].copy(data=rng.poisson(sim["true_ssd"].values).astype(np.float64))
    ssd.attrs.update(beam_energy_keV=200.0, collection_angle_mrad=10.0)
    store = xr.Dataset({"ssd": ssd, "zlp_intensity": sim["true_zlp_intensity"]})
    src = io.write_store(store, tmp_path / "ssd.zarr")
    base = ["kk", str(src), "--metal", "--low-energy-cutoff", "1.5", "--device", "cpu"]
    out = tmp_path / "kk.zarr"
    opts = ["--uncertainty", "replicas:8", "--gain", "1", "--seed", "5"]
    assert main([*base, "-o", str(out), *opts]) == 0
    assert "uncertainty: replicas:8" in capsys.readouterr().out
    res = io.open_store(out)
    api = kramers_kronig(
        io.open_store(src),
        metal=True,
        low_energy_cutoff_eV=1.5,
        device="cpu",
        uncertainty="replicas:8",
        gain=1.0,
        seed=5,
    ).compute()
    for name in ("eps1", "eps2", "thickness_nm", "plasmon_energy_eV"):
        got = res[f"{name}_sigma"].values
        assert np.isfinite(got).any(), name
        np.testing.assert_allclose(got, api[f"{name}_sigma"].values, rtol=1e-5, err_msg=name)
    # analytic: the same as the API's; refused with the surface iterations (exit 2)
    opts = ["--uncertainty", "analytic", "--gain", "1"]
    assert main([*base, "-o", str(tmp_path / "a.zarr"), *opts]) == 0
    res = io.open_store(tmp_path / "a.zarr")
    api = kramers_kronig(
        io.open_store(src), metal=True, low_energy_cutoff_eV=1.5, device="cpu",
        uncertainty="analytic", gain=1.0,
    ).compute()  # fmt: skip
    for name in ("eps1", "eps2", "thickness_nm"):
        got = res[f"{name}_sigma"].values
        assert np.isfinite(got).any(), name
        np.testing.assert_allclose(got, api[f"{name}_sigma"].values, rtol=1e-5, err_msg=name)
    bad = [*base, "-o", str(tmp_path / "b.zarr"), *opts, "--iterations", "3"]
    assert main(bad) == 2


def test_cli_kk_raw_input_replicas_run_end_to_end(tmp_path, capsys):
    """Truth: the API. `eelsgpu kk RAW --uncertainty replicas:6` on a raw low-loss store writes
    the sigmas of ``kramers_kronig(raw, deconvolve={...}, uncertainty="replicas:6")`` (replicas
    of the recorded counts through deconvolve and KK: attrs ``uncertainty_chain``);
    `--thickness T --thickness-rel-sigma 0.01` writes the API's normalisation systematic."""
    from eelsgpu import io
    from eelsgpu.analysis.kramers_kronig import kramers_kronig
    from eelsgpu.cli import main

    sim = synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0), shape=(1, 3), t_over_lambda=0.5, n_channels=1024,
        dispersion_eV=0.1, total_counts=1e5, noise=True, seed=2, dtype=np.float32,
    )  # fmt: skip
    src = io.write_store(sim["signal"].compute(), tmp_path / "raw.zarr")
    base = ["kk", str(src), "--metal", "--device", "cpu", "--zlp", "mirror", "-q"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*base, "-o", str(tmp_path / "k.zarr"), "--uncertainty", "replicas:6"]) == 0
        res = io.open_store(tmp_path / "k.zarr")
        api = kramers_kronig(
            io.open_store(src)["signal"], metal=True, device="cpu", uncertainty="replicas:6",
            deconvolve={"zlp": "mirror", "search_eV": None},
        )  # fmt: skip
        t = ["--thickness", "80", "--thickness-rel-sigma", "0.01"]
        kb = [b for b in base if b != "--metal"]
        assert main([*kb, "-o", str(tmp_path / "t.zarr"), *t]) == 0
        t_res = io.open_store(tmp_path / "t.zarr")
    assert res.attrs["uncertainty_chain"].startswith("recorded counts")
    for name in ("eps1_sigma", "eps2_sigma", "thickness_nm_sigma"):
        np.testing.assert_allclose(res[name].values, api[name].values, rtol=1e-6, err_msg=name)
    assert "normalisation" in t_res["eps2_sigma_systematic"].attrs["parts"]
    rel = t_res["thickness_nm_sigma_systematic"] / t_res["thickness_nm"]
    assert float(np.nanmedian(rel)) == pytest.approx(0.01)
