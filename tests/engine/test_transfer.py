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
    before = gpu.mover_for("gpu").h2d_copies
    dev = engine.apply_kernel(engine.BlockKernel(_kernel, OUTPUTS), si, device="gpu").compute(
        scheduler="synchronous"
    )
    for k in cpu.data_vars:
        np.testing.assert_allclose(dev[k].values, cpu[k].values, rtol=1e-5, atol=1e-4)
    assert gpu.mover_for("gpu").h2d_copies - before == 4  # 2 x 2 blocks, one copy each


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
