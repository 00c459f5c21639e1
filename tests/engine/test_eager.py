"""The eager path of the engine: an image held in memory runs at once, block by block on all cores,
each block's outputs written straight into preallocated NumPy result arrays.

Truth: the lazy path (a dask graph) on the same image in the same pixel blocks -- the eager path
must give the same numbers bit for bit, the same Dataset (dims, coords, units, attrs, dtypes) and
the same errors -- and the kernel on the whole cube with NumPy (no blocks).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from eelsgpu import engine
from eelsgpu.engine.blocks import _memory_chunks, eager_workers


def _in_memory(si: xr.DataArray) -> xr.DataArray:
    return xr.DataArray(np.asarray(si.values), dims=si.dims, coords=si.coords, attrs=si.attrs)


def _lazy_twin(mem: xr.DataArray) -> xr.DataArray:
    """The same image as a dask array in the very blocks the engine cuts it into in memory."""
    chunks = _memory_chunks(np.asarray(mem.data))
    return mem.chunk(dict(zip(mem.dims, chunks, strict=True)))


def _assert_same(eager: xr.Dataset, lazy: xr.Dataset) -> None:
    assert list(eager.data_vars) == list(lazy.data_vars)
    assert eager.attrs == lazy.attrs
    for name in lazy.data_vars:
        a, b = eager[name], lazy[name]
        assert isinstance(a.data, np.ndarray), name  # eager: NumPy-backed, computed
        assert isinstance(b.data, da.Array), name
        assert a.dims == b.dims and a.dtype == b.dtype and a.attrs == b.attrs, name
        np.testing.assert_array_equal(a.values, b.values, strict=True, err_msg=name)
    for name in lazy.coords:
        np.testing.assert_array_equal(eager[name].values, lazy[name].values)
        assert eager[name].attrs == lazy[name].attrs


@pytest.mark.parametrize("tile", [None, 0, 7])
def test_in_memory_is_eager_and_equals_the_lazy_path_bitwise(stand_in, monkeypatch, tile):
    """An image in memory (several blocks: 4 cores assumed) gives NumPy-backed results equal bit
    for bit to the lazy path on the same blocks, float, bool and per-pixel spectra alike, with a
    map and a cube passed beside it; and to the whole-cube NumPy kernel (truth) within float32
    rounding."""
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    mem = _in_memory(stand_in.image(shape=(40, 32, 256), chunks=(40, 32)))
    assert len(_memory_chunks(mem.values)) == 3 and _memory_chunks(mem.values)[0] < 40

    def with_extras(block, energy_eV, gain, zlp):
        out = stand_in.kernel(block * gain[:, None] + zlp, energy_eV)
        return out

    decl = engine.BlockKernel(with_extras, stand_in.outputs)
    gain = np.linspace(0.5, 2.0, 40 * 32).reshape(40, 32)
    zlp = np.random.default_rng(3).normal(0, 1, (40, 32, 256)).astype(np.float32)
    extras = {"gain": gain, "zlp": zlp}
    eager = engine.apply_kernel(decl, mem, device="cpu", extras=extras, tile_pixels=tile)
    lazy = engine.apply_kernel(decl, _lazy_twin(mem), device="cpu", extras=extras, tile_pixels=tile)
    _assert_same(eager, lazy)
    truth = stand_in.truth(mem * xr.DataArray(gain, dims=("y", "x")) + zlp)
    for k, v in truth.items():
        np.testing.assert_allclose(eager[k].values, v, rtol=1e-5, atol=1e-4)


def test_blocks_run_on_several_threads_at_once(stand_in, monkeypatch):
    """The blocks of an image in memory run concurrently: two kernel calls meet at a barrier that
    a one-thread run could never pass (it would time out)."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    mem = _in_memory(stand_in.image(shape=(16, 64, 256), chunks=(16, 64)))
    barrier = threading.Barrier(2, timeout=30)
    threads = set()

    def meet(block, energy_eV):
        threads.add(threading.get_ident())
        if len(threads) <= 2:
            barrier.wait()
        return stand_in.kernel(block, energy_eV)

    ds = engine.apply_kernel(engine.BlockKernel(meet, stand_in.outputs), mem, tile_pixels=0)
    assert len(threads) == 2 and threading.get_ident() not in threads
    np.testing.assert_allclose(ds["total"].values, stand_in.truth(mem)["total"], rtol=1e-5)


