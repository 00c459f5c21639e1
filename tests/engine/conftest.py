"""The engine tests' stand-in pipeline: a kernel with two maps, a boolean map and a per-pixel
spectrum (rfft -> low-pass -> irfft), the image it runs on, and its truth: the kernel applied with
NumPy to the whole cube at once (no blocks, no tiles, no store)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from eelsgpu import engine
from eelsgpu._xp import array_namespace
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


def image(shape=(20, 18, 64), chunks=(8, 6), seed=1):
    """A float32 spectrum image of Gaussian noise around 10 counts, in pixel blocks ``chunks``."""
    rng = np.random.default_rng(seed)
    data = rng.normal(10.0, 3.0, shape).astype(np.float32)
    return spectrum_image(
        data,
        np.arange(shape[-1]) * 0.1 - 1.0,
        beam_energy_keV=300.0,
        chunks=chunks,
        source="synthetic.npy",
    )


def truth(si, **kw):
    """The kernel on the whole cube with NumPy, reshaped like the image."""
    flat = np.asarray(si.values).reshape(-1, si.shape[-1])
    out = kernel(flat, None, **kw)
    return {k: np.asarray(v).reshape(*si.shape[:-1], *np.shape(v)[1:]) for k, v in out.items()}


@pytest.fixture
def stand_in():
    """``decl`` (the kernel's BlockKernel), ``image(...)`` and ``truth(si, **params)``."""
    return SimpleNamespace(
        decl=engine.BlockKernel(kernel, OUTPUTS),
        outputs=OUTPUTS,
        kernel=kernel,
        image=image,
        truth=truth,
    )
