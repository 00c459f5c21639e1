"""``eelsgpu info`` end to end, on a file made in the test, a store converted from it and a real
DM file.

Truths used: the calibration HyperSpy saved; the store's codec; the README values of a real DM file.
"""

from __future__ import annotations

from eelsgpu.cli import main


def test_info_prints_calibration_and_missing(hspy_file, capsys):
    """Truth: the calibration HyperSpy saved (no convergence angle: reported missing)."""
    src, _ = hspy_file
    assert main(["info", str(src)]) == 0
    out = capsys.readouterr().out
    assert "y 6, x 5, energy 80" in out
    assert "80 channels, -2 to 5.9 eV" in out
    assert "-2 eV, 0.1 eV/channel (uniform)" in out
    assert "beam_energy_keV:        300 keV" in out
    assert "convergence_angle_mrad: MISSING (give it with --convergence-angle)" in out
    assert "missing:                convergence_angle_mrad" in out
    assert "5 pixels of 1.5 nm" in out
    assert "chunks:" in out


def test_info_on_store_and_multi_signal_file(hspy_file, tmp_path, shared_data, capsys):
    """Truth: the store written here (codec lz4) and README - AL-DFoffset0.16.dm3 holds two
    spectra."""
    src, _ = hspy_file
    out = tmp_path / "cube.zarr"
    assert main(["convert", str(src), "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "codec blosc lz4 bitshuffle" in text and "0 pixel(s) with NaN/inf" in text
    dm = shared_data / "gduscher/AL-DFoffset0.16.dm3"
    assert main(["info", str(dm)]) == 0
    text = capsys.readouterr().out
    assert "holds 2 signals" in text and "[1] 'EELS90muOAonaxis3'" in text
    assert main(["info", str(dm), "--signal-index", "1"]) == 0
    assert "-3.46 eV, 0.02 eV/channel" in capsys.readouterr().out
