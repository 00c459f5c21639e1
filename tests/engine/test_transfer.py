"""The transfer path of eelsgpu.engine.transfer (the device choice: tests/engine/test_device.py).

The transfer path (staging in a reusable host buffer in the kernel's dtype, one host-to-device
copy per block, the kernel on the device, the results back) is driven here with NumPy as the
"device" (real copies, no mocks); tests marked ``gpu`` run the same path on CuPy where a GPU
exists. Truth: the kernel's result on the host without any transfer.
"""

from __future__ import annotations

import numpy as np
import pytest

from eelsgpu import engine
from eelsgpu._xp import array_namespace
from eelsgpu.engine import device as backend
from eelsgpu.engine import transfer as gpu

HAS_GPU = backend.gpu_status().usable
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason=f"no usable GPU: {backend.gpu_status().reason}")


def _kernel(block, energy_eV):
    xp = array_namespace(block)
    f = xp.fft.rfft(block, axis=-1)
    return {"total": xp.sum(block, axis=-1), "amp1": xp.abs(f[:, 1]), "twice": block * 2}


OUTPUTS = [engine.Output("total"), engine.Output("amp1"), engine.Output("twice", axis="energy")]


def test_block_mover_one_copy_per_block_through_reused_staging():
    """Through a copying device: one host-to-device copy per block, the staging buffer reused,
    float64 input cast on the host (float32 crosses: 4 bytes a value); results equal the host
    computation (truth)."""
    mover = gpu.BlockMover(gpu.host_device(copies=True))
    rng = np.random.default_rng(0)
    staging = None
    for i in range(3):
        block = rng.normal(size=(50, 32))  # float64
        got = mover.run(block, lambda b: _kernel(b, None), dtype=np.float32)
        truth = _kernel(block.astype(np.float32), None)
        for k in truth:
            np.testing.assert_allclose(got[k], truth[k], rtol=1e-6)
        assert got["twice"].dtype == np.float32
        assert mover.h2d_copies == i + 1
        if staging is None:
            staging = mover._staging
        assert mover._staging is staging  # allocated once (pinned allocations are slow)
    assert mover.h2d_bytes == 3 * 50 * 32 * 4
    assert mover.d2h_copies == 3 * 3
    # a larger block grows the buffer once
    mover.run(np.ones((80, 32)), lambda b: {"s": b}, dtype=np.float32)
    assert mover._staging.size == 80 * 32


def test_host_device_makes_no_copies():
    """On the CPU the block goes to the kernel as it is: no staging, no counted transfers."""
    mover = gpu.BlockMover(gpu.host_device())
    block = np.ones((4, 8), np.float32)
    seen = {}

    def fn(b):
        seen["same"] = b is block or np.shares_memory(b, block)
        return {"s": b.sum(axis=-1)}

    mover.run(block, fn, dtype=np.float32)
    assert seen["same"] and mover.h2d_copies == 0 and mover._staging is None


def test_tiles_cover_every_row_once():
    """iter_tiles covers range(n) exactly once, in order, with tiles of at most `tile` rows."""
    for n, tile in [(10, 3), (10, 10), (10, None), (1, 4), (4096, 128)]:
        rows = [r for s in gpu.iter_tiles(n, tile) for r in range(s.start, s.stop)]
        assert rows == list(range(n))
        if tile:
            assert all(s.stop - s.start <= tile for s in gpu.iter_tiles(n, tile))


def test_mover_is_per_thread_and_per_device():
    """Each worker thread gets its own mover (its own staging buffer and, on a GPU, stream)."""
    import threading

    a = gpu.mover_for("cpu")
    assert gpu.mover_for("cpu") is a
    other = {}
    t = threading.Thread(target=lambda: other.setdefault("m", gpu.mover_for("cpu")))
    t.start()
    t.join()
    assert other["m"] is not a


