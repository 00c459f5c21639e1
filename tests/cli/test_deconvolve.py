"""``eelsgpu deconvolve`` (eelsgpu.cli.deconvolve) on a synthetic image with known truth."""

from __future__ import annotations

import numpy as np
from fourier_log_cases import image as _image


def test_cli_deconvolve(tmp_path):
    """`eelsgpu deconvolve IN -o OUT --zlp fit --kind ssd --mean-free-path L` writes
    ssd/zlp_intensity/valid and the thickness maps; the SSD integral over N0 and the
    t_over_lambda map follow t/lambda (synthetic truth) to 2 %, thickness_nm = t/lambda x L."""
    from eelsgpu import io
    from eelsgpu.cli import main

    sim = _image()
    src = tmp_path / "in.zarr"
    io.write_store(sim["signal"], src)
    out = tmp_path / "out.zarr"
    args = ["deconvolve", str(src), "-o", str(out), "--zlp", "fit", "--kind", "ssd"]
    rc = main([*args, "--mean-free-path", "120", "-q"])
    assert rc == 0
    ds = io.open_store(out)
    assert ds.attrs["deconvolution_output"] == "ssd"
    t = (ds["ssd"].sum("energy") / ds["zlp_intensity"]).values
    true = (sim["true_ssd"].sum("energy") / sim["true_zlp_intensity"]).values
    np.testing.assert_allclose(t, true, rtol=0.02, atol=0.01)
    np.testing.assert_allclose(ds["t_over_lambda"], sim["true_t_over_lambda"], rtol=0.02)
    np.testing.assert_allclose(ds["thickness_nm"], 120.0 * ds["t_over_lambda"], rtol=1e-6)


def test_cli_deconvolve_search_and_band_limited(tmp_path, capsys):
    """`eelsgpu deconvolve --kind band-limited --search LO HI` on the synthetic image with its
    axis offset by +20 eV (truth: the synthetic t/lambda): written with the measured ZLP FWHM
    as resolution_eV and the quality map, t/lambda to 0.2 %; a search range that misses the
    ZLP is one line naming the file, exit 2."""
    from eelsgpu import io
    from eelsgpu.cli import main
    from eelsgpu.model import spectrum_image

    sim = _image()
    si = spectrum_image(
        sim["signal"].values, sim["energy"].values + 20.0, source="off.zarr", dtype=np.float64
    )
    src = tmp_path / "in.zarr"
    io.write_store(si, src)
    out = tmp_path / "out.zarr"
    args = ["deconvolve", str(src), "-o", str(out), "--kind", "band-limited", "--device", "cpu"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*args, "--search", "15", "25"]) == 0
    ds = io.open_store(out)
    assert ds.attrs["deconvolution_output"] == "band-limited"
    np.testing.assert_allclose(ds["resolution_eV"], ds["zlp_fwhm_eV"], rtol=1e-6)
    np.testing.assert_allclose(ds["t_over_lambda"], sim["true_t_over_lambda"], rtol=2e-3)
    assert "quality flags (pixels): AXIS_OFFSET 12" in capsys.readouterr().out
    rc = main([*args[:3], str(tmp_path / "o2.zarr"), "--search", "-5", "5", "-q"])
    assert rc == 2
    assert "no pixel has a usable zero-loss peak" in capsys.readouterr().err


def test_cli_deconvolve_uncertainty(tmp_path, capsys):
    """Truth: ``eelsgpu.deconvolve``'s own result with the same options (proven honest in
    tests/analysis/test_deconvolve_uncertainty.py): `eelsgpu deconvolve --uncertainty
    replicas:8 --seed 4 --gain 1 --kind band-limited --zlp threshold` stores the same ssd_sigma
    and t_over_lambda_sigma, and says which uncertainty it used. Covers the CLI wiring."""
    import eelsgpu
    from eelsgpu import io
    from eelsgpu.cli import main
    from tests._coverage import log_ratio_image

    img = log_ratio_image([(1e5, 1.0)], 6)
    src = tmp_path / "in.zarr"
    io.write_store(img[["signal"]], src)
    out = tmp_path / "d.zarr"
    opts = ["--uncertainty", "replicas:8", "--seed", "4", "--gain", "1", "--device", "cpu"]
    rc = main(
        ["deconvolve", str(src), "-o", str(out), "--kind", "band-limited", "--zlp", "threshold"]
        + opts
    )
    assert rc == 0
    assert "uncertainty: replicas:8" in capsys.readouterr().out
    res = io.open_store(out)
    direct = eelsgpu.deconvolve(
        io.open_store(src)["signal"],
        zlp="threshold",
        output="band-limited",
        uncertainty="replicas:8",
        seed=4,
        gain=1.0,
        device="cpu",
    ).compute()
    for v in ("ssd_sigma", "t_over_lambda_sigma"):
        np.testing.assert_allclose(res[v].values, direct[v].values, rtol=1e-5, equal_nan=True)
