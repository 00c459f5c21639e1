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