# --------------------------------------------------------------------------- real GPU
@pytest.mark.gpu
@needs_gpu
def test_gpu_apply_kernel_matches_cpu():
    """On a real GPU the pipeline gives the CPU's numbers (float32 rounding) with one copy per
    block."""
    from eelsgpu.model import spectrum_image

    rng = np.random.default_rng(3)
    si = spectrum_image(rng.normal(10, 2, (16, 12, 256)), np.arange(256.0), chunks=(8, 6))
    cpu = engine.apply_kernel(engine.BlockKernel(_kernel, OUTPUTS), si, device="cpu").compute()
    pool = gpu.pool_for(gpu.device_for("gpu"))
    before = pool.stats()
    dev = engine.apply_kernel(engine.BlockKernel(_kernel, OUTPUTS), si, device="gpu").compute(
        scheduler="synchronous"
    )
    for k in cpu.data_vars:
        np.testing.assert_allclose(dev[k].values, cpu[k].values, rtol=1e-5, atol=1e-4)
    after = pool.stats()
    assert after["passes"] - before["passes"] == 4  # 2 x 2 blocks
    assert after["d2h_copies"] - before["d2h_copies"] == 4  # one copy back per block


@pytest.mark.gpu
@needs_gpu
def test_cuda_pool_passes_pinned_buffers_and_streams():
    """On CuPy: a small memory budget cuts a block into double-buffered passes on the slot's
    non-blocking stream; results equal NumPy's, pinned buffers are allocated once."""
    import cupy

    pool = gpu.DevicePool(gpu.cuda_device(), streams=1)
    pool.budget = 20 * 2 * 10_000  # 20 spectra a pass
    pool.gate = gpu.MemoryGate(pool.budget)
    block = np.random.default_rng(2).normal(size=(100, 64))

    def kernel(b, e):
        return {"s": cupy.sum(b, axis=-1), "t": b * 2}

    for _ in range(2):
        got = pool.run(block, kernel, energy=np.arange(64.0), widths=(1, 64), names=("s", "t"),
                       dtype=np.float32, peak_per_spectrum=10_000)  # fmt: skip
        b32 = block.astype(np.float32)
        np.testing.assert_allclose(got[:, 0], b32.sum(-1), rtol=1e-5)
        np.testing.assert_allclose(got[:, 1:], 2 * b32, rtol=1e-6)
    st = pool.stats()
    assert st["passes"] == 10 and st["pinned_allocations"] == 4


@pytest.mark.gpu
@needs_gpu
def test_cuda_device_mover_pinned_staging():
    """CuPy's pinned staging and stream path returns what NumPy computes."""
    import cupy

    mover = gpu.BlockMover(gpu.cuda_device())
    block = np.random.default_rng(1).normal(size=(64, 128))
    got = mover.run(block, lambda b: {"s": cupy.sum(b, axis=-1)}, dtype=np.float32)
    np.testing.assert_allclose(got["s"], block.astype(np.float32).sum(axis=-1), rtol=1e-5)
    assert mover.h2d_copies == 1


# --------------------------------------------------------------------------- the GPU path
def _strict_device(free_bytes=2**30):
    import array_api_strict

    return gpu.namespace_device(array_api_strict, free_bytes=free_bytes)


def _strict_kernel(block, energy_eV, scale=None):
    xp = array_namespace(block)
    f = xp.fft.rfft(block, axis=-1)
    out = {
        "total": xp.sum(block, axis=-1),
        "amp1": xp.abs(f[:, 1]),
        "twice": block * 2 + xp.astype(energy_eV, block.dtype),
    }
    if scale is not None:
        out["total"] = out["total"] * xp.astype(scale, block.dtype)[0]
    return out


def _host_truth(block, energy, scale=1.0):
    b = block.astype(np.float32)
    return np.concatenate(
        [
            (b.sum(-1) * scale)[:, None],
            np.abs(np.fft.rfft(b, axis=-1)[:, 1])[:, None],
            b * 2 + energy.astype(np.float32),
        ],
        axis=1,
    )


