"""kernels/blocks_replicas.with_replicas: replica sigmas of any declared block kernel (issue 14).

Truth: linear kernels whose counting sigma is exact (a sum of Poisson counts has variance
``g`` times its mean; a per-channel scale ``a x`` has sigma ``a sqrt(g x)``), on NumPy and
array-api-strict.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import asarray, to_numpy

from eelsgpu._xp import array_namespace
from eelsgpu.kernels.blocks_replicas import with_replicas
from eelsgpu.kernels.declare import BlockKernel, Output


def _linear(block, energy_eV, *, scale=None, factor=1.0):
    """A map (the sum) and a per-pixel spectrum (``factor * scale * block``)."""
    xp = array_namespace(block)
    s = scale if scale is not None else 1.0
    return {"total": factor * xp.sum(block, axis=-1), "spec": factor * s * block}


LINEAR = BlockKernel(
    _linear,
    outputs=(
        Output("total", "counts", "sum"),
        Output("spec", "counts", "scaled spectrum", axis="energy"),
    ),
)


@pytest.mark.parametrize("gain", [1.0, 3.0])
def test_replica_sigmas_of_a_linear_kernel(xp, gain):
    """Covers the wrapper's whole path (draw, run as a larger batch, reduce per pixel and per
    channel, per-pixel extras repeated, shared parameters passed): 400 replicas give the exact
    Poisson sigma of a sum (sqrt(g sum x)) and of each channel (a sqrt(g x)) to 12 %; the
    values are the wrapped kernel's own; the declared outputs carry sigma_of and the label."""
    e = np.arange(50.0)
    x = np.full((3, 50), 400.0) * np.array([[1.0], [2.0], [4.0]])
    scale = np.array([[1.0] * 50, [2.0] * 50, [0.5] * 50])
    decl = with_replicas(LINEAR, ["total", "spec"], per_pixel=("scale",))
    out = decl.kernel(
        asarray(xp, x),
        asarray(xp, e),
        scale=asarray(xp, scale),
        factor=2.0,
        n_replicas=400,
        gain=gain,
        pixel_index=np.arange(3),
        seed=1,
    )
    tot = to_numpy(out["total_sigma"])
    np.testing.assert_allclose(tot, 2.0 * np.sqrt(gain * x.sum(-1)), rtol=0.12)
    spec = to_numpy(out["spec_sigma"])
    assert spec.shape == x.shape
    expect = 2.0 * scale * np.sqrt(gain * x)
    np.testing.assert_allclose(np.median(spec / expect, axis=-1), 1.0, atol=0.05)
    np.testing.assert_allclose(to_numpy(out["total"]), 2.0 * x.sum(-1))
    outs = {o.name: o for o in decl.outputs_for({"n_replicas": 400, "factor": 2.0})}
    assert outs["spec_sigma"].axis == "energy" and outs["spec_sigma"].units == "counts"
    assert outs["total_sigma"].attrs == {
        "sigma_of": "total",
        "part": "counting",
        "uncertainty": "replicas:400",
    }


def test_replica_sigmas_do_not_depend_on_blocking():
    """Truth: the same pixels run whole and split in two blocks (and in small replica batches)
    give identical sigmas, because each pixel draws from (seed, its global index)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(50, 500, (6, 40))
    e = np.arange(40.0)
    decl = with_replicas(LINEAR, ["total"])
    idx = np.arange(6)
    whole = decl.kernel(x, e, n_replicas=30, pixel_index=idx, seed=7)["total_sigma"]
    split_decl = with_replicas(LINEAR, ["total"], batch_elements=200)
    parts = [
        split_decl.kernel(x[s], e, n_replicas=30, pixel_index=idx[s], seed=7)["total_sigma"]
        for s in (slice(0, 2), slice(2, 6))
    ]
    np.testing.assert_array_equal(whole, np.concatenate(parts))
    other = decl.kernel(x, e, n_replicas=30, pixel_index=idx, seed=8)["total_sigma"]
    assert not np.array_equal(whole, other)
