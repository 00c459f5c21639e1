"""Peak memory of streaming pipelines on an 8 GiB cube: set by block size and workers, not cube size.

Makes a 1024 x 1024 x 2048 float32 spectrum image (8 GiB) in a zarr store block by block (never
whole in memory), then runs the thickness pipeline and the deconvolve -> Kramers-Kronig pipeline
from that store into result stores with :func:`eelsgpu.engine.run_to_store` on the threaded
scheduler. Each phase runs in its own process under ``/usr/bin/time -v`` so that its peak RSS is
measured from outside; the cube is deleted at the end.

It is big (8 GiB on disk, minutes): run it under the shared lock::

    flock /tmp/eelsgpu-bench.lock python benchmarks/bench_memory.py [--size 1024] [--keep]

When ``eelsgpu.thickness`` does not exist yet, a stand-in with the same work per spectrum (rfft,
log of the modulus, irfft, ZLP window sum and a log ratio) takes its place, and the script says so.
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

N_E = 2048
DISPERSION = 0.05
OFFSET = -5.0


def _energy() -> np.ndarray:
    return OFFSET + DISPERSION * np.arange(N_E)


def _block(block_info=None):
    """Cheap, plausible content: a ZLP and a plasmon, scaled and broadened per pixel."""
    info = block_info[None]
    (y0, y1), (x0, x1), _ = info["array-location"]
    y = np.arange(y0, y1, dtype=np.float32)[:, None, None]
    x = np.arange(x0, x1, dtype=np.float32)[None, :, None]
    e = _energy().astype(np.float32)[None, None, :]
    t = 0.2 + 1.5 * (x / 1024.0) + 0.3 * (y / 1024.0)  # t/lambda across the image
    zlp = np.exp(-0.5 * (e / 0.4) ** 2)
    plasmon = t * 0.05 / (1.0 + ((e - 15.0) / 2.5) ** 2) * (e > 2.0)
    return (1e4 * (zlp + plasmon) + 1.0).astype(np.float32)


def generate(path: Path, size: int) -> None:
    import dask.array as da

    from eelsgpu.io import write_store
    from eelsgpu.model import spectrum_image

    chunks = ((64,) * (size // 64), (64,) * (size // 64), (N_E,))
    cube = da.map_blocks(
        _block, chunks=chunks, dtype=np.float32, meta=np.empty((0, 0, 0), np.float32)
    )
    si = spectrum_image(
        cube,
        _energy(),
        beam_energy_keV=200.0,
        collection_angle_mrad=10.0,
        convergence_angle_mrad=1.0,
        chunks=(64, 64),
    )
    write_store(si, path, progress=False)


def _standin_thickness(si, device="auto"):
    from array_api_compat import array_namespace

    from eelsgpu.engine import BlockKernel, Output, apply_kernel

    def kernel(block, energy_eV):
        xp = array_namespace(block)
        inside = xp.astype((energy_eV > -1.0) & (energy_eV < 1.0), block.dtype)
        n0 = xp.sum(block * inside, axis=-1)
        total = xp.sum(block, axis=-1)
        f = xp.fft.rfft(block, axis=-1)
        ssd = xp.fft.irfft(xp.astype(xp.log(xp.abs(f) + 1e-6), f.dtype) * f, n=block.shape[-1])
        return {"t_over_lambda": xp.log(total / n0), "ssd_max": xp.max(ssd, axis=-1)}

    return apply_kernel(
        BlockKernel(kernel, [Output("t_over_lambda"), Output("ssd_max")]), si, device=device
    )


def _thickness(si):
    import eelsgpu

    try:
        thickness = eelsgpu.thickness  # the public name, wherever the function lives
    except AttributeError:
        return _standin_thickness(si, device="cpu"), "stand-in (rfft, log, irfft, log-ratio)"
    return thickness(si, device="cpu"), "eelsgpu.thickness (log-ratio)"


def _kk(si):
    import eelsgpu

    ssd = eelsgpu.deconvolve(si, device="cpu")
    kk = eelsgpu.kramers_kronig(ssd, refractive_index=2.0, device="cpu")
    return kk, "deconvolve -> kramers_kronig"


def run_phase(phase: str, path: Path, out: Path) -> dict:
    from eelsgpu import engine
    from eelsgpu.io import open_store

    if phase == "generate":
        t0 = time.perf_counter()
        generate(path, int(os.environ["BENCH_SIZE"]))
        return {"seconds": time.perf_counter() - t0}
    si = open_store(path)["signal"]
    si = engine.align_tasks(si)
    ds, what = _thickness(si) if phase == "thickness" else _kk(si)
    t0 = time.perf_counter()
    limit = float(os.environ.get("BENCH_MAX_SECONDS", "0"))
    if limit:
        # stop a long phase after `limit` s: memory is in its steady state long before, and the
        # run is resumable; report the blocks done so far
        import threading

        def stop() -> None:
            done = out.with_name(f".{out.name}.eelsgpu-run") / "done"
            n = len(os.listdir(done)) if done.is_dir() else 0
            dt = time.perf_counter() - t0
            n_spec = sum(int((done / f).read_text() or 0) for f in os.listdir(done)) if n else 0
            print(
                json.dumps(
                    {
                        "what": what,
                        "seconds": dt,
                        "blocks": f"{n} done (stopped)",
                        "spectra_per_s": n_spec / dt,
                    }
                ),
                flush=True,
            )
            os._exit(0)

        threading.Timer(limit, stop).start()
    res = engine.run_to_store(ds, out, scheduler="threads", quiet=True, overwrite=True)
    dt = time.perf_counter() - t0
    return {
        "what": what,
        "seconds": dt,
        "blocks": res.blocks_total,
        "spectra_per_s": res.spectra / dt,
    }


def _rss_mb(stderr: str) -> float:
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    return int(m.group(1)) / 1024 if m else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1024, help="pixels per side (default 1024: 8 GiB)")
    ap.add_argument("--dir", default=None, help="where to put the cube (default: a temp folder)")
    ap.add_argument("--phases", default="generate,thickness,kk")
    ap.add_argument("--keep", action="store_true", help="keep the cube")
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=0,
        help="stop each pipeline phase after this long (reports blocks done)",
    )
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:  # child process: one phase, result as JSON on the last line
        print(json.dumps(run_phase(args.phase, Path(args.path), Path(args.out or "x"))))
        return

    work = Path(args.dir or tempfile.mkdtemp(prefix="eelsgpu-bench-mem-"))
    cube = work / "cube.zarr"
    gib = args.size * args.size * N_E * 4 / 2**30
    print(f"cube {args.size} x {args.size} x {N_E} float32 = {gib:.1f} GiB at {cube}")
    print(
        f"machine: {os.cpu_count()} cores; scheduler: dask threads; blocks 64 x 64 x 2048 (32 MiB)"
    )
    env = dict(os.environ, BENCH_SIZE=str(args.size), BENCH_MAX_SECONDS=str(args.max_seconds))
    try:
        for phase in args.phases.split(","):
            out = work / f"{phase}.zarr"
            cmd = [
                "/usr/bin/time",
                "-v",
                sys.executable,
                __file__,
                "--phase",
                phase,
                "--path",
                str(cube),
                "--out",
                str(out),
            ]
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            rss = _rss_mb(p.stderr)
            if p.returncode != 0:
                last = [ln for ln in p.stderr.splitlines() if ln.strip() and "\t" not in ln][-3:]
                print(
                    f"{phase:10s} FAILED (rc {p.returncode}, peak RSS {rss:.0f} MB): {' | '.join(last)}"
                )
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            line = f"{phase:10s} peak RSS {rss:7.0f} MB  {r['seconds']:7.1f} s"
            if "spectra_per_s" in r:
                line += (
                    f"  {r['spectra_per_s']:9.0f} spectra/s  "
                    f"{r['spectra_per_s'] * N_E * 4 / 1e9:5.2f} GB/s  "
                    f"{r['blocks']} blocks  [{r['what']}]"
                )
            print(line, flush=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            print(f"removed {work}")


if __name__ == "__main__":
    main()