def test_device_pool_one_copy_each_way_pinned_buffers_reused():
    """The GPU path on array-api-strict: per block, one copy of the block to the device and ONE
    copy of the packed results back; the energy axis and parameter arrays are copied once per
    device thread (not per block); the pinned staging and result buffers are allocated once
    and reused. Truth: the same computation in NumPy on the host."""
    pool = gpu.DevicePool(_strict_device(), streams=1)
    rng = np.random.default_rng(0)
    energy = np.arange(16.0)
    for i in range(4):
        block = rng.normal(size=(30, 16))
        got = pool.run(
            block,
            _strict_kernel,
            energy=energy,
            widths=(1, 1, 16),
            names=("total", "amp1", "twice"),
            dtype=np.float32,
            peak_per_spectrum=1000,
            params={"scale": np.array([2.0])},
        )
        np.testing.assert_allclose(got, _host_truth(block, energy, 2.0), rtol=1e-5, atol=1e-5)
        st = pool.stats()
        assert st["d2h_copies"] == i + 1 and st["passes"] == i + 1
        # block copies + 2 constants (energy, scale) made once
        assert st["h2d_copies"] == (i + 1) + 2
        assert st["pinned_allocations"] == 2  # one staging buffer, one result buffer
    assert st["d2h_bytes"] == 4 * 30 * 18 * 4


def test_device_pool_passes_from_device_memory_give_the_same_numbers():
    """A device with little free memory cuts a block into passes of budget / (2 x peak) spectra
    (double buffered: two staging and two result buffers), the memory gate never holds more
    than the budget, and the packed results equal one pass's."""
    energy = np.arange(16.0)
    block = np.random.default_rng(1).normal(size=(100, 16))
    kw = dict(
        energy=energy,
        widths=(1, 1, 16),
        names=("total", "amp1", "twice"),
        dtype=np.float32,
        peak_per_spectrum=10_000,
    )
    big = gpu.DevicePool(_strict_device(2**30), streams=1)
    small = gpu.DevicePool(_strict_device(250_000), streams=1)  # budget 200 kB: 10 rows a pass
    assert small.rows_per_pass(100, 10_000) == 10
    want = big.run(block, _strict_kernel, **kw)
    got = small.run(block, _strict_kernel, **kw)
    np.testing.assert_array_equal(got, want)
    st = small.stats()
    assert st["passes"] == 10 and st["d2h_copies"] == 10
    assert st["gate_max_used"] <= small.budget and st["gate_max_holders"] == 2
    assert st["pinned_allocations"] == 4  # two staging and two result buffers, then reused


