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