def test_when_the_eager_path_applies(stand_in):
    """Eager for NumPy data (one thread per core, one on dask's synchronous scheduler); lazy for
    a dask image (a store, `.chunk()`), a dask extra, or dask's processes scheduler."""
    mem = stand_in.image().values
    assert eager_workers(mem) == (os.cpu_count() or 1)
    assert eager_workers(mem, [np.ones(3)]) == (os.cpu_count() or 1)
    assert eager_workers(da.ones(3)) == 0
    assert eager_workers(mem, [xr.DataArray(da.ones(3))]) == 0
    with dask.config.set(scheduler="synchronous"):
        assert eager_workers(mem) == 1
    with dask.config.set(num_workers=3):
        assert eager_workers(mem) == 3
    with dask.config.set(scheduler="processes"):
        assert eager_workers(mem) == 0
    si = stand_in.image()  # dask-backed
    assert isinstance(engine.apply_kernel(stand_in.decl, si)["total"].data, da.Array)
    mem_si = _in_memory(si)
    assert isinstance(engine.apply_kernel(stand_in.decl, mem_si)["total"].data, np.ndarray)
    assert isinstance(engine.apply_kernel(stand_in.decl, mem_si.chunk())["total"].data, da.Array)
    with dask.config.set(scheduler="synchronous"):
        one = engine.apply_kernel(stand_in.decl, mem_si)
    _assert_same(one, engine.apply_kernel(stand_in.decl, _lazy_twin(mem_si)))


def test_a_failing_block_raises_the_lazy_paths_error(stand_in, monkeypatch):
    """A block whose kernel raises gives the same exception (type and message) as the lazy path's
    compute, raised by the call itself; blocks not yet started are not run."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    mem = _in_memory(stand_in.image(shape=(32, 64, 256), chunks=(32, 64)))
    n_blocks = int(np.prod([len(c) for c in _lazy_twin(mem).chunks[:-1]]))
    assert n_blocks >= 4
    mem.values[0, 0, 0] = -999.0  # the first block fails
    calls = []

    def counted(block, energy_eV, **kw):
        calls.append(1)
        time.sleep(0.05)
        return stand_in.kernel(block, energy_eV, **kw)

    decl = engine.BlockKernel(counted, stand_in.outputs)
    with pytest.raises(RuntimeError, match="injected failure") as lazy_err:
        engine.apply_kernel(decl, _lazy_twin(mem), tile_pixels=0, fail_on=-999.0).compute()
    calls.clear()
    with pytest.raises(RuntimeError, match="injected failure") as eager_err:
        engine.apply_kernel(decl, mem, tile_pixels=0, fail_on=-999.0)
    assert str(eager_err.value) == str(lazy_err.value)
    assert len(calls) < n_blocks


def test_ctrl_c_stops_every_block_before_it_returns(stand_in, monkeypatch):
    """Ctrl-C (SIGINT to the main thread while the blocks run) raises KeyboardInterrupt from the
    call, as it does from a lazy compute, and only once no block is running any more (running
    blocks end at their next tile; blocks not started never run). Truth: a counter of kernel
    calls in progress and of calls made. Python's own SIGINT handler is installed for the test:
    a process started in the background by a non-interactive shell inherits SIGINT ignored
    (POSIX), and Python then raises no KeyboardInterrupt at all (found when the suite ran as a
    background job)."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    mem = _in_memory(stand_in.image(shape=(32, 64, 256), chunks=(32, 64)))
    main = threading.main_thread().ident
    running, calls = [0], [0]
    lock = threading.Lock()

    def slow(block, energy_eV):
        with lock:
            running[0] += 1
            calls[0] += 1
            first = calls[0] == 1
        try:
            if first:
                signal.pthread_kill(main, signal.SIGINT)
            time.sleep(0.05)
            return stand_in.kernel(block, energy_eV)
        finally:
            with lock:
                running[0] -= 1

    n_tiles = 32 * 64 // 16
    try:
        with pytest.raises(KeyboardInterrupt):
            engine.apply_kernel(engine.BlockKernel(slow, stand_in.outputs), mem, tile_pixels=16)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert running[0] == 0
    assert calls[0] < n_tiles


def test_gpu_code_path_in_memory_equals_lazy(stand_in, monkeypatch):
    """With an array-API namespace standing in for CuPy (the GPU code path: pinned staging,
    packed results, one copy back per pass), an image in memory gives the lazy path's numbers
    bit for bit."""
    import array_api_strict as xs

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    mem = _in_memory(stand_in.image(shape=(40, 32, 256), chunks=(40, 32)))
    eager = engine.apply_kernel(stand_in.decl, mem, device=xs)
    lazy = engine.apply_kernel(stand_in.decl, _lazy_twin(mem), device=xs)
    _assert_same(eager, lazy)


def test_large_results_in_populated_mappings_equal_the_lazy_path(stand_in, monkeypatch):
    """Results above POPULATE_BYTES (here every one) come in anonymous mappings populated at
    once (Linux): writable NumPy arrays holding the lazy path's numbers bit for bit, and they
    pickle (a Dataset sent to another process)."""
    import pickle

    from eelsgpu.engine import blocks

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(blocks, "POPULATE_BYTES", 0)
    mem = _in_memory(stand_in.image(shape=(40, 32, 256), chunks=(40, 32)))
    eager = engine.apply_kernel(stand_in.decl, mem, device="cpu")
    _assert_same(eager, engine.apply_kernel(stand_in.decl, _lazy_twin(mem), device="cpu"))
    assert eager["filtered"].values.flags.writeable
    back = pickle.loads(pickle.dumps(eager))
    np.testing.assert_array_equal(back["filtered"].values, eager["filtered"].values)
