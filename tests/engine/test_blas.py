"""BLAS held to one thread while the engine runs blocks (eelsgpu.engine.blas).

Truth: threadpoolctl's own report of each loaded BLAS library's thread count, read inside the
kernels the engine runs and after the run; the limits before the run are set to 2 threads so
that the test means the same on any machine.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import xarray as xr

from eelsgpu import engine
from eelsgpu.engine.blas import blas_threads, one_blas_thread

threadpoolctl = pytest.importorskip("threadpoolctl")


@pytest.fixture
def two_blas_threads():
    """Every loaded BLAS library (NumPy's and SciPy's) at 2 threads for the test, restored after."""
    import scipy.linalg  # noqa: F401  (SciPy's OpenBLAS loaded before the limits are set)

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        if not blas_threads() or set(blas_threads()) != {2}:
            pytest.skip("no BLAS library whose thread count threadpoolctl can set")
        yield


@pytest.mark.parametrize(
    ("lazy", "scheduler"), [(False, "threads"), (False, "synchronous"), (True, "threads")]
)
def test_blocks_see_one_blas_thread_and_the_limits_come_back(
    stand_in, two_blas_threads, tmp_path, lazy, scheduler
):
    """Every block of an in-memory image (the eager path, two threads or one) or of a dask image
    written to a store (the store writer, two threads) runs with each BLAS library at one thread;
    after the run every library is back at 2."""
    import dask

    from eelsgpu.io import open_store, write_store

    seen: list[list[int]] = []
    lock = threading.Lock()

    def record(block, energy_eV):
        with lock:
            seen.append(blas_threads())
        return stand_in.kernel(block, energy_eV)

    si = stand_in.image(shape=(16, 64, 256), chunks=(4, 64))
    if not lazy:
        si = xr.DataArray(np.asarray(si.values), dims=si.dims, coords=si.coords, attrs=si.attrs)
    decl = engine.BlockKernel(record, stand_in.outputs)
    with dask.config.set(scheduler=scheduler, num_workers=2):
        ds = engine.apply_kernel(decl, si, tile_pixels=0)
        if lazy:
            write_store(ds, tmp_path / "out.zarr")
            ds = open_store(tmp_path / "out.zarr")
    assert len(seen) >= 2
    assert all(set(s) == {1} for s in seen), seen
    assert set(blas_threads()) == {2}
    np.testing.assert_allclose(ds["total"].values, stand_in.truth(si)["total"], rtol=1e-5)


def test_the_limit_is_counted_over_threads(two_blas_threads):
    """A block leaving while another is still inside does not lift the limit; the last one out
    restores the original limits."""
    entered, leave, left = threading.Event(), threading.Event(), threading.Event()

    def other():
        with one_blas_thread():
            entered.set()
            leave.wait(10)
        left.set()

    with one_blas_thread():
        assert set(blas_threads()) == {1}
        t = threading.Thread(target=other)
        t.start()
        assert entered.wait(10)
        leave.set()
        assert left.wait(10)
        t.join(10)
        assert set(blas_threads()) == {1}  # the other left first; this one is still inside
    assert set(blas_threads()) == {2}
