"""eelsgpu's zarr stores: write_store (the engine's writer, one-shot mode) and open_store, both
codecs, atomic writes, recorded value checks, and every kind of damaged store.

Truths used: the exact arrays written in the test, the stores' own zarr metadata, and the chunk
files on disk.
"""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import eelsgpu
from eelsgpu.errors import InputError
from eelsgpu.io import open as eopen
from eelsgpu.io import write_store
from eelsgpu.model import spectrum_image


def _cube(shape=(4, 5, 64), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 100 + 1).astype(np.float32)


@pytest.mark.parametrize("codec, expected", [("lz4", "blosc"), ("zstd", "zstd")])
def test_zarr_round_trip_both_codecs(tmp_path, codec, expected):
    """Truth: the array and attributes written; the codec named in the store's own metadata."""
    data = _cube((6, 5, 40))
    si = spectrum_image(
        data,
        np.arange(40) * 0.2 - 1.0,
        x=np.arange(5) * 1.5,
        y=np.arange(6) * 1.5,
        beam_energy_keV=300.0,
        collection_angle_mrad=10.0,
        source="made-in-test",
        chunks=(3, 5),
    )
    out = write_store(si, tmp_path / "s.zarr", codec=codec)
    meta = json.loads((out / "signal" / "zarr.json").read_text())
    names = [c["name"] for c in meta["codecs"]]
    assert expected in names
    if codec == "lz4":
        blosc = next(c for c in meta["codecs"] if c["name"] == "blosc")
        assert blosc["configuration"]["cname"] == "lz4"
        assert blosc["configuration"]["shuffle"] == "bitshuffle"
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [3, 5, 40]
    back = eopen(out)
    np.testing.assert_array_equal(back.values, data)
    np.testing.assert_array_equal(back["x"].values, si["x"].values)
    assert back["x"].attrs["units"] == "nm"
    assert back.attrs["beam_energy_keV"] == 300.0 and back.attrs["dispersion_eV"] == 0.2
    assert back.attrs["converted_from"] == "made-in-test" and back.attrs["source"] == str(out)
    assert back.data.chunksize == (3, 5, 40)


def test_store_override_energy_and_calibration(tmp_path):
    """Truth: arguments given when opening a store replace what it holds."""
    si = spectrum_image(_cube((2, 2, 10)), np.arange(10.0), beam_energy_keV=300.0)
    out = write_store(si, tmp_path / "s.zarr")
    back = eopen(out, beam_energy_keV=100.0, dispersion_eV=0.5)
    assert back.attrs["beam_energy_keV"] == 100.0
    np.testing.assert_allclose(back["energy"].values, 0.5 * np.arange(10))


def test_corrupt_store(tmp_path):
    """Truth: a valid store whose metadata is garbled, one whose chunk is deleted, and one left
    flagged incomplete (as a killed conversion leaves its partial store)."""
    si = spectrum_image(_cube((4, 4, 20)), np.arange(20.0), chunks=(2, 2))
    a = write_store(si, tmp_path / "a.zarr")
    (a / "signal" / "zarr.json").write_text("{ not json")
    with pytest.raises(InputError, match=r"a\.zarr: not a readable zarr store"):
        eopen(a)
    b = write_store(si, tmp_path / "b.zarr")
    chunk = next(f for f in (b / "signal" / "c").rglob("*") if f.is_file())
    chunk.unlink()
    with pytest.raises(InputError, match=r"b\.zarr: 1 of 4 chunks of 'signal' are missing"):
        eopen(b)
    c = write_store(si, tmp_path / "c.zarr")
    import zarr

    zarr.open_group(c, mode="r+").attrs["eelsgpu_complete"] = False
    with pytest.raises(InputError, match=r"c\.zarr: the store was not completely written"):
        eopen(c)


