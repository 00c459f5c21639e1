"""Engine throughput: thickness and Kramers-Kronig pipelines over a zarr cube, on every scheduler.

In one run, over the same zarr cube (default 128 x 128 x 2048 float32, ``--size`` to change):

* eelsgpu on dask threads and on a dask.distributed LocalCluster of worker processes, each
  pipeline streamed from the input store into a result store (:func:`engine.run_to_store`);
* the limits: a bare batched FFT of the same data (scipy.fft rfft + irfft, float32, all cores,
  cube in memory) and a bare read of the store (decompression, dask threads);
* exspy 0.3 on the same cube (estimate_thickness; fourier_log_deconvolution then
  kramers_kronig_analysis), which holds the whole cube in memory: only when the cube is small
  (<= 256 x 256) unless ``--exspy`` forces it (then run it under the shared lock);
* the GPU path (device="gpu") where a GPU is usable; otherwise it says the GPU was not measured.

Each variant runs in its own process under ``/usr/bin/time -v``, so peak RSS is measured from
outside. Prints spectra/s, GB/s (of float32 input), peak RSS and the ratios.

    python benchmarks/bench_engine.py                 # 128 x 128 x 2048, about a minute
    flock /tmp/eelsgpu-bench.lock python benchmarks/bench_engine.py --size 512
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_memory  # noqa: E402  (the cube generator, shared)

N_E = bench_memory.N_E
THRESHOLD_EV = (
    1.5  # ZLP / inelastic split for exspy's log-ratio: the synthetic ZLP's sigma is 0.4 eV
)


def _open(cube: Path):
    from eelsgpu import engine
    from eelsgpu.io import open_store

    return engine.align_tasks(open_store(cube)["signal"], min_tasks=2 * (os.cpu_count() or 1))


def _pipeline(name: str, si, device: str):
    from eelsgpu import batch

    if name == "thickness":
        return batch.get_pipeline("thickness")(si, device=device)
    return batch.kk_pipeline(si, device=device, refractive_index=2.0)


def _warm_up(kind: str, si, device: str, scheduler) -> None:
    """Run the pipeline once on a corner of the cube, so that imports and first calls in every
    worker are not timed (exspy's imports are not timed either)."""
    import dask

    corner = si.isel(y=slice(0, 16), x=slice(0, 16))
    if scheduler == "threads":
        dask.compute(_pipeline(kind, corner, device), scheduler="threads")
    else:
        scheduler.run(lambda: __import__("eelsgpu.batch"))
        for _ in range(2):  # two tasks, one per worker most likely
            scheduler.compute(_pipeline(kind, corner, device)).result()


def variant(name: str, cube: Path, out: Path) -> dict:
    """Run one variant in this process; return seconds and spectra."""
    from eelsgpu import engine

    kind, _, where = name.partition("-")
    if kind == "fft":
        import scipy.fft

        si = _open(cube)
        data = np.ascontiguousarray(si.values.reshape(-1, N_E), dtype=np.float32)
        t0 = time.perf_counter()
        f = scipy.fft.rfft(data, axis=-1, workers=-1)
        scipy.fft.irfft(f, n=N_E, axis=-1, workers=-1)
        return {"seconds": time.perf_counter() - t0, "spectra": data.shape[0]}
    if kind == "read":
        import dask

        si = _open(cube)
        t0 = time.perf_counter()
        dask.compute(si.data.sum(axis=-1), scheduler="threads")
        return {"seconds": time.perf_counter() - t0, "spectra": int(np.prod(si.shape[:-1]))}
    if kind == "exspy":
        return _exspy(where, cube)
    si = _open(cube)
    device = "gpu" if where == "gpu" else "cpu"
    if where == "processes":
        from distributed import Client, LocalCluster

        with (
            LocalCluster(
                n_workers=os.cpu_count() or 2,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            ) as cluster,
            Client(cluster) as client,
        ):
            client.wait_for_workers(os.cpu_count() or 2)
            _warm_up(kind, si, device, client)
            t0 = time.perf_counter()
            res = engine.run_to_store(_pipeline(kind, si, device), out, scheduler=client)
    else:
        _warm_up(kind, si, device, "threads")
        t0 = time.perf_counter()
        res = engine.run_to_store(_pipeline(kind, si, device), out, scheduler="threads")
    return {"seconds": time.perf_counter() - t0, "spectra": res.spectra, "blocks": res.blocks_total}


def _exspy(job: str, cube: Path) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    import exspy

    si = _open(cube)
    t0 = time.perf_counter()
    data = si.values  # exspy holds the cube in memory
    s = exspy.signals.EELSSpectrum(data)
    ax = s.axes_manager.signal_axes[0]
    ax.offset, ax.scale, ax.units = float(si["energy"][0]), float(si.attrs["dispersion_eV"]), "eV"
    s.set_microscope_parameters(beam_energy=200.0, collection_angle=10.0, convergence_angle=1.0)
    if job == "thickness":
        s.estimate_thickness(threshold=THRESHOLD_EV)
    else:
        zlp = s.deepcopy()
        energy = si["energy"].values
        zlp.data[..., energy > THRESHOLD_EV] = 0
        ssd = s.fourier_log_deconvolution(zlp)
        ssd.kramers_kronig_analysis(zlp=zlp, iterations=1, n=2.0)
    return {"seconds": time.perf_counter() - t0, "spectra": int(np.prod(si.shape[:-1]))}


def _rss_mb(stderr: str) -> float:
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    return int(m.group(1)) / 1024 if m else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=128, help="pixels per side (default 128)")
    ap.add_argument("--exspy", action="store_true", help="run exspy even on a large cube")
    ap.add_argument("--only", help="comma-separated variants to run")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--cube", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(variant(args.variant, Path(args.cube), Path(args.out))))
        return

    from eelsgpu.engine.device import gpu_status

    gpu = gpu_status()
    names = ["read", "fft"]
    for p in ("thickness", "kk"):
        names += [f"{p}-threads", f"{p}-processes"]
        if gpu.usable:
            names.append(f"{p}-gpu")
        if args.size <= 256 or args.exspy:
            names.append(f"exspy-{p}")
    if args.only:
        names = [n for n in names if n in args.only.split(",")]

    work = Path(tempfile.mkdtemp(prefix="eelsgpu-bench-engine-"))
    cube = work / "cube.zarr"
    os.environ["BENCH_SIZE"] = str(args.size)
    gb = args.size**2 * N_E * 4 / 1e9
    print(
        f"cube {args.size} x {args.size} x {N_E} float32 ({gb:.2f} GB) in zarr (lz4), "
        f"{os.cpu_count()} cores"
    )
    results: dict[str, dict] = {}
    try:
        bench_memory.generate(cube, args.size)
        for name in names:
            out = work / f"{name}.zarr"
            cmd = [
                "/usr/bin/time",
                "-v",
                sys.executable,
                __file__,
                "--variant",
                name,
                "--cube",
                str(cube),
                "--out",
                str(out),
            ]
            p = subprocess.run(cmd, capture_output=True, text=True)
            rss = _rss_mb(p.stderr)
            if p.returncode != 0:
                tail = [ln for ln in p.stderr.splitlines() if ln.strip() and "\t" not in ln][-2:]
                print(f"{name:20s} FAILED (rc {p.returncode}): {' | '.join(tail)}")
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r["rate"] = r["spectra"] / r["seconds"]
            r["rss"] = rss
            results[name] = r
            print(
                f"{name:20s} {r['seconds']:8.2f} s {r['rate']:11.0f} spectra/s "
                f"{r['rate'] * N_E * 4 / 1e9:6.2f} GB/s  peak RSS {rss:6.0f} MB",
                flush=True,
            )
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("\nratios (throughput):")
    for p in ("thickness", "kk"):
        for where in ("threads", "processes", "gpu"):
            r = results.get(f"{p}-{where}")
            if not r:
                continue
            parts = []
            if f"exspy-{p}" in results:
                parts.append(f"{r['rate'] / results[f'exspy-{p}']['rate']:.1f}x exspy")
            if "fft" in results:
                parts.append(f"{r['rate'] / results['fft']['rate']:.2f} of the bare FFT")
            if "read" in results:
                parts.append(f"{r['rate'] / results['read']['rate']:.2f} of the bare read")
            print(f"  {p}-{where:10s} " + ", ".join(parts))
    if not gpu.usable:
        print(f"\nGPU: not measured ({gpu.reason}).")


if __name__ == "__main__":
    main()
