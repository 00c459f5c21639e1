"""The engine: kernels over pixel blocks, CPU tiles, task sizes aligned to storage chunks, and
streaming into a store with per-block records (resume after a failure, byte-identical results).

Truth: the kernel applied with NumPy to the whole cube at once (no blocks, no tiles, no store);
and, for resumption, the bytes of an uninterrupted run.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import xarray as xr

from eelsgpu import engine
from eelsgpu._xp import array_namespace
from eelsgpu.errors import InputError
from eelsgpu.model import spectrum_image

OUTPUTS = [
    engine.Output("total", units="counts", long_name="total counts"),
    engine.Output("peak", units="counts"),
    engine.Output("positive", dtype="bool"),
    engine.Output("filtered", units="counts", axis="energy"),
]


def kernel(block, energy_eV, scale=1.0, fail_on=None):
    """rfft -> low-pass -> irfft, plus maps; raises on a marked pixel value (failure injection)."""
    xp = array_namespace(block)
    if fail_on is not None and bool(xp.any(block[:, 0] == fail_on)):
        raise RuntimeError("injected failure")
    n = block.shape[-1]
    f = xp.fft.rfft(block, axis=-1)
    k = xp.arange(f.shape[-1], dtype=block.dtype)
    lowpass = xp.astype(xp.exp(-((k / (0.2 * n)) ** 2)), f.dtype)
    filt = xp.fft.irfft(f * lowpass, n=n, axis=-1)
    total = xp.sum(block, axis=-1) * scale
    return {
        "total": total,
        "peak": xp.max(filt, axis=-1),
        "positive": total > 0,
        "filtered": filt,
    }


def _si(shape=(20, 18, 64), chunks=(8, 6), seed=1):
    rng = np.random.default_rng(seed)
    data = rng.normal(10.0, 3.0, shape).astype(np.float32)
    return spectrum_image(
        data,
        np.arange(shape[-1]) * 0.1 - 1.0,
        beam_energy_keV=300.0,
        chunks=chunks,
        source="synthetic.npy",
    )


def _truth(si, **kw):
    flat = np.asarray(si.values).reshape(-1, si.shape[-1])
    out = kernel(flat, None, **kw)
    return {k: np.asarray(v).reshape(*si.shape[:-1], *np.shape(v)[1:]) for k, v in out.items()}


@pytest.mark.parametrize("tile", [0, 1, 7, 64, None])
def test_tiles_give_the_whole_cube_result(tile):
    """Blocks cut into CPU tiles of any size give the whole-cube NumPy result (truth)."""
    si = _si()
    ds = engine.apply_kernel(
        engine.BlockKernel(kernel, OUTPUTS), si, device="cpu", tile_pixels=tile, scale=2.0
    )
    truth = _truth(si, scale=2.0)
    for k, v in truth.items():
        np.testing.assert_allclose(ds[k].values, v, rtol=1e-5, atol=1e-4)
    assert ds["positive"].dtype == bool and ds["filtered"].dims == ("y", "x", "energy")


def test_default_tile_is_about_a_megabyte():
    """The default CPU tile holds about TILE_BYTES of input (128 spectra of 2048 float32)."""
    assert engine.default_tile_pixels(2048, 4) == 128
    assert engine.default_tile_pixels(4096, 4) == 64


@pytest.mark.parametrize(
    ("shape", "stored", "target"),
    [
        ((1024, 1024, 2048), (32, 32, 2048), 32 * 2**20),
        ((1024, 1024, 2048), (64, 64, 2048), 128 * 2**20),
        ((100, 30, 512), (16, 16, 512), 8 * 2**20),
        ((10, 10, 4096), (64, 64, 4096), 2**20),
        ((500, 2048), (100, 2048), 4 * 2**20),
    ],
)
def test_task_chunks_are_whole_storage_chunks_near_the_target(shape, stored, target):
    """Task chunks are integer multiples of the storage chunks (or the whole axis), never split
    energy, and hold no more than the target unless one storage chunk is already bigger."""
    chunks = engine.task_chunks(shape, stored, 4, target)
    assert chunks[-1] == shape[-1]
    for c, s, n in zip(chunks[:-1], stored[:-1], shape[:-1], strict=True):
        assert c == n or c % s == 0
    task_bytes = int(np.prod(chunks)) * 4
    one_chunk = int(np.prod([min(s, n) for s, n in zip(stored, shape, strict=True)])) * 4
    assert task_bytes <= max(target, one_chunk)
    # and not needlessly small: one more storage chunk along some axis would pass the target
    if task_bytes < target and any(c < n for c, n in zip(chunks[:-1], shape[:-1], strict=True)):
        assert task_bytes + one_chunk > target or task_bytes * 2 > target


def test_run_to_store_streams_exact_results_with_provenance(tmp_path):
    """run_to_store writes what the in-memory computation gives (truth), with the input's coords
    and attributes and the run's parameters, in a few tasks per block."""
    si = _si()
    ds = engine.apply_kernel(engine.BlockKernel(kernel, OUTPUTS), si, device="cpu", scale=3.0)
    attrs = engine.run_attrs("test-kernel", {"scale": np.float32(3.0), "path": tmp_path})
    from dask.callbacks import Callback

    keys = []

    class Count(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            keys.append(key)

    with Count():
        res = engine.run_to_store(ds, tmp_path / "r.zarr", attrs=attrs, scheduler="threads")
    assert res.status == "written" and res.blocks_total == 3 * 3 == res.blocks_computed
    # read + kernel (one fused task, plus the alias dask's fusion leaves under the old key) and
    # the write: 3 tasks a block whatever the number of outputs (it was 2 + 2 per output)
    assert len(keys) <= 3 * res.blocks_total, keys
    out = xr.open_zarr(tmp_path / "r.zarr", consolidated=False)
    truth = _truth(si, scale=3.0)
    for k, v in truth.items():
        np.testing.assert_allclose(out[k].values, v, rtol=1e-5, atol=1e-4)
    assert out["positive"].dtype == bool
    assert out.attrs["eelsgpu_method"] == "test-kernel"
    assert out.attrs["eelsgpu_parameters"] == {"scale": 3.0, "path": str(tmp_path)}
    assert out.attrs["eelsgpu_version"]
    assert out.attrs["beam_energy_keV"] == 300.0 and out.attrs["source"] == "synthetic.npy"
    assert out.attrs["eelsgpu_complete"] is True
    np.testing.assert_array_equal(out["energy"].values, si["energy"].values)
    np.testing.assert_array_equal(out["x"].values, si["x"].values)
    assert out["total"].attrs["long_name"] == "total counts"
    assert engine.is_complete(tmp_path / "r.zarr")
    assert sorted(os.listdir(tmp_path)) == ["r.zarr"]  # no partial or run log left behind
    with pytest.raises(InputError, match="already exists"):
        engine.run_to_store(ds, tmp_path / "r.zarr")


def test_interrupted_run_resumes_only_missing_blocks_with_identical_bytes(tmp_path):
    """A run that fails in mid-run leaves a partial store that does not open as whole; the same
    call again computes only the blocks not recorded, and the bytes equal a clean run's."""
    si = _si(chunks=(4, 6))  # 5 x 3 = 15 blocks
    poison = float(si.values[9, 0, 0])  # a pixel in block row 2
    clean = engine.apply_kernel(engine.BlockKernel(kernel, OUTPUTS), si, device="cpu")
    engine.run_to_store(clean, tmp_path / "clean.zarr", scheduler="synchronous")

    failing = engine.apply_kernel(
        engine.BlockKernel(kernel, OUTPUTS), si, device="cpu", fail_on=poison
    )
    with pytest.raises(RuntimeError, match="injected"):
        engine.run_to_store(failing, tmp_path / "r.zarr", scheduler="synchronous")
    partial = tmp_path / ".r.zarr.partial"
    done = os.listdir(tmp_path / ".r.zarr.eelsgpu-run" / "done")
    assert partial.is_dir() and not (tmp_path / "r.zarr").exists()
    assert 0 < len(done) < 15
    from eelsgpu.io import open_store

    with pytest.raises(InputError, match="not completely written"):
        open_store(partial)

    # same job (same fingerprint), the fault gone: the recorded blocks are not recomputed
    res = engine.run_to_store(clean, tmp_path / "r.zarr", scheduler="synchronous")
    assert res.status == "resumed" and res.blocks_computed == 15 - len(done)
    a = xr.open_zarr(tmp_path / "r.zarr", consolidated=False)
    b = xr.open_zarr(tmp_path / "clean.zarr", consolidated=False)
    for k in b.data_vars:
        assert np.asarray(a[k].values).tobytes() == np.asarray(b[k].values).tobytes(), k


def test_a_different_job_does_not_resume_a_partial_store(tmp_path):
    """A partial store from other parameters (another fingerprint) is discarded, not mixed in."""
    si = _si(chunks=(4, 6))
    poison = float(si.values[9, 0, 0])
    failing = engine.apply_kernel(
        engine.BlockKernel(kernel, OUTPUTS), si, device="cpu", fail_on=poison
    )
    with pytest.raises(RuntimeError):
        engine.run_to_store(
            failing, tmp_path / "r.zarr", scheduler="synchronous", attrs={"scale": 1.0}
        )
    other = engine.apply_kernel(engine.BlockKernel(kernel, OUTPUTS), si, device="cpu", scale=5.0)
    res = engine.run_to_store(other, tmp_path / "r.zarr", attrs={"scale": 5.0})
    assert res.status == "written" and res.blocks_computed == 15
    out = xr.open_zarr(tmp_path / "r.zarr", consolidated=False)
    np.testing.assert_allclose(out["total"].values, _truth(si, scale=5.0)["total"], rtol=1e-5)


def test_align_tasks_uses_the_stores_chunks(tmp_path):
    """A cube stored in small chunks is read by tasks made of whole stored chunks."""
    from eelsgpu.io import open_store, write_store

    si = _si(shape=(32, 32, 128), chunks=(4, 4))
    write_store(si, tmp_path / "in.zarr")
    stored = open_store(tmp_path / "in.zarr")["signal"]
    assert engine.storage_chunks(stored) == (4, 4, 128)
    aligned = engine.align_tasks(stored, target_bytes=16 * 4 * 4 * 128 * 4)
    cy, cx = aligned.data.chunks[0][0], aligned.data.chunks[1][0]
    assert cy % 4 == 0 and cx % 4 == 0 and cy * cx == 16 * 16


def test_json_safe_run_attributes_round_trip(tmp_path):
    """Run parameters of any common type are stored as JSON (numpy scalars, arrays, paths)."""
    attrs = engine.run_attrs(
        "m", {"a": np.float64(1.5), "b": np.arange(3), "c": (1, "x"), "d": tmp_path, "e": None}
    )
    assert json.loads(json.dumps(attrs))["eelsgpu_parameters"] == {
        "a": 1.5,
        "b": [0, 1, 2],
        "c": [1, "x"],
        "d": str(tmp_path),
        "e": None,
    }
