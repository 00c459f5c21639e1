"""What the GPU path would cost on an H100, counted on a CPU with the counting stand-in.

Every job runs the engine's GPU code path (block staging, the copies, the kernels, the results
packed on the device and copied back) with :data:`eelsgpu.engine.counting.xp` (array-api-strict,
counted) standing in for CuPy, on a synthetic float32 block of ``pixels`` x 2048 channels (ONE
block: the image is a single dask chunk). Nothing here runs on a GPU. Printed per job:

* array operations (each at least one kernel launch on CuPy), host synchronisations, float64
  arrays made from float32 input (count and the largest, in elements per spectrum), MiB read and
  written per spectrum (operands + results of every operation), the peak device bytes per
  spectrum (what a declaration's ``peak_bytes_per_spectrum``, else the engine's
  :data:`~eelsgpu.engine.blocks.MEASURED_PEAK_BYTES`, must cover);
* whether the counts grow with the block's pixel count (the same job at ``--small`` pixels);
* the H100 throughput they imply, from three limits per block of N spectra:
  launch-bound ``t_launch = (ops + syncs) x 10 us`` (each operation costs about 10 us of launch
  and driver time; after a host sync the GPU idles for about one more launch before work
  arrives again), memory-bound ``t_hbm = bytes / 3.35 TB/s``, and the bus
  ``t_pcie = (input + output bytes) / 50 GB/s`` (pinned, PCIe Gen5 x16). With two streams
  copies overlap compute, so the implied rate is ``N / max(t_launch, t_hbm, t_pcie)``; the PCIe
  limit alone is ``N / t_pcie``.
* the top call sites (file:line and function) of operations and syncs at the larger size.

Run::

    python benchmarks/bench_gpu_budget.py [--pixels 4096] [--small 1024] [--jobs deconvolve-mirror,...]
        [--json out.json]

The budgets of issue 13 (tests/engine/test_gpu_budget.py holds them): deconvolve and thickness
<= 1,000 operations and 8 syncs per block; KK <= 300 and 4 (10 surface iterations: 2,500 and
20); none growing with the pixel count; no block-sized float64 from float32 input on the low-loss
path; deconvolve <= 0.6 MiB read and written per spectrum.

Every job is counted on two paths: **fused** (the budgets' path: the fused CUDA kernels
``kernels/fourier_log.cu``, the Fourier-log roll-off, and ``kernels/tails.cu``, the power-law
tails, each counted as ONE launch that reads its inputs and writes its outputs once -- their
array-API twins run uncounted underneath, through
:meth:`~eelsgpu.engine.counting.CountingNamespace.eelsgpu_fused`) and **twin** (after the slash:
``EELSGPU_NO_FUSED=1``, the twins counted operation by operation: what a GPU runs when a fused
kernel fails to compile or its first-use check). ``--no-twin`` counts the fused path only. The
fused kernels have run only through g++ emulations of their CUDA threads (the tests), never on a
GPU. ``--sites`` adds the operations and bytes per file (the stages) and the top call sites.

Measured on the 2-core development machine (4096 x 2048 block; the ops history: before issue
13's kernel phase -> its first pass (host axis numbers passed in, no row tiling or
data-dependent slabs on a device, the tails by a batched Newton solve, the fused roll-off) ->
its second (the small per-pixel steps batched) -> now (the tails as one fused kernel, the fit's
ok-decision inside it), fused / twin path):

=========================  ================================  ======  =============  ==========
job                        ops                               syncs   MiB/sp         peak kB/sp
=========================  ================================  ======  =============  ==========
deconvolve-mirror          32,052 -> 1,240 -> 1,083 -> 937   718->3  4.18 / 6.21    295
                           (twin 1,265)
deconvolve-band-limited    32,691 -> 1,251 -> 1,094 -> 949   718->3  4.26 / 6.30    295
                           (twin 1,277)
thickness-log-ratio        11,633 -> 1,136 -> 991 -> 846     235->3  3.81 / 5.84    305
                           (twin 1,174)
thickness-kk               28,462 -> 1,308 -> 1,149 -> 978   757->6  4.30 / 6.33    295
                           (twin 1,306)
kk-0 / kk-10               469 / 904 -> 275 / 564 (no fused  5/7 ->  0.87 / 4.06    92 / 246
                           kernel: both paths the same)      1/3
bandgap                    6,433 -> 1,352                    1       20.1           430
=========================  ================================  ======  =============  ==========

Every ops budget is met on the fused path, none grows with the block; on the twin path the
low-loss jobs are 1,174-1,306 (the roll-off's twin ~190 operations and the tails' ~140 where
the fused path has one launch each). Deconvolve's bytes per spectrum (budget 0.6 MiB), fused
path, per stage: the ZLP stage (``zlp.py``: centre and its plausibility, models, checks, channel
variance) 1.98, the Fourier-log around the fused roll-off (``fourier_log.py``: the transforms,
the misfit's transform, the raw SSD's metrics, the adaptive weight, the window) 1.74, the maps
(``log_ratio.py``) 0.15, the two fused kernels together 0.07, the tails' sums 0.06, the rest
0.18: a fused ZLP stage and a fused Fourier-log pass around the transforms would be needed for
0.6. Implied H100 rates (fused path): deconvolve about 440,000 spectra/s per stream (launch-
bound), thickness 420,000-480,000, KK 1.5 million (its copy back bounds it at 2.1 million).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

N_CHANNELS = 2048
LAUNCH_S = 10e-6
HBM_BPS = 3.35e12
PCIE_BPS = 50e9
MiB = 2.0**20


def low_loss_block(pixels: int, seed: int = 0):
    """A noisy Al-like Drude image of ``pixels`` spectra x 2048 channels (0.05 eV from -5 eV),
    t/lambda 0.3-1.5 across it, as ONE dask chunk (so one block)."""
    from eelsgpu import synthetic

    nx = 64 if pixels >= 64 else pixels
    ny = pixels // nx
    tl = synthetic.thickness_map((ny, nx), "gradient", (0.3, 1.5))
    return synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0),
        t_over_lambda=tl,
        shape=(ny, nx),
        n_channels=N_CHANNELS,
        dispersion_eV=0.05,
        noise=True,
        seed=seed,
        dtype=np.float32,
        chunks=(ny, nx),
    )["signal"]


def onset_block(pixels: int, seed: int = 0):
    """Band-gap onsets I = 1000 (E - Eg)^1.5 + a ZLP-like tail, Poisson noise, 2048 channels."""
    from eelsgpu.model import spectrum_image

    e = 0.1 + np.arange(N_CHANNELS) * 0.003
    eg = np.linspace(1.5, 3.0, pixels)[:, None]
    lam = 1000 * np.clip(e - eg, 0, None) ** 1.5 + 2e4 * (e / 0.5) ** -2.5 + 20
    y = np.random.default_rng(seed).poisson(lam).astype(np.float32)
    nx = 64 if pixels >= 64 else pixels
    return spectrum_image(y.reshape(pixels // nx, nx, -1), e, chunks=(pixels // nx, nx))


def _ssd_block(pixels: int):
    """The band-limited deconvolution of :func:`low_loss_block` (computed on the CPU, outside the
    counts), as one block: what kramers_kronig takes."""
    import eelsgpu

    si = low_loss_block(pixels)
    ds = eelsgpu.deconvolve(si, zlp="mirror", output="band-limited", device="cpu").compute()
    return ds.chunk({d: -1 for d in ds.dims})


def jobs() -> dict[str, tuple[Callable[[int], Any], Callable[[Any, Any], Any]]]:
    """name -> (input maker(pixels), run(input, device) -> lazy Dataset)."""
    import eelsgpu

    return {
        "deconvolve-mirror": (
            low_loss_block,
            lambda si, dev: eelsgpu.deconvolve(si, zlp="mirror", device=dev),
        ),
        "deconvolve-band-limited": (
            low_loss_block,
            lambda si, dev: eelsgpu.deconvolve(si, zlp="mirror", output="band-limited", device=dev),
        ),
        "thickness-log-ratio": (
            low_loss_block,
            lambda si, dev: eelsgpu.thickness(si, zlp="threshold", tail="auto", device=dev),
        ),
        "thickness-kk": (
            low_loss_block,
            lambda si, dev: eelsgpu.thickness(
                si, method="kk", zlp="mirror", metal=True, device=dev
            ),
        ),
        "kk-0": (_ssd_block, lambda ssd, dev: eelsgpu.kramers_kronig(ssd, metal=True, device=dev)),
        "kk-10": (
            _ssd_block,
            lambda ssd, dev: eelsgpu.kramers_kronig(ssd, metal=True, iterations=10, device=dev),
        ),
        "bandgap": (
            onset_block,
            lambda si, dev: eelsgpu.bandgap(si, window_eV=(0.8, 5.0), model="free", device=dev),
        ),
    }


def xp_standin() -> Any:
    from eelsgpu.engine import counting

    return counting.xp


def _by_file(per_site: Any, scale: float) -> dict[str, float]:
    """A per-site count summed per file (the stages: zlp.py, fourier_log.py, tails.py...),
    divided by ``scale``, largest first."""
    agg: dict[str, float] = {}
    for site, k in per_site.items():
        agg[site.file] = agg.get(site.file, 0.0) + k / scale
    return dict(sorted(agg.items(), key=lambda kv: -kv[1]))


def measure(name: str, pixels: int, path: str = "fused") -> dict[str, Any]:
    """Run job ``name`` on a ``pixels``-spectrum block through the counting stand-in, on the
    ``path`` "fused" (the fused CUDA kernels counted as one launch each) or "twin" (their
    array-API twins counted, ``EELSGPU_NO_FUSED=1``: what a GPU falls back to)."""
    old = os.environ.pop("EELSGPU_NO_FUSED", None)
    if path == "twin":
        os.environ["EELSGPU_NO_FUSED"] = "1"
    try:
        return _measure(name, pixels, path)
    finally:
        os.environ.pop("EELSGPU_NO_FUSED", None)
        if old is not None:
            os.environ["EELSGPU_NO_FUSED"] = old


def _measure(name: str, pixels: int, path: str) -> dict[str, Any]:
    from eelsgpu.engine import counting

    make, run = jobs()[name]
    data = make(pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # one warm-up block first: the constants kernels keep on the device (Hilbert kernels,
        # sum-rule weights) are uploaded once per device, not per block
        run(make(64), xp_standin()).compute(scheduler="synchronous")
        t0 = time.perf_counter()
        with counting.count() as c:
            ds = run(data, counting.xp).compute(scheduler="synchronous")
        wall = time.perf_counter() - t0
    blocks = [b for b in c.blocks if b.n_pixels == pixels]
    if len(blocks) != 1:
        raise RuntimeError(f"{name}: expected one block of {pixels} spectra, got {c.blocks}")
    b = blocks[0]
    out_cols = sum(
        int(np.prod(ds[v].shape)) // max(1, pixels) for v in ds.data_vars if ds[v].ndim >= 1
    )
    h2d_per_spectrum = b.h2d_bytes / pixels  # the block, extras and constants copied in
    out_per_spectrum = out_cols * 4
    t_launch = (b.ops + b.syncs) * LAUNCH_S
    t_hbm = b.bytes / HBM_BPS
    t_pcie = pixels * (h2d_per_spectrum + out_per_spectrum) / PCIE_BPS
    return {
        "job": name,
        "path": path,
        "pixels": pixels,
        "ops": b.ops,
        "syncs": b.syncs,
        "h2d_copies": b.h2d_copies,
        "promotions": b.promotions,
        "largest_promotion_per_spectrum": b.largest_promotion / pixels,
        "promoted_MiB_per_spectrum": b.promoted_bytes / pixels / MiB,
        "MiB_per_spectrum": b.bytes / pixels / MiB,
        "h2d_bytes_per_spectrum": h2d_per_spectrum,
        "out_bytes_per_spectrum": out_per_spectrum,
        "peak_bytes_per_spectrum": b.peak_bytes / pixels,
        "t_launch_s": t_launch,
        "t_hbm_s": t_hbm,
        "t_pcie_s": t_pcie,
        "implied_spectra_per_s": pixels / max(t_launch, t_hbm, t_pcie),
        "pcie_limit_spectra_per_s": pixels / t_pcie,
        "cpu_wall_s": wall,
        "top_ops": [(str(s), k) for s, k in c.top("ops", 8)],
        "top_syncs": [(str(s), k) for s, k in c.top("syncs", 8)],
        "top_promotions": [(str(s), k) for s, k in c.top("promotions", 4)],
        "top_functions": c.by_function("ops", 6),
        "MiB_per_spectrum_by_file": _by_file(c.site_bytes, pixels * MiB),
        "ops_by_file": _by_file(c.site_ops, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pixels", type=int, default=4096)
    ap.add_argument("--small", type=int, default=1024)
    ap.add_argument("--jobs", default=",".join(jobs()))
    ap.add_argument("--json", default=None)
    ap.add_argument("--sites", action="store_true", help="print the top call sites of each job")
    ap.add_argument(
        "--no-twin", action="store_true", help="count the fused path only (not the twins' too)"
    )
    a = ap.parse_args(argv)
    names = [n for n in a.jobs.split(",") if n]
    rows = []
    for name in names:
        big = measure(name, a.pixels)
        big["twin"] = None if a.no_twin else measure(name, a.pixels, "twin")
        small = measure(name, a.small) if a.small else None
        # (uploads left out: the engine keeps what it uploads, e.g. the energy axis, so whether a
        # block carries that one copy depends on what ran before it)
        big["grows"] = {
            k: (small[k], big[k])
            for k in ("ops", "syncs")
            if small
            and small[k] - (k == "ops") * small["h2d_copies"]
            != big[k] - (k == "ops") * big["h2d_copies"]
        }
        rows.append(big)
        print(f"# {name}: {a.pixels} spectra counted in {big['cpu_wall_s']:.1f} s", file=sys.stderr)
    print(
        f"GPU path through the counting stand-in (array-api-strict; nothing ran on a GPU), one "
        f"block of {a.pixels} x {N_CHANNELS} float32; each job on the fused path (the fused CUDA "
        "kernels as one launch each: what the budgets hold) and, after the slash, the twin path "
        "(their array-API twins: the fallback)"
    )
    print(
        f"{'job':<26}{'ops':>12}{'syncs':>7}{'f64':>5}{'MiB/sp':>14}{'peak KiB/sp':>12}"
        f"{'H100 sp/s':>19}{'PCIe sp/s':>11}  grows with pixels ({a.small} -> {a.pixels})"
    )

    def both(r: dict[str, Any], key: str, fmt: str) -> str:
        t = r["twin"]
        return format(r[key], fmt) + ("" if t is None else " / " + format(t[key], fmt))

    for r in rows:
        grows = ", ".join(f"{k} {s}->{b}" for k, (s, b) in r["grows"].items()) or "no"
        print(
            f"{r['job']:<26}{both(r, 'ops', 'd'):>12}{r['syncs']:>7}{r['promotions']:>5}"
            f" {both(r, 'MiB_per_spectrum', '.2f'):>13}"
            f"{r['peak_bytes_per_spectrum'] / 1024:>12.1f}"
            f" {both(r, 'implied_spectra_per_s', '.3g'):>18}"
            f"{r['pcie_limit_spectra_per_s']:>11.3g}  {grows}"
        )
    print(
        "H100 sp/s = N / max((ops + syncs) x 10 us, bytes / 3.35 TB/s, (in + out bytes) / 50 GB/s)"
        " per block of N spectra; PCIe sp/s = N / ((in + out bytes) / 50 GB/s). The fused "
        "kernels (kernels/fourier_log.cu, kernels/tails.cu) have run only through g++ emulations "
        "of their CUDA threads, never on a GPU."
    )
    print("\nmeasured peaks (bytes per spectrum at 2048 float32 channels):")
    print({r["job"]: int(r["peak_bytes_per_spectrum"]) for r in rows})
    if a.sites:
        for r in rows:
            print(f"\n{r['job']}: per file (stage), fused path: ops, MiB read+written / spectrum")
            for f, mib in r["MiB_per_spectrum_by_file"].items():
                print(f"  {r['ops_by_file'].get(f, 0):>7.0f} {mib:>7.3f}  {f}")
            print(f"{r['job']}: top call sites")
            for what in ("top_ops", "top_syncs", "top_promotions"):
                for site, k in r[what]:
                    print(f"  {what[4:]:<11}{k:>7}  {site}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
