"""`eelsgpu bandgap` end to end on synthetic onsets."""

from __future__ import annotations

import numpy as np

from eelsgpu.model import spectrum_image

DISP = 0.02  # eV per channel of the synthetic onsets


def onset_spectra(eg_eV, b, n_pix, *, amplitude=1000.0, tail=2e4, floor=20.0, seed=0):
    """Poisson spectra of A (E - Eg)^b + a ZLP tail tail*(E/0.5)^-2.5 + a flat floor.

    The noise level: A = 1000 counts per channel at 1 eV above the gap, a tail of 2e4 counts at
    0.5 eV (about 700 at 2 eV), 20 counts of floor; channels of 0.02 eV from 0.1 to 9 eV. The
    tail exponent 2.5 is not on the fit's grid of power-law exponents (1, 2, 3, 4, 6).
    """
    e = np.arange(0.1, 9.0, DISP)
    lam = amplitude * np.clip(e - eg_eV, 0, None) ** b + tail * (e / 0.5) ** -2.5 + floor
    rng = np.random.default_rng(seed)
    return e, rng.poisson(np.broadcast_to(lam, (n_pix, e.size))).astype(np.float64)


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
