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


def _log_ratio_case():
    """Poisson realisations of eelsgpu.synthetic's Drude low-loss truth (tests/_coverage.py):
    t/lambda 0.2 and 0.6 at 1e5 counts in the ZLP (the tail beyond the window tiny against the
    counting noise), and t/lambda 3 at 1e6 (the tail a large, noisy part)."""
    from tests._coverage import log_ratio_image

    si = log_ratio_image([(1e5, 0.2), (1e5, 0.6), (1e6, 3.0)], 24, seed=4)["signal"]
    e = si["energy"].values
    return si.values.reshape(-1, e.size), e


def test_log_ratio_fast_replicas_match_the_whole_kernel(monkeypatch):
    """Truth: the same replicas run whole through the log-ratio kernel (``fast_path=False``,
    every decision of the estimator made afresh per replica). Covers
    blocks_replicas.log_ratio_replica_sigmas: where the tail is small against the counting
    noise the window-only replicas take the pixel (checked by counting the pixels drawn that
    way) and give the whole kernel's t/lambda and N0 sigmas to 12 % (median per group: 40
    replicas scatter by 11 %, so the pixel-median agrees to a few %); at t/lambda 3 the tail
    moves, so every replica runs the whole kernel and the sigmas are identical; the maps
    themselves are the kernel's own, byte for byte; a measured Gaussian variance equal to the
    Poisson one gives the same sigmas to 12 %."""
    from eelsgpu.kernels import blocks_replicas
    from eelsgpu.kernels.blocks_lowloss import LOG_RATIO

    block, e = _log_ratio_case()
    kw = dict(method="threshold", tail="auto", axis_eV=(float(e[0]), float(e[1] - e[0])))
    drawn = []
    real = blocks_replicas._window_draws

    def counting(host, *a, **k):
        drawn.append(host.shape[0])
        return real(host, *a, **k)

    monkeypatch.setattr(blocks_replicas, "_window_draws", counting)
    run = dict(n_replicas=40, seed=2, pixel_index=np.arange(block.shape[0]))
    targets = ("t_over_lambda", "zlp_intensity")
    fast = with_replicas(LOG_RATIO, targets).kernel(block, e, **run, **kw)
    whole = with_replicas(LOG_RATIO, targets, fast_path=False).kernel(block, e, **run, **kw)
    plain = LOG_RATIO.kernel(block, e, **kw)
    for name, v in plain.items():
        assert np.asarray(v).tobytes() == np.asarray(fast[name]).tobytes(), name
    assert sum(drawn) >= 40  # most of the 48 pixels of the first two groups
    for g in range(3):
        rows = slice(24 * g, 24 * (g + 1))
        for t in targets:
            f, w = fast[f"{t}_sigma"][rows], whole[f"{t}_sigma"][rows]
            assert np.all(np.isfinite(f)), (g, t)
            np.testing.assert_allclose(np.median(f), np.median(w), rtol=0.12, err_msg=f"{g} {t}")
    np.testing.assert_array_equal(
        fast["t_over_lambda_sigma"][48:], whole["t_over_lambda_sigma"][48:]
    )
    gauss = with_replicas(LOG_RATIO, targets).kernel(
        block[:48],
        e,
        variance=np.clip(block[:48], 0, None),
        **dict(run, pixel_index=np.arange(48)),
        **kw,
    )
    for g in range(2):
        rows = slice(24 * g, 24 * (g + 1))
        np.testing.assert_allclose(
            np.median(gauss["t_over_lambda_sigma"][rows]),
            np.median(fast["t_over_lambda_sigma"][rows]),
            rtol=0.12,
        )


def test_log_ratio_fast_replicas_do_not_depend_on_blocking():
    """Truth: the seeding rule (each pixel's pilots and window-only replicas from (seed, its
    global index)): the same pixels as one block and as two give identical sigmas."""
    from eelsgpu.kernels.blocks_lowloss import LOG_RATIO

    block, e = _log_ratio_case()
    block = block[:30]
    kw = dict(method="threshold", axis_eV=(float(e[0]), float(e[1] - e[0])))
    decl = with_replicas(LOG_RATIO, ("t_over_lambda",))
    idx = np.arange(30)
    whole = decl.kernel(block, e, n_replicas=12, seed=5, pixel_index=idx, **kw)
    parts = [
        decl.kernel(block[s], e, n_replicas=12, seed=5, pixel_index=idx[s], **kw)
        for s in (slice(0, 11), slice(11, 30))
    ]
    np.testing.assert_array_equal(
        whole["t_over_lambda_sigma"], np.concatenate([p["t_over_lambda_sigma"] for p in parts])
    )
    # every tail option takes the path (the window's counts alone with tail="none")
    for tail in ("none", "power-law", "fourier-log"):
        out = decl.kernel(block, e, n_replicas=12, seed=5, pixel_index=idx, tail=tail, **kw)
        assert np.all(np.isfinite(out["t_over_lambda_sigma"])), tail


def test_log_ratio_far_channels_from_their_sum(monkeypatch):
    """Truth: the window-only replicas that draw every channel to the end one by one (a wide
    near range) against those that draw only a few channels past the ZLP and, where a replica's
    first minimum lies further, the rest from their drawn sum by a multinomial split (Poisson
    channels given their sum) or the conditional Gaussian (a measured variance): the same
    t/lambda and N0 sigmas to 12 % (pixel medians of 40 replicas), whichever way."""
    from eelsgpu.kernels import blocks_replicas
    from eelsgpu.kernels.blocks_lowloss import LOG_RATIO

    block, e = _log_ratio_case()
    block = block[:48]
    kw = dict(method="threshold", axis_eV=(float(e[0]), float(e[1] - e[0])))
    run = dict(n_replicas=40, seed=6, pixel_index=np.arange(48))
    decl = with_replicas(LOG_RATIO, ("t_over_lambda", "zlp_intensity"))
    redone = []
    real = blocks_replicas._full_rows

    def counting(draws, rows, *a, **k):
        redone.append(rows.size)
        return real(draws, rows, *a, **k)

    monkeypatch.setattr(blocks_replicas, "_full_rows", counting)
    for variance in (None, np.clip(block, 0, None)):
        monkeypatch.setattr(blocks_replicas, "LOG_RATIO_NEAR_CHANNELS", 2000)
        wide = decl.kernel(block, e, variance=variance, **run, **kw)
        assert not redone
        monkeypatch.setattr(blocks_replicas, "LOG_RATIO_NEAR_CHANNELS", -1000)
        short = decl.kernel(block, e, variance=variance, **run, **kw)
        assert sum(redone) >= 48 * 30  # (every window-only replica of the block)
        redone.clear()
        for g in range(2):
            rows = slice(24 * g, 24 * (g + 1))
            for t in ("t_over_lambda_sigma", "zlp_intensity_sigma"):
                np.testing.assert_allclose(
                    np.median(short[t][rows]), np.median(wide[t][rows]), rtol=0.12, err_msg=t
                )
