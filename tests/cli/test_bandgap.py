"""`eelsgpu bandgap` end to end on synthetic onsets."""

from __future__ import annotations

import numpy as np
from _data import onset_spectra

from eelsgpu.model import spectrum_image


def test_bandgap_cli_writes_store_and_pictures(tmp_path):
    """Truth: onsets at Eg = 2.5 eV (indirect); `eelsgpu bandgap` writes every output map, the
    gap of each pixel within 0.1 eV, and the PNGs of the main maps."""
    from eelsgpu import io
    from eelsgpu.cli import main

    e, y = onset_spectra(2.5, 1.5, 16, seed=11)
    si = spectrum_image(y.reshape(4, 4, -1), e, x=np.arange(4) * 2.0, y=np.arange(4) * 2.0)
    src = io.write_store(si, tmp_path / "onsets.zarr")
    out = tmp_path / "gap.zarr"
    png = tmp_path / "gap.png"
    rc = main(
        [
            "bandgap",
            str(src),
            "-o",
            str(out),
            "--window",
            "1:5",
            "--model",
            "indirect",
            "--png",
            str(png),
            "-q",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    ds = io.open_store(out)
    for name in (
        "bandgap_eV",
        "bandgap_error_eV",
        "exponent_b",
        "exponent_error",
        "gap_type",
        "fit_quality",
        "valid",
    ):
        assert name in ds
    assert ds.attrs["bandgap_window_eV"] == [1.0, 5.0]
    assert ds["valid"].values.all()
    assert np.all(np.abs(ds["bandgap_eV"].values - 2.5) < 0.1)
    assert png.stat().st_size > 1000
    assert (tmp_path / "gap_gap_type.png").exists()
    assert main(["bandgap", str(src), "-o", str(out), "-q"]) == 2  # exists, no --overwrite


def test_bandgap_cli_uncertainty_replicas(tmp_path, capsys):
    """Truth: ``eelsgpu.bandgap(..., uncertainty="replicas:8", gain=1, seed=4)`` on the same
    store: `eelsgpu bandgap --uncertainty replicas:8 --gain 1 --seed 4` writes the same
    bandgap_eV_sigma and prints the noise model with the median sigma. Covers the CLI wiring;
    the sigma's coverage is tests/analysis/test_kk_bandgap_uncertainty.py."""
    from eelsgpu import io
    from eelsgpu.analysis.bandgap import bandgap
    from eelsgpu.cli import main

    e, y = onset_spectra(2.5, 1.5, 6, seed=12)
    si = spectrum_image(y.reshape(2, 3, -1), e)
    src = io.write_store(si, tmp_path / "onsets.zarr")
    out = tmp_path / "gap.zarr"
    opts = ["--uncertainty", "replicas:8", "--gain", "1", "--seed", "4"]
    args = ["bandgap", str(src), "-o", str(out), "--window", "1:5", "--model", "indirect"]
    assert main([*args, "--device", "cpu", *opts]) == 0
    text = capsys.readouterr().out
    assert "uncertainty: replicas:8" in text and "median bandgap_eV_sigma" in text
    res = io.open_store(out)
    api = bandgap(
        io.open_store(src)["signal"],
        window_eV=(1.0, 5.0),
        model="indirect",
        device="cpu",
        uncertainty="replicas:8",
        gain=1.0,
        seed=4,
    ).compute()
    got = res["bandgap_eV_sigma"].values
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, api["bandgap_eV_sigma"].values, rtol=1e-5)