def test_memory_gate_bounds_blocks_in_flight():
    """The per-device semaphore: however many threads ask, the bytes held never exceed the
    capacity, and a request larger than the capacity still runs (alone)."""
    import threading
    import time

    gate = gpu.MemoryGate(100)
    seen = []

    def work(n):
        taken = gate.acquire(n)
        seen.append(gate.used)
        time.sleep(0.01)
        gate.release(taken)

    threads = [threading.Thread(target=work, args=(n,)) for n in (40, 40, 40, 40, 150, 30) * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(seen) <= 100 and gate.max_used <= 100 and gate.used == 0
    assert gate.max_holders >= 2  # two 40s do run together


def test_device_pool_caps_concurrency_across_dask_threads(stand_in):
    """Many dask threads, one device: at most `streams` blocks run on it at once, each on its
    own slot (stream), and the results are the CPU path's."""
    import array_api_strict

    si = stand_in.image(shape=(24, 20, 64), chunks=(4, 5))  # 24 blocks
    cpu = engine.apply_kernel(stand_in.decl, si, device="cpu").compute()
    pool = gpu.pool_for(gpu.device_for(array_api_strict))
    import dask

    with dask.config.set(num_workers=8):
        dev = engine.apply_kernel(stand_in.decl, si, device=array_api_strict).compute(
            scheduler="threads"
        )
    for k in cpu.data_vars:
        np.testing.assert_allclose(dev[k].values, cpu[k].values, rtol=2e-5, atol=1e-4)
    st = pool.stats()
    assert st["max_running"] <= gpu.MAX_STREAMS and st["slots"] <= gpu.MAX_STREAMS


def test_energy_axis_and_block_copied_on_the_stream_the_kernel_runs_on():
    """Stream order: the energy axis, parameter arrays and the block are copied to the device
    on the slot's stream, the one the kernel runs on (a recording stand-in device notes the
    stream current at every copy and at the kernel)."""
    import contextlib

    import array_api_strict as xs

    current = []
    log = []

    class Stream:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            current.append(self.name)

        def __exit__(self, *exc):
            current.pop()

    made = iter(range(100))

    def asarray(host):
        log.append(("copy", current[-1] if current else "default"))
        return xs.asarray(host)

    def kernel(block, energy_eV):
        log.append(("kernel", current[-1] if current else "default"))
        return {"s": xs.sum(block, axis=-1) + energy_eV[0]}

    dev = gpu.Device(
        name="recording",
        asarray=asarray,
        asnumpy=np.asarray,
        empty_pinned=np.empty,
        stream=lambda: Stream(f"stream-{next(made)}"),
        xp=xs,
        key="recording",
        free_bytes=lambda: 2**30,
        copy_to_host=lambda d, out: np.copyto(out, np.asarray(d)),
        block=lambda n: contextlib.nullcontext(),
    )
    pool = gpu.DevicePool(dev, streams=1)
    out = pool.run(
        np.ones((5, 4)),
        kernel,
        energy=np.arange(4.0) + 1,
        widths=(1,),
        names=("s",),
        dtype=np.float32,
        peak_per_spectrum=100,
    )
    assert out[:, 0].tolist() == [5.0] * 5
    streams = {s for _, s in log}
    assert streams == {"stream-0"}, log  # nothing on the default stream
    assert [w for w, _ in log] == ["copy", "copy", "kernel"]


def test_device_resolved_where_the_blocks_run(stand_in, monkeypatch):
    """``auto`` is not decided on the client: the graph carries "auto", and the process that
    runs the blocks decides. Here the client has no GPU when the graph is built; then the
    'worker' (this process, with a fake GPU status and array-api-strict standing in for CuPy)
    runs the blocks on its GPU path. Truth: the CPU results, and the pool's pass count."""
    import array_api_strict

    from eelsgpu.engine import device as backend

    si = stand_in.image(chunks=(10, 9))
    monkeypatch.setattr(backend, "gpu_status", lambda: backend.GPUStatus(False, "none here"))
    ds = engine.apply_kernel(stand_in.decl, si, device="auto")
    specs = {
        getattr(t, "device", None)
        for layer in ds["total"].data.dask.layers.values()
        for t in _callables(layer)
    }
    assert "auto" in specs and "cpu" not in specs
    cpu = ds.compute(scheduler="synchronous")  # resolved here: no GPU, the CPU path
    fake = gpu.namespace_device(array_api_strict, free_bytes=2**30)
    monkeypatch.setattr(backend, "gpu_status", lambda: backend.GPUStatus(True, "ok", "fake"))
    monkeypatch.setattr(gpu, "cuda_device", lambda: fake)
    monkeypatch.setattr(gpu, "_DEVICES", {})
    pool = gpu.pool_for(fake)
    before = pool.stats()["passes"]
    dev = ds.compute(scheduler="synchronous")  # the same graph, now on a "GPU worker"
    assert pool.stats()["passes"] - before == 4
    for k in cpu.data_vars:
        np.testing.assert_allclose(dev[k].values, cpu[k].values, rtol=2e-5, atol=1e-4)


def _callables(layer):
    """The _BlockFunction objects inside a dask graph layer's tasks."""
    from eelsgpu.engine.blocks import _BlockFunction

    found = []

    def walk(obj, depth=0):
        if depth > 6:
            return
        if isinstance(obj, _BlockFunction):
            found.append(obj)
        elif isinstance(obj, (tuple, list)):
            for o in obj:
                walk(o, depth + 1)
        elif isinstance(obj, dict):
            for o in obj.values():
                walk(o, depth + 1)
        else:
            for attr in ("func", "args", "kwargs", "dsk", "task"):
                if hasattr(obj, attr) and not isinstance(obj, type):
                    walk(getattr(obj, attr), depth + 1)

    for task in dict(layer).values():
        walk(task)
    return found


def test_gpu_asked_for_locally_without_gpu_fails_before_the_run(stand_in, monkeypatch):
    """device='gpu' in a local run with no usable GPU: the clear DeviceError comes when the graph
    is built (no distributed client is active, so the blocks would run here)."""
    from eelsgpu.engine import device as backend

    monkeypatch.setattr(backend, "gpu_status", lambda: backend.GPUStatus(False, "none here"))
    with pytest.raises(backend.DeviceError, match="none here"):
        engine.apply_kernel(stand_in.decl, stand_in.image(), device="gpu")
