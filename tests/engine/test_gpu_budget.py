"""The GPU path's budgets of issue 13, counted on the CPU with the counting stand-in.

Each job runs the engine's whole GPU path (staging, copies, kernels, results packed and copied
back) with :data:`eelsgpu.engine.counting.xp` standing in for CuPy on ONE synthetic float32 block
of 2048 channels (benchmarks/bench_gpu_budget.py prints the same counts at 4096 spectra, the
call sites behind them and the H100 rate they imply). Truth: the issue's budgets per 4096 x 2048
block -- deconvolve and thickness at most 1,000 array operations (kernel launches on CuPy) and 8
host syncs, Kramers-Kronig 300 and 4 (10 surface iterations: 2,500 and 20), none of them growing
with the block's pixel count, no block-sized float64 array made from float32 input on the
low-loss path, deconvolve at most 0.6 MiB read and written per spectrum. The counts are taken at
1024 spectra and checked not to grow from 256: a count that does not grow is the same at 4096.

Two paths are counted. The budgets hold the **fused** path: what the GPU path runs where the
engine's fused CUDA kernels are used (``kernels/fourier_log.cu``, the roll-off, and
``kernels/tails.cu``, the power-law tails; registered by :mod:`eelsgpu.engine.cuda`): each is ONE
launch that reads its inputs and writes its outputs once, which the stand-in counts by running the
kernel's array-API twin uncounted and charging one operation with those bytes
(:meth:`~eelsgpu.engine.counting.CountingNamespace.eelsgpu_fused`). The **twin** path
(``EELSGPU_NO_FUSED=1``: the array-API twins counted operation by operation) is what a GPU falls
back to when a fused kernel fails to compile or its first-use check against its twin fails; its
counts are reported beside the fused ones (the ``twin`` parameters), over budget where marked.
The fused kernels have run only through the g++ emulations of their CUDA threads
(tests/engine/test_cuda.py, test_cuda_tails.py), where they equal their twins, never on a GPU:
the fused counts are those of kernels nobody has launched on a device yet.

Budgets still missed are ``xfail(strict=True)`` with the measured numbers (the fused ones first,
the twin path's after them).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from eelsgpu.engine import counting

SMALL, LARGE = 256, 1024
N_CHANNELS = 2048


def _low_loss(pixels: int):
    from eelsgpu import synthetic

    nx = 64
    tl = synthetic.thickness_map((pixels // nx, nx), "gradient", (0.3, 1.5))
    return synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0),
        t_over_lambda=tl,
        shape=(pixels // nx, nx),
        n_channels=N_CHANNELS,
        dispersion_eV=0.05,
        noise=True,
        dtype=np.float32,
        chunks=(pixels // nx, nx),
    )["signal"]


def _ssd(pixels: int):
    import eelsgpu

    ds = eelsgpu.deconvolve(
        _low_loss(pixels), zlp="mirror", output="band-limited", device="cpu"
    ).compute()
    return ds.chunk({d: -1 for d in ds.dims})


def _onsets(pixels: int):
    """Band-gap onsets I = 1000 (E - Eg)^1.5 + a ZLP-like tail + 20, Eg 1.5-3 eV, Poisson noise,
    2048 float32 channels of 3 meV from 0.1 eV (benchmarks/bench_gpu_budget.py's onset block)."""
    from eelsgpu.model import spectrum_image

    e = 0.1 + np.arange(N_CHANNELS) * 0.003
    eg = np.linspace(1.5, 3.0, pixels)[:, None]
    lam = 1000 * np.clip(e - eg, 0, None) ** 1.5 + 2e4 * (e / 0.5) ** -2.5 + 20
    y = np.random.default_rng(0).poisson(lam).astype(np.float32)
    nx = 64
    return spectrum_image(y.reshape(pixels // nx, nx, -1), e, chunks=(pixels // nx, nx))


def _jobs():
    import eelsgpu

    return {
        "deconvolve-mirror": (_low_loss, lambda si, d: eelsgpu.deconvolve(si, device=d)),
        "deconvolve-band-limited": (
            _low_loss,
            lambda si, d: eelsgpu.deconvolve(si, output="band-limited", device=d),
        ),
        "thickness-log-ratio": (
            _low_loss,
            lambda si, d: eelsgpu.thickness(si, zlp="threshold", tail="auto", device=d),
        ),
        "thickness-kk": (
            _low_loss,
            lambda si, d: eelsgpu.thickness(si, method="kk", zlp="mirror", metal=True, device=d),
        ),
        "kk-0": (_ssd, lambda s, d: eelsgpu.kramers_kronig(s, metal=True, device=d)),
        "kk-10": (
            _ssd,
            lambda s, d: eelsgpu.kramers_kronig(s, metal=True, iterations=10, device=d),
        ),
        "bandgap": (
            _onsets,
            lambda s, d: eelsgpu.bandgap(s, window_eV=(0.8, 5.0), model="free", device=d),
        ),
    }


_CACHE: dict[tuple[str, int], counting.BlockCounts] = {}
_WARMED: set[str] = set()
WARM_UP = 64  # spectra of the block each job runs once before it is counted


def counts(job: str, pixels: int, path: str = "fused") -> counting.BlockCounts:
    """The counts of the one block of ``pixels`` spectra that job ``job`` runs (cached), after
    two warm-up blocks of the same job: the constants a kernel keeps on the device (the Hilbert
    kernels, the sum rule's weights: :mod:`eelsgpu.kernels._device_cache`) are uploaded once
    per device, not per block, so whichever block came first would otherwise count them.
    ``path``: "fused" (the fused kernels counted as one launch each) or "twin" (their array-API
    twins counted, ``EELSGPU_NO_FUSED=1``)."""
    key = (job, pixels, path)
    if key not in _CACHE:
        make, run = _jobs()[job]
        old = os.environ.pop("EELSGPU_NO_FUSED", None)
        if path == "twin":
            os.environ["EELSGPU_NO_FUSED"] = "1"
        try:
            _CACHE[key] = _count(job, pixels, make, run)
        finally:
            os.environ.pop("EELSGPU_NO_FUSED", None)
            if old is not None:
                os.environ["EELSGPU_NO_FUSED"] = old
    return _CACHE[key]


def _count(job: str, pixels: int, make, run) -> counting.BlockCounts:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if job not in _WARMED:
            # twice: a block runs on one of the engine's device threads, each with its own slot
            # and constants, and which thread takes it depends on what ran before (measured: the
            # band gap's first 1024-spectrum block after test_counting's runs, with one warm-up,
            # uploaded 8 constants instead of 6)
            for _ in range(2):
                run(make(WARM_UP), counting.xp).compute(scheduler="synchronous")
            _WARMED.add(job)
        data = make(pixels)
        with counting.count() as c:
            run(data, counting.xp).compute(scheduler="synchronous")
    (blk,) = [b for b in c.blocks if b.n_pixels == pixels]
    return blk


def _xfail(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


# measured numbers (1024 spectra). Fused path: the budgets; before issue 13's kernel phase
# deconvolve 11,076 ops and 238 syncs, band-limited 11,235 / 238, thickness log-ratio 5,961 / 115,
# kk 10,234 / 253; after its first pass 1,240 / 1,251 / 1,136 / 1,308; after the fused roll-off
# 1,083 / 1,095 / 992 / 1,150; now, with the fused tails: 937 / 949 / 846 / 978, 3 / 3 / 3 / 6 syncs
BUDGETS = [
    pytest.param("deconvolve-mirror", "fused", 1000, 8),
    pytest.param("deconvolve-band-limited", "fused", 1000, 8),
    pytest.param("thickness-log-ratio", "fused", 1000, 8),
    pytest.param("thickness-kk", "fused", 1000, 8),
    pytest.param("kk-0", "fused", 300, 4),  # 275 / 1 (470 ops and 5 syncs before the phase)
    pytest.param("kk-10", "fused", 2500, 20),  # 564 / 3 (904 ops and 7 syncs before)
    # the free model (18 b) with the power-law background (11 r): 2,962 ops with its minimum
    # found continuous in b (Newton steps along the Eg-b valley and the profile check of the
    # errors: what makes Eg's and b's sigmas honest, issue 14; 1,352 before, 6,431 before the
    # bases were stacked), the one sync the copy back
    pytest.param("bandgap", "fused", 3000, 1),
    # the twin path a GPU falls back to (no fused kernel used; KK and band gap have none)
    pytest.param(
        "deconvolve-mirror",
        "twin",
        1000,
        8,
        marks=_xfail(
            "twin path: 1,265 ops and 3 syncs (the roll-off's twin ~190 ops, the tails' ~140 "
            "in place of one launch each)"
        ),
    ),
    pytest.param(
        "deconvolve-band-limited",
        "twin",
        1000,
        8,
        marks=_xfail("twin path: 1,277 ops and 3 syncs"),
    ),
    pytest.param(
        "thickness-log-ratio", "twin", 1000, 8, marks=_xfail("twin path: 1,174 ops and 3 syncs")
    ),
    pytest.param("thickness-kk", "twin", 1000, 8, marks=_xfail("twin path: 1,306 ops, 6 syncs")),
]


@pytest.mark.parametrize(("job", "path", "max_ops", "max_syncs"), BUDGETS)
def test_operations_and_syncs_within_budget(job, path, max_ops, max_syncs):
    """At most ``max_ops`` array operations (kernel launches) and ``max_syncs`` host syncs per
    block (issue 13's budgets), on the GPU path run through the counting stand-in: ``fused``
    with the fused CUDA kernels counted as one launch each (what the budgets hold; those kernels
    have run only through their g++ emulations, never on a GPU), ``twin`` with their array-API
    twins (the fallback)."""
    c = counts(job, LARGE, path)
    assert c.ops <= max_ops and c.syncs <= max_syncs, (c.ops, c.syncs)


GROWTH = [
    pytest.param("deconvolve-mirror"),  # (before issue 13's kernel phase: 5,915 -> 11,076)
    pytest.param("thickness-log-ratio"),  # (4,485 -> 5,961)
    pytest.param("thickness-kk"),  # (5,770 -> 10,234)
    pytest.param("kk-0"),  # (467 -> 469 were its cached constants' uploads, left out now)
    pytest.param("kk-10"),
    pytest.param("bandgap"),
]


@pytest.mark.parametrize("job", GROWTH)
def test_counts_do_not_grow_with_the_pixel_count(job):
    """The same operations and syncs for a block of 256 and of 1024 spectra (so of 4096): no
    loop over rows or data-dependent iteration count on the device."""
    small, large = counts(job, SMALL), counts(job, LARGE)
    # (uploads are left out: the engine keeps the constants it uploads, e.g. the energy axis, per
    # slot, so whether a block carries that one copy depends on what ran before it)
    assert (small.ops - small.h2d_copies, small.syncs) == (
        large.ops - large.h2d_copies,
        large.syncs,
    )


@pytest.mark.parametrize("job", [j for j in _jobs() if j != "bandgap"])
def test_no_block_sized_float64_from_float32_input(job):
    """No float64 array that scales with the block (>= one value per spectrum) is made from the
    float32 input anywhere on the low-loss path (twice the bytes, 1/64 of the FP32 rate on many
    GPUs)."""
    c = counts(job, LARGE)
    assert c.largest_promotion < LARGE, (c.promotions, c.largest_promotion)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(
            "fused",
            marks=_xfail(
                "4.18 MiB read and written per spectrum (before the kernel phase 5.46; 4.28 after "
                "its first pass; 4.19 with the fused roll-off): the ZLP stage ~2.0 (centre and "
                "its plausibility, models, checks, channel variance), the Fourier-log around the "
                "fused roll-off ~1.7 (transforms, the misfit's transform, the raw SSD's metrics, "
                "the adaptive weight), the maps ~0.2"
            ),
        ),
        pytest.param("twin", marks=_xfail("twin path: 6.21 MiB per spectrum")),
    ],
)
def test_deconvolve_memory_traffic_per_spectrum(path):
    """Deconvolve reads and writes at most 0.6 MiB per spectrum (operands + results of every
    operation): about 3x the 2048-channel input's FFT traffic, what a fused pass needs."""
    c = counts("deconvolve-mirror", LARGE, path)
    assert c.bytes / LARGE <= 0.6 * 2**20, c.bytes / LARGE / 2**20


def test_measured_peaks_cover_the_kernels():
    """The per-kernel peak device bytes per spectrum the engine sizes its passes with and bounds
    the blocks in flight on a GPU by (the declaration's hint, else the engine's table) are at
    least what the kernels hold at 1024 spectra, and at most twice it."""
    from eelsgpu.engine.blocks import peak_bytes_per_spectrum
    from eelsgpu.kernels.blocks_kk import kk_declaration
    from eelsgpu.kernels.blocks_lowloss import DECONVOLVE, KK_THICKNESS, LOG_RATIO

    for job, decl in [
        ("deconvolve-mirror", DECONVOLVE),
        ("thickness-log-ratio", LOG_RATIO),
        ("thickness-kk", KK_THICKNESS),
        ("kk-10", kk_declaration(np.zeros(4))),
    ]:
        c = counts(job, LARGE)
        engine = peak_bytes_per_spectrum(decl, N_CHANNELS)
        assert c.peak_bytes / LARGE <= engine, (job, c.peak_bytes / LARGE)
        assert c.peak_bytes / LARGE >= 0.5 * engine, job
    from eelsgpu.engine.blocks import MEASURED_PEAK_BYTES

    c = counts("bandgap", LARGE)
    assert c.peak_bytes / LARGE <= MEASURED_PEAK_BYTES["bandgap"], c.peak_bytes / LARGE
    assert c.peak_bytes / LARGE >= 0.5 * MEASURED_PEAK_BYTES["bandgap"]


def test_bandgap_memory_traffic_per_spectrum():
    """Band gap (free model, power-law background, 0.8-5 eV window: 1400 channels, 18 b x 11 r x
    300 Eg candidates per spectrum) reads and writes at most 34 MiB per spectrum (measured 33.3
    with the free model's continuous-b refinement, issue 14; 20.6 before it; 36.2 before the
    bases were stacked and the projection orthogonalised) and keeps ONE
    block-sized float64 array from the float32
    input, the fit window: its chi^2 profile is a difference of large sums (chi^2 of the
    background alone minus the onset's <f, y>^2 / <f, f>, after projecting the onset column off
    the background's: a difference that cancels where the two are alike), measured in float32
    to move Eg by up to 1.3 sigma and to flip a pixel's validity on these onsets (direct model)."""
    c = counts("bandgap", LARGE)
    assert c.bytes / LARGE <= 34 * 2**20, c.bytes / LARGE / 2**20
    assert c.promotions == 1, c.promotions
