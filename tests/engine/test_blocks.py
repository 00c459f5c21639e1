"""Block mapping: a declared kernel over pixel blocks and CPU tiles gives the whole-cube result;
the outputs carry their link to the packed per-block array, which holds only while untouched.

Truth: the kernel applied with NumPy to the whole cube at once (no blocks, no tiles, no store).
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from eelsgpu import engine
from eelsgpu.engine.blocks import PACKED_ENCODING, packed_source


@pytest.mark.parametrize("tile", [0, 1, 7, 64, None])
def test_tiles_give_the_whole_cube_result(tile, stand_in):
    """Blocks cut into CPU tiles of any size give the whole-cube NumPy result (truth)."""
    si = stand_in.image()
    ds = engine.apply_kernel(stand_in.decl, si, device="cpu", tile_pixels=tile, scale=2.0)
    truth = stand_in.truth(si, scale=2.0)
    for k, v in truth.items():
        np.testing.assert_allclose(ds[k].values, v, rtol=1e-5, atol=1e-4)
    assert ds["positive"].dtype == bool and ds["filtered"].dims == ("y", "x", "energy")


def test_default_tile_is_about_a_megabyte():
    """The default CPU tile holds about TILE_BYTES of input (128 spectra of 2048 float32)."""
    assert engine.default_tile_pixels(2048, 4) == 128
    assert engine.default_tile_pixels(4096, 4) == 64


def test_outputs_link_to_the_packed_array_only_while_untouched(tmp_path, stand_in):
    """Each output carries, in its encoding, the link to the packed per-block array it is cut
    from; a variable whose data changed keeps the encoding but the link refuses it. Truth: the
    dask names (the link is to this very array) and xarray's own writer, which must ignore the
    key."""
    ds = engine.apply_kernel(stand_in.decl, stand_in.image(), device="cpu")
    for name in ds.data_vars:
        assert packed_source(ds[name].variable) is not None, name
    changed = {
        "copy with new data": ds["total"].copy(data=ds["total"].data * 2),
        "isel": ds.isel(y=slice(0, 4))["total"],
        "rechunk": ds.chunk({"y": 4})["total"],
    }
    for what, var in changed.items():
        assert PACKED_ENCODING in var.encoding, what  # xarray carried it along...
        assert packed_source(var.variable) is None, what  # ...and it is not used
    ds.to_zarr(tmp_path / "plain.zarr", zarr_format=3, consolidated=False)
    back = xr.open_zarr(tmp_path / "plain.zarr", consolidated=False)
    np.testing.assert_array_equal(back["total"].values, ds["total"].values)


def test_in_memory_input_runs_in_pixel_blocks(stand_in, monkeypatch):
    """An image held in memory (a DataArray over a NumPy array, no dask chunks) is cut into
    pixel blocks -- at least two per core where it is large enough -- so every core works on it
    (the eager path: one kernel call per block with tile_pixels=0), and the result is the
    whole-cube NumPy result (truth). A dask array keeps its own chunks."""
    import os
    import threading

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    si = stand_in.image(shape=(40, 32, 256), chunks=(40, 32))
    mem = xr.DataArray(np.asarray(si.values), dims=si.dims, coords=si.coords, attrs=si.attrs)
    sizes, lock = [], threading.Lock()

    def counted(block, energy_eV):
        with lock:
            sizes.append(block.shape[0])
        return stand_in.kernel(block, energy_eV)

    decl = engine.BlockKernel(counted, stand_in.outputs)
    ds = engine.apply_kernel(decl, mem, device="cpu", tile_pixels=0)
    assert len(sizes) >= 5 and sum(sizes) == 40 * 32  # 1280 spectra of 1 KiB: blocks of 256
    truth = stand_in.truth(si)
    for k, v in truth.items():
        np.testing.assert_allclose(ds[k].values, v, rtol=1e-5, atol=1e-4)
    one = engine.apply_kernel(stand_in.decl, si, device="cpu")  # dask, one chunk: kept
    assert one["total"].data.npartitions == 1


def test_in_memory_blocks_are_contiguous_views_of_the_input(monkeypatch):
    """Truth: NumPy's memory bookkeeping. The pixel blocks of an image in memory (and of a
    per-pixel cube passed beside it) are contiguous slabs of the caller's array itself, not
    copies (dask's from_array copied the cube and every block once more: two cubes for a
    128 x 128 x 2048 input), so a block reshapes to (n, n_E) without a copy, and they cover the
    image exactly once."""
    import os

    from eelsgpu.engine.blocks import _from_host, _pixel_blocks

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    host = np.arange(16 * 64 * 256, dtype=np.float32).reshape(16, 64, 256)
    arr = _pixel_blocks(host)
    assert arr.npartitions >= 4
    views = [v for v in dict(arr.__dask_graph__()).values() if isinstance(v, np.ndarray)]
    assert len(views) == arr.npartitions
    assert all(np.shares_memory(v, host) and v.flags.c_contiguous for v in views)
    assert sum(v.size for v in views) == host.size
    np.testing.assert_array_equal(arr.compute(), host)
    zlp = host + 1.0
    extra = _from_host(zlp, arr.chunks)
    zviews = [v for v in dict(extra.__dask_graph__()).values() if isinstance(v, np.ndarray)]
    assert len(zviews) == arr.npartitions and all(np.shares_memory(v, zlp) for v in zviews)
