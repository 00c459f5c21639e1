"""The counting stand-in for CuPy (eelsgpu.engine.counting) and ``device=`` given a namespace.

Truth: operations counted by hand on small programs (what each line launches), and the CPU
path's results for the same kernel and image (the GPU path run on a stand-in must give them).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from eelsgpu import engine
from eelsgpu.engine import counting
from eelsgpu.engine import transfer as gpu

xs = counting.xp


def _line() -> int:
    return inspect.currentframe().f_back.f_lineno


def test_counts_launches_syncs_promotions_and_views():
    """Each array-making operation is one launch, views and empty allocations none; bool/float/
    int/index and to-host are syncs; a float64 result from float32 input is a promotion; bytes
    are operands + results. Counted by hand."""
    host = np.arange(32, dtype=np.float32).reshape(4, 8)
    with counting.count() as c:
        a = xs.asarray(host)  # 1 op, a host-to-device copy of 128 bytes
        v = a[1:, :]  # a view: no op
        r = xs.reshape(a, (8, 4))  # a view: no op
        e = xs.empty((4, 8), dtype=xs.float32)  # an allocation: no op
        b = a * 2.0  # 1 op: reads 128 bytes, writes 128
        d = xs.astype(b, xs.float64)  # 1 op, a promotion (256 bytes)
        s = xs.sum(v, axis=-1)  # 1 op
        a[0, :] = 1.0  # 1 op (a fill)
        flag = bool(xs.any(b > 100.0))  # 2 ops, 1 sync
        total = float(s[0])  # 1 sync (s[0] is a view)
        back = np.asarray(d)  # 1 sync (to the host)
    assert (c.ops, c.syncs, c.promotions, c.h2d_copies, c.h2d_bytes) == (7, 3, 1, 1, 128)
    assert c.promoted_bytes == 256
    assert not flag and total == float(host[1].sum()) and back.dtype == np.float64
    assert r.shape == (8, 4) and e.shape == (4, 8)
    assert c.bytes >= 128 + 256 + 256 + 384  # asarray, a*2, astype, the to-host read, ...


def test_counts_per_call_site():
    """Every operation is charged to the line that called it (file, line, function)."""
    with counting.count() as c:
        a = xs.ones((3, 3))
        here = _line() + 2
        for _ in range(5):
            a = a + 1.0
        float(xs.max(a))
    site = next(s for s, k in c.top("ops") if s.line == here)
    assert c.site_ops[site] == 5 and site.function == "test_counts_per_call_site"
    assert site.file.endswith("tests/engine/test_counting.py")
    assert sum(k for _, k in c.top("syncs")) == 1


def test_namespace_device_runs_the_gpu_path_with_the_cpu_results(stand_in):
    """``device=array_api_strict`` (and the counting stand-in) runs the GPU path -- one block
    per task, one copy in and one copy back per block, results packed on the device -- and gives
    the CPU path's numbers (float32 rounding)."""
    import array_api_strict

    si = stand_in.image(chunks=(10, 9))  # 2 x 2 blocks of 90 spectra
    cpu = engine.apply_kernel(stand_in.decl, si, device="cpu").compute()
    for dev in (array_api_strict, counting.xp):
        pool = gpu.pool_for(gpu.device_for(dev))
        before = pool.stats()
        with counting.count() as c:
            got = engine.apply_kernel(stand_in.decl, si, device=dev).compute(scheduler="threads")
        after = pool.stats()
        for k in cpu.data_vars:
            np.testing.assert_allclose(got[k].values, cpu[k].values, rtol=2e-5, atol=1e-4)
        assert after["passes"] - before["passes"] == 4
        assert after["d2h_copies"] - before["d2h_copies"] == 4  # ONE copy back per block
        if dev is counting.xp:
            assert [b.n_pixels for b in c.blocks] == [90] * 4
            # the stand-in kernel syncs nowhere: the one sync per block is the copy back
            assert all(b.syncs == 1 for b in c.blocks)
            assert all(b.h2d_copies >= 1 for b in c.blocks)


def test_deconvolve_on_the_counting_stand_in_equals_the_cpu():
    """A public analysis takes the namespace as its device (through the engine): deconvolve on
    the counting stand-in gives the CPU's SSD to float32 rounding (same kernels, other FFT) and
    the same maps, and the counts come per block."""
    import eelsgpu
    from eelsgpu import synthetic

    si = synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0),
        t_over_lambda=0.8,
        shape=(2, 8),
        n_channels=512,
        dispersion_eV=0.1,
        chunks=(2, 8),
    )["signal"]
    with counting.count() as c:
        got = eelsgpu.deconvolve(si, zlp="mirror", device=counting.xp).compute()
    ref = eelsgpu.deconvolve(si, zlp="mirror", device="cpu").compute()
    peak = float(np.abs(ref["ssd"].values).max())
    assert np.abs(got["ssd"].values - ref["ssd"].values).max() < 1e-4 * peak
    for k in ("zlp_intensity", "zlp_centre_eV", "t_over_lambda", "quality", "valid"):
        np.testing.assert_allclose(got[k].values, ref[k].values, rtol=1e-5)
    assert len(c.blocks) == 1 and c.blocks[0].n_pixels == 16 and c.blocks[0].ops > 0
    assert c.blocks[0].peak_bytes > 16 * 512 * 4  # at least the block itself was on the device


def test_bad_device_is_one_clear_error():
    """A device that is neither a name nor a namespace module is refused naming both kinds."""
    from eelsgpu.errors import InputError

    with pytest.raises(InputError, match="array-API namespace"):
        engine.apply_kernel(engine.BlockKernel(lambda b, e: {}, ()), _tiny(), device=3)


def _tiny():
    from eelsgpu.model import spectrum_image

    return spectrum_image(np.ones((2, 8)), np.arange(8.0))