def test_interrupted_write_leaves_nothing(tmp_path):
    """Truth: a dask graph whose one block raises; the target must not exist afterwards and no
    partial store may be left beside it."""
    good = da.ones((16, 16, 64), chunks=(2, 2, 64), dtype=np.float32)

    def boom(block, block_info=None):
        if block_info[0]["chunk-location"][:2] == (3, 3):
            raise RuntimeError("disk full (simulated)")
        return block

    bad = good.map_blocks(boom, dtype=np.float32)
    si = spectrum_image(bad, np.arange(64.0), chunks=(2, 2))
    with pytest.raises(RuntimeError, match="simulated"):
        write_store(si, tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()
    assert list(tmp_path.iterdir()) == []


def test_masked_store_opens_without_mask_again(tmp_path):
    """Truth: a store written from a masked image knows which pixels are flagged, so opening it
    needs no mask_invalid; the check is read from the store (recorded when written)."""
    data = _cube((3, 3, 12))
    data[0, 0, 0] = np.nan
    masked = eelsgpu.io.check_values(spectrum_image(data, np.arange(12.0)), mask_invalid=True)
    out = write_store(masked, tmp_path / "m.zarr")
    rec = json.loads((out / "signal" / "zarr.json").read_text())["attributes"]
    assert rec["eelsgpu_value_check"]["nonfinite_pixels"] == 1
    assert rec["eelsgpu_value_check"]["unflagged_nonfinite_pixels"] == 0
    back = eopen(out)
    assert not back["valid"].values[0, 0] and back["valid"].values.sum() == 8
    raw = write_store(spectrum_image(data, np.arange(12.0)), tmp_path / "raw.zarr")
    with pytest.raises(InputError, match=r"raw\.zarr: 1 of 9 pixel"):
        eopen(raw)


def test_value_check_runs_block_by_block(tmp_path):
    """Truth: the check is a dask reduction: opening a 4-chunk store without a recorded check
    reads the chunks (counted through a dask callback) one task each, never one whole array."""
    from dask.callbacks import Callback

    si = spectrum_image(_cube((4, 4, 16)), np.arange(16.0), chunks=(2, 2))
    out = write_store(si, tmp_path / "s.zarr")
    import zarr

    del zarr.open_group(out, mode="r+")["signal"].attrs["eelsgpu_value_check"]
    shapes = []

    class Spy(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            if isinstance(result, np.ndarray) and result.ndim == 3:
                shapes.append(result.shape)

    with Spy():
        eopen(out)
    assert shapes and max(s[0] * s[1] for s in shapes) == 4  # 2 x 2 pixel blocks only


def test_write_store_keeps_each_variables_chunks_and_writes_every_chunk(tmp_path):
    """A Dataset with a cube in several chunks along energy, a map off its pixel-block grid, a
    lazy coordinate, a lazy spectrum and a map that is NaN over whole chunks: everything reads back
    exactly, each variable in its own chunks, and every chunk file is on disk (the NaN ones too,
    so that a missing file always means damage). Truth: the arrays written and the files."""
    rng = np.random.default_rng(0)
    cube = rng.random((10, 12, 64)).astype(np.float32)
    holes = np.ones((10, 12))
    holes[:5, :4] = np.nan  # one whole chunk of 5 x 4
    ds = xr.Dataset(
        {
            "signal": (("y", "x", "energy"), da.from_array(cube, chunks=(5, 4, 16))),
            "holes": (("y", "x"), da.from_array(holes, chunks=(5, 4))),
            "off_grid": (("y", "x"), da.from_array(2 * holes, chunks=(3, 3))),
            "mean": (("energy",), da.from_array(cube.mean(axis=(0, 1)), chunks=32)),
        },
        coords={
            "energy": np.arange(64.0),
            "lazy": (("y", "x"), da.from_array(np.arange(120).reshape(10, 12), chunks=(5, 6))),
        },
    )
    out = write_store(ds, tmp_path / "s.zarr")
    back = xr.open_zarr(out, consolidated=False)
    chunks = {
        "signal": [5, 4, 16],
        "holes": [5, 4],
        "off_grid": [3, 3],
        "mean": [32],
        "lazy": [5, 6],
    }
    for name, shape in chunks.items():
        np.testing.assert_array_equal(back[name].values, ds[name].values)
        meta = json.loads((out / name / "zarr.json").read_text())
        assert meta["chunk_grid"]["configuration"]["chunk_shape"] == shape, name
        n_chunks = int(np.prod([-(-n // c) for n, c in zip(ds[name].shape, shape, strict=True)]))
        files = [f for f in (out / name / "c").rglob("*") if f.is_file()]
        assert len(files) == n_chunks, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]  # nothing left beside it
