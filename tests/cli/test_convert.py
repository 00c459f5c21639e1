"""``eelsgpu convert`` end to end, on small files made in the test (``info``: test_info.py).

Truths used: the arrays and calibration written in the test (HyperSpy / NumPy); the store's own
zarr metadata for chunks and codec; the README values of a real DM file.
"""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest

from eelsgpu import io
from eelsgpu.cli import main
from eelsgpu.model import spectrum_image


def test_convert_hspy_to_store(hspy_file, tmp_path, capsys):
    """Truth: the cube and calibration HyperSpy saved; the codec in the store's metadata; the
    progress bar on stderr."""
    src, data = hspy_file
    out = tmp_path / "cube.zarr"
    rc = main(["convert", str(src), "-o", str(out), "--codec", "zstd", "--chunks", "3,5"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "codec zstd" in captured.out
    assert "writing cube.zarr" in captured.err  # the progress bar
    meta = json.loads((out / "signal" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]][-2:] == ["zstd", "crc32c"]  # checksummed chunks
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [3, 5, 80]
    si = io.open(out)
    np.testing.assert_array_equal(si.values, data)
    assert si.attrs["beam_energy_keV"] == 300.0 and si.attrs["collection_angle_mrad"] == 20.0
    assert si["energy"].values[0] == pytest.approx(-2.0) and si.attrs["dispersion_eV"] == 0.1
    assert si["x"].values[1] == pytest.approx(1.5) and si["x"].attrs["units"] == "nm"


def test_convert_npy_with_calibration_and_override(tmp_path, capsys):
    """Truth: the calibration given on the command line."""
    src = tmp_path / "raw.npy"
    np.save(src, np.full((2, 2, 30), 7.0, np.float32))
    out = tmp_path / "raw.zarr"
    assert main(["convert", str(src), "-o", str(out), "-q"]) == 2
    assert "--offset and --dispersion" in capsys.readouterr().err
    rc = main(
        [
            "convert",
            str(src),
            "-o",
            str(out),
            "-q",
            "--offset",
            "-1",
            "--dispersion",
            "0.5",
            "--beam-energy",
            "60",
            "--collection-angle",
            "25",
        ]
    )
    assert rc == 0
    si = io.open(out)
    np.testing.assert_allclose(si["energy"].values, -1.0 + 0.5 * np.arange(30))
    assert si.attrs["beam_energy_keV"] == 60.0 and si.attrs["collection_angle_mrad"] == 25.0
    assert si.attrs["converted_from"] == str(src)


def test_convert_refuses_existing_output(hspy_file, tmp_path, capsys):
    """Truth: OUT exists already; --overwrite replaces it."""
    src, _ = hspy_file
    out = tmp_path / "cube.zarr"
    assert main(["convert", str(src), "-o", str(out), "-q"]) == 0
    assert main(["convert", str(src), "-o", str(out), "-q"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", str(src), "-o", str(out), "-q", "--overwrite"]) == 0


def test_convert_nan_needs_mask(tmp_path, capsys):
    """Truth: two pixels given NaN in the test."""
    data = np.ones((3, 4, 16), np.float32)
    data[0, 1, 2] = data[2, 3, 0] = np.nan
    src = tmp_path / "nan.npy"
    np.save(src, data)
    out = tmp_path / "nan.zarr"
    args = ["convert", str(src), "-o", str(out), "-q", "--offset", "0", "--dispersion", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "nan.npy: 2 of 12 pixel(s) have NaN" in err and "--mask-invalid" in err
    assert not out.exists()
    assert main([*args, "--mask-invalid"]) == 0
    si = io.open(out)
    assert si["valid"].values.sum() == 10 and not si["valid"].values[0, 1]


def test_interrupted_convert_leaves_no_store(tmp_path, monkeypatch, capsys):
    """Truth: a Ctrl-C raised inside the dask graph, in one block; nothing may be left at OUT
    and nothing beside it that opens."""

    def interrupted_open(path, chunks="auto", **kw):
        def block(b, block_info=None):
            if block_info[0]["chunk-location"][:2] == (2, 1):
                raise KeyboardInterrupt
            return b

        arr = da.ones((8, 8, 32), chunks=(2, 2, 32), dtype=np.float32).map_blocks(
            block, dtype=np.float32
        )
        return spectrum_image(arr, np.arange(32.0), chunks=(2, 2), source=str(path))

    monkeypatch.setattr(io, "open", interrupted_open)
    out = tmp_path / "out.zarr"
    rc = main(["convert", "whatever.dm4", "-o", str(out), "-q"])
    assert rc == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists()
    for left in tmp_path.iterdir():  # anything left must not open as a store
        with pytest.raises(Exception):  # noqa: B017
            io.open(left)


def test_convert_truncated_file(tmp_path, capsys):
    """Truth: a .npy cut short after its header: the data cannot all be read."""
    src = tmp_path / "cut.npy"
    np.save(src, np.ones((8, 8, 256), np.float32))
    src.write_bytes(src.read_bytes()[:40_000])
    out = tmp_path / "cut.zarr"
    rc = main(["convert", str(src), "-o", str(out), "-q", "--offset", "0", "--dispersion", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cut.npy" in err and "truncated or corrupt" in err
    assert not out.exists()
