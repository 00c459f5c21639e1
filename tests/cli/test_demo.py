"""``eelsgpu demo`` end to end, small: the maps it writes against the exact answer it stores."""

from __future__ import annotations

import numpy as np

from eelsgpu.cli import main
from eelsgpu.io import open_store


def test_demo_writes_accurate_thickness_map(tmp_path, capsys):
    """Truth: the synthetic model's t/lambda, stored beside the data by the demo. With Poisson
    noise at about 2e5 counts per pixel the log-ratio map is within 3 % of it in every film pixel,
    and the PNG and both stores are written."""
    rc = main(
        [
            "demo",
            "--out",
            str(tmp_path),
            "--size",
            "16",
            "--channels",
            "1024",
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    data = open_store(tmp_path / "demo-spectrum-image.zarr")
    result = open_store(tmp_path / "demo-thickness.zarr")
    truth = data["true_t_over_lambda"].values
    got = result["t_over_lambda"].values
    film = truth > 0
    assert result["valid"].values.all()
    np.testing.assert_allclose(got[film], truth[film], rtol=0.03)
    assert np.all(np.abs(got[~film]) < 0.02)
    assert (tmp_path / "demo-t_over_lambda.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "median error against the exact answer" in out
