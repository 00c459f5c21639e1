"""``eelsgpu thickness`` (eelsgpu.cli.thickness) on a synthetic image with known truth."""

from __future__ import annotations

import numpy as np


def test_cli_thickness(tmp_path, small_image):
    """Truth: small_image's true_t_over_lambda, through `eelsgpu thickness` on a zarr store
    (write_store in, the store and a PNG out); an existing output is refused."""
    from eelsgpu import io
    from eelsgpu.cli import main

    src = tmp_path / "in.zarr"
    io.write_store(small_image[["signal"]], src)
    out = tmp_path / "t.zarr"
    png = tmp_path / "t.png"
    rc = main(
        [
            "thickness",
            str(src),
            "-o",
            str(out),
            "--density",
            "2.7",
            "--convergence-angle",
            "0",
            "--png",
            str(png),
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0 and png.stat().st_size > 0
    res = io.open_store(out)
    truth = small_image["true_t_over_lambda"].values
    assert np.abs(res["t_over_lambda"].values - truth).max() < 5e-3
    assert "thickness_nm" in res and res["thickness_nm"].attrs["units"] == "nm"
    assert main(["thickness", str(src), "-o", str(out), "--quiet"]) == 2


def test_cli_thickness_uncertainty(tmp_path, capsys):
    """Truth: the closed form var(t/lambda) = g (1/N0 - 1/I) of the stored N0 and I
    (kernels/uncertainty.log_ratio_variance) with the given gain, through `eelsgpu thickness
    --uncertainty analytic --gain 2 --tail none --zeff 13`: the store holds the counting sigma
    and the Malis formula's 20 % as the systematic part of thickness_nm; replicas:K through the
    CLI agree with it to 20 %. Covers the CLI wiring, not coverage (tests/analysis)."""
    from eelsgpu import io
    from eelsgpu.cli import main
    from eelsgpu.kernels.uncertainty import log_ratio_variance
    from tests._coverage import log_ratio_image

    img = log_ratio_image([(1e5, 1.0)], 60)
    img["signal"] = 2.0 * img["signal"]  # data units of a gain-2 detector
    img["signal"].attrs.update(beam_energy_keV=200.0, collection_angle_mrad=10.0)
    src = tmp_path / "in.zarr"
    io.write_store(img[["signal"]], src)
    common = ["--zeff", "13", "--tail", "none", "--gain", "2", "--device", "cpu"]
    out = tmp_path / "a.zarr"
    assert main(["thickness", str(src), "-o", str(out), "--uncertainty", "analytic", *common]) == 0
    assert "uncertainty: analytic" in capsys.readouterr().out
    res = io.open_store(out)
    expect = np.sqrt(
        log_ratio_variance(res["zlp_intensity"].values, res["total_intensity"].values, gain=2.0)
    )
    np.testing.assert_allclose(res["t_over_lambda_sigma"].values, expect, rtol=1e-9)
    np.testing.assert_allclose(
        res["thickness_nm_sigma_systematic"].values, 0.2 * res["thickness_nm"].values, rtol=1e-9
    )
    assert "Malis" in str(res["thickness_nm_sigma_systematic"].attrs["parts"])
    out_r = tmp_path / "r.zarr"
    rc = main(
        [
            "thickness",
            str(src),
            "-o",
            str(out_r),
            "--uncertainty",
            "replicas:30",
            "--quiet",
            *common,
        ]
    )
    assert rc == 0
    rep = io.open_store(out_r)
    assert rep.attrs["uncertainty"] == "replicas:30"
    ratio = np.median(res["t_over_lambda_sigma"].values) / np.median(
        rep["t_over_lambda_sigma"].values
    )
    assert abs(ratio - 1) < 0.2, ratio


def test_cli_thickness_zlp_models(tmp_path, capsys):
    """Truth: the API's result (``thickness(zlp_models=...)``, itself tested against synthetic
    truth in tests/analysis/test_zlp_model_spread.py): `eelsgpu thickness --zlp-models mirror,fit`
    and `eelsgpu deconvolve --zlp-models all` store the same spread maps and count, and print
    the median spread; no ZLP-model variable without the flag."""
    import eelsgpu
    from eelsgpu import io, synthetic
    from eelsgpu.cli import main

    sim = synthetic.low_loss_image(
        synthetic.Drude(15.0, 2.0),
        t_over_lambda=np.array([[0.5, 1.0]]),
        shape=(1, 2),
        n_channels=1024,
        dispersion_eV=0.05,
        zlp=synthetic.ZeroLossPeak(0.8, asymmetry=0.05),
        dtype=np.float64,
    )
    src = tmp_path / "in.zarr"
    io.write_store(sim[["signal"]], src)
    out = tmp_path / "t.zarr"
    args = ["thickness", str(src), "-o", str(out), "--device", "cpu", "--zlp-models"]
    assert main([*args, "mirror,fit"]) == 0
    assert "ZLP-model spread of t_over_lambda" in capsys.readouterr().out
    res = io.open_store(out)
    api = eelsgpu.thickness(
        io.open_store(src)["signal"], zlp_models=("mirror", "fit"), device="cpu"
    ).compute()
    for v in ("t_over_lambda_sigma_zlp_model", "zlp_models_passed"):
        np.testing.assert_array_equal(res[v].values, api[v].values)
    assert res.attrs["zlp_models_compared"] == ["threshold", "mirror", "fit"]
    dec = tmp_path / "d.zarr"
    rc = main(["deconvolve", str(src), "-o", str(dec), "--device", "cpu", "--zlp-models", "all"])
    assert rc == 0
    d = io.open_store(dec)
    assert d.attrs["zlp_models_compared"] == ["mirror", "threshold", "fit"]
    assert (d["t_over_lambda_sigma_zlp_model"].values > 0.01).all()
    plain = tmp_path / "p.zarr"
    assert main(["thickness", str(src), "-o", str(plain), "--device", "cpu", "-q"]) == 0
    assert not [v for v in io.open_store(plain).data_vars if "zlp_model" in v]
