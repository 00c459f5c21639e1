"""The store writer's resumable mode (run_to_store): streaming into a store with per-block records
(resume after a failure, byte-identical results), provenance, outputs written from the packed
per-block array only while untouched. The one-shot mode: tests/io/test_store.py (write_store).

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
from eelsgpu.errors import InputError


def test_run_to_store_streams_exact_results_with_provenance(tmp_path, stand_in):
    """run_to_store writes what the in-memory computation gives (truth), with the input's coords
    and attributes and the run's parameters, in a few tasks per block."""
    si = stand_in.image()
    ds = engine.apply_kernel(stand_in.decl, si, device="cpu", scale=3.0)
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
    truth = stand_in.truth(si, scale=3.0)
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


def test_interrupted_run_resumes_only_missing_blocks_with_identical_bytes(tmp_path, stand_in):
    """A run that fails in mid-run leaves a partial store that does not open as whole; the same
    call again computes only the blocks not recorded, and the bytes equal a clean run's."""
    si = stand_in.image(chunks=(4, 6))  # 5 x 3 = 15 blocks
    poison = float(si.values[9, 0, 0])  # a pixel in block row 2
    clean = engine.apply_kernel(stand_in.decl, si, device="cpu")
    engine.run_to_store(clean, tmp_path / "clean.zarr", scheduler="synchronous")

    failing = engine.apply_kernel(stand_in.decl, si, device="cpu", fail_on=poison)
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


def test_a_different_job_does_not_resume_a_partial_store(tmp_path, stand_in):
    """A partial store from other parameters (another fingerprint) is discarded, not mixed in."""
    si = stand_in.image(chunks=(4, 6))
    poison = float(si.values[9, 0, 0])
    failing = engine.apply_kernel(stand_in.decl, si, device="cpu", fail_on=poison)
    with pytest.raises(RuntimeError):
        engine.run_to_store(
            failing, tmp_path / "r.zarr", scheduler="synchronous", attrs={"scale": 1.0}
        )
    other = engine.apply_kernel(stand_in.decl, si, device="cpu", scale=5.0)
    res = engine.run_to_store(other, tmp_path / "r.zarr", attrs={"scale": 5.0})
    assert res.status == "written" and res.blocks_computed == 15
    out = xr.open_zarr(tmp_path / "r.zarr", consolidated=False)
    np.testing.assert_allclose(
        out["total"].values, stand_in.truth(si, scale=5.0)["total"], rtol=1e-5
    )


def test_a_transformed_output_is_written_from_its_own_data(tmp_path, stand_in):
    """An output replaced by a computation on it keeps its encoding (and with it the link to the
    packed array) but is written from its own data. Truth: the in-memory computation."""
    si = stand_in.image()
    ds = engine.apply_kernel(stand_in.decl, si, device="cpu")
    ds = ds.assign(total=ds["total"].copy(data=ds["total"].data * 2 + 1))
    engine.run_to_store(ds, tmp_path / "r.zarr", scheduler="synchronous")
    out = xr.open_zarr(tmp_path / "r.zarr", consolidated=False)
    truth = stand_in.truth(si)
    np.testing.assert_allclose(out["total"].values, truth["total"] * 2 + 1, rtol=1e-5)
    np.testing.assert_allclose(out["peak"].values, truth["peak"], rtol=1e-5, atol=1e-4)


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


def test_a_result_without_pixel_dims_is_written(tmp_path):
    """Truth: the values written. One spectrum's result (no y/x: a 0-d map first, a cube on
    energy, an in-memory flag), as ``eelsgpu kk --surface fit`` makes for a single-spectrum
    file, is written whole and reads back equal (before: its one block had an empty label, so
    its done-marker was the done/ folder itself and the write failed with IsADirectoryError)."""
    import dask.array as da

    from eelsgpu.io import open_store, write_store

    ds = xr.Dataset(
        {
            "t": ((), da.from_array(np.array(2.5))),
            "eps1": (("energy",), da.from_array(np.arange(5.0))),
            "q": ((), np.uint32(1)),
        },
        coords={"energy": np.arange(5.0)},
    )
    write_store(ds, tmp_path / "one.zarr", progress=False)
    res = open_store(tmp_path / "one.zarr")
    assert float(res["t"]) == 2.5 and int(res["q"]) == 1
    np.testing.assert_array_equal(res["eps1"].values, np.arange(5.0))
