"""Kramers-Kronig analysis (no surface iterations) of a 256 x 256 x 2048 SSD cube: eelsgpu vs exspy
vs the bare batched FFTs it needs.

Issue 4's targets: at least 8x exspy's speed on the same cube in the same run, within a factor 3
of the time of the bare batched FFTs the analysis needs, and memory bounded (set by the block
size, not the cube size).

Each part runs in its own process under ``/usr/bin/time -v`` (peak RSS measured from outside):

* ``fft``: the bare batched FFTs of the analysis, on the cube in memory: one real forward and one
  real inverse transform of length ``fast_length(2K - 1)`` (K = 1948 loss channels) per
  spectrum, float32, scipy.fft with all cores;
* ``ours``: :func:`eelsgpu.kramers_kronig` zarr -> zarr, metal normalisation, writing what exspy
  returns (eps1, eps2 and the thickness map); ``ours-all`` writes every
  output (8 cubes and 11 maps);
* ``copy``: the I/O floor, the SSD read and two cubes of eps's size written, no computation;
* ``ours-memory``: the same as ``ours`` on the cube in memory, results to memory (the compute
  without zarr decompression and compression);
* ``exspy``: ``EELSSpectrum.kramers_kronig_analysis(zlp=N0, n=1000, full_output=True)``, one
  iteration, on the same SSD (its positive-loss part: exspy divides by E and fails on a channel at
  0 eV) in memory.

It is big (0.5 GiB on disk; exspy needs about 11 GiB of RAM at 256): run it under the lock::

    flock /tmp/eelsgpu-bench.lock python benchmarks/bench_kk.py [--size 256] [--no-exspy]
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
from _imports import import_ours

N_E = 2048
DISPERSION = 0.05
OFFSET = -5.0
E0_KEV, BETA_MRAD = 200.0, 10.0
ROOT = Path(__file__).resolve().parents[1]
EXSPY_VARIABLES = ("eps1", "eps2", "thickness_nm")  # what exspy returns: eps and t


def generate(folder: Path, size: int) -> Path:
    """ssd.zarr: a size x size x 2048 float32 SSD cube (Drude metal, t 20 to 200 nm along x),
    with ``zlp_intensity`` and ``valid`` maps, as ``eelsgpu deconvolve`` writes it."""
    import dask.array as da
    import xarray as xr

    from eelsgpu import synthetic
    from eelsgpu.io import write_store
    from eelsgpu.model import spectrum_image

    lam = float(
        synthetic.low_loss_spectrum(
            synthetic.Drude(15.0, 1.0), t_over_lambda=0.1, n_channels=256, dispersion_eV=0.1
        )["true_mean_free_path_nm"]
    )
    sim = synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0),
        t_over_lambda=np.linspace(20.0, 200.0, size)[None, :] / lam,
        shape=(1, size),
        n_channels=N_E,
        dispersion_eV=DISPERSION,
        offset_eV=OFFSET,
        beam_energy_keV=E0_KEV,
        collection_angle_mrad=BETA_MRAD,
        dtype=np.float32,
    )
    row = sim["true_ssd"].values.astype(np.float32)  # (1, size, N_E)
    cube = da.broadcast_to(da.from_array(row, chunks=(1, size, N_E)), (size, size, N_E))
    si = spectrum_image(
        cube,
        sim["energy"].values,
        beam_energy_keV=E0_KEV,
        collection_angle_mrad=BETA_MRAD,
        source="bench ssd",
        name="ssd",
    )
    n0 = np.broadcast_to(sim["true_zlp_intensity"].values, (size, size))
    ds = xr.Dataset(
        {
            "ssd": si,
            "zlp_intensity": (("y", "x"), n0.astype(np.float32)),
            "valid": (("y", "x"), np.ones((size, size), bool)),
        }
    )
    path = folder / "ssd.zarr"
    write_store(ds, path, overwrite=True)
    return path


# --------------------------------------------------------------------------- parts
def _part_fft(path: Path) -> dict:
    import scipy.fft as sfft

    from eelsgpu._xp import fast_length
    from eelsgpu.io import open_store
    from eelsgpu.kernels.loss_grid import loss_grid

    da_ = open_store(path)["ssd"]
    grid = loss_grid(da_["energy"].values)
    x = np.ascontiguousarray(da_.values.reshape(-1, N_E)[:, grid.start : grid.start + grid.n])
    m = fast_length(2 * grid.n - 1)  # the Hilbert transform's FFT length
    sfft.irfft(sfft.rfft(x[:64], n=m, axis=-1), n=m, axis=-1)  # plan warm-up
    t0 = time.perf_counter()
    spec = sfft.rfft(x, n=m, axis=-1, workers=-1)
    t1 = time.perf_counter()
    sfft.irfft(spec, n=m, axis=-1, workers=-1)
    t2 = time.perf_counter()
    del spec
    # the same transforms in slabs of 1024 spectra (their outputs stay in cache and memory is
    # not faulted in for the whole cube): often faster; the better of the two is the limit
    slab = 1024
    t3 = time.perf_counter()
    for s in range(0, x.shape[0], slab):
        sfft.irfft(sfft.rfft(x[s : s + slab], n=m, axis=-1, workers=-1), n=m, axis=-1, workers=-1)
    t4 = time.perf_counter()
    return {
        "rfft_s": t1 - t0,
        "rfft_irfft_s": min(t2 - t0, t4 - t3),
        "rfft_irfft_whole_s": t2 - t0,
        "rfft_irfft_slabs_s": t4 - t3,
        "fft_length": m,
        "channels": grid.n,
    }


def _part_ours(path: Path, out_path: Path, all_outputs: bool) -> dict:
    import dask

    import eelsgpu
    from eelsgpu.io import open_store, write_store

    dask.config.set(scheduler="threads")
    import_ours()
    t0 = time.perf_counter()
    ssd = open_store(path)
    ds = eelsgpu.kramers_kronig(
        ssd, metal=True, device="cpu", variables=None if all_outputs else EXSPY_VARIABLES
    )
    write_store(ds, out_path, overwrite=True)
    wall = time.perf_counter() - t0
    res = open_store(out_path)
    t = res["thickness_nm"].values
    return {
        "wall_s": wall,
        "valid_fraction": float(res["valid"].values.mean()) if "valid" in res else 1.0,
        "thickness_nm_range": [float(t.min()), float(t.max())],
    }


def _part_copy(path: Path, out_path: Path) -> dict:
    """The I/O floor of the job: read the SSD store and write two cubes of eps's size (the SSD's
    positive-loss channels, twice), with no computation, zarr -> zarr on dask threads."""
    import dask

    from eelsgpu.io import open_store, write_store
    from eelsgpu.kernels.loss_grid import loss_grid

    dask.config.set(scheduler="threads")
    import_ours()
    t0 = time.perf_counter()
    ssd = open_store(path)["ssd"]
    grid = loss_grid(ssd["energy"].values)
    part = ssd.isel(energy=slice(grid.start + 1, grid.start + grid.n))
    ds = part.to_dataset(name="eps1").assign(eps2=part)
    write_store(ds, out_path, overwrite=True)
    return {"wall_s": time.perf_counter() - t0}


def _part_ours_memory(path: Path) -> dict:
    """The same analysis on the cube in memory, results computed to memory: the compute alone,
    without zarr decompression and compression."""
    import dask

    import eelsgpu
    from eelsgpu.io import open_store

    dask.config.set(scheduler="threads")
    ssd = open_store(path).load()
    ssd = ssd.chunk({"y": 64, "x": 64})  # the store's blocks (4096 spectra, 32 MiB)
    import_ours()
    t0 = time.perf_counter()
    ds = eelsgpu.kramers_kronig(ssd, metal=True, device="cpu", variables=EXSPY_VARIABLES)
    ds = ds.compute()
    return {"wall_s": time.perf_counter() - t0}


def _part_exspy(path: Path) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    from exspy.signals import EELSSpectrum

    from eelsgpu.io import open_store

    store = open_store(path)
    da_ = store["ssd"]
    e = da_["energy"].values
    first = int(np.argmax(e > 1e-9))  # exspy divides by E: give it E > 0 only
    s = EELSSpectrum(np.ascontiguousarray(da_.values[..., first:]))
    ax = s.axes_manager.signal_axes[0]
    ax.offset, ax.scale, ax.units = float(e[first]), DISPERSION, "eV"
    s.set_microscope_parameters(
        beam_energy=E0_KEV, collection_angle=BETA_MRAD, convergence_angle=0.0
    )
    n0 = float(store["zlp_intensity"].values.mean())
    t0 = time.perf_counter()
    eps, thickness = s.kramers_kronig_analysis(zlp=n0, iterations=1, n=1000.0, full_output=True)[:2]
    wall = time.perf_counter() - t0
    return {"wall_s": wall}


# --------------------------------------------------------------------------- driver
_RSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")
_CPU = re.compile(r"(?:User|System) time \(seconds\): ([\d.]+)")


def _run_part(part: str, args: list[str]) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--part", part, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"part {part} failed:\n{proc.stdout}\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    m = _RSS.search(proc.stderr)
    result["peak_rss_GiB"] = int(m.group(1)) / 2**20 if m else float("nan")
    # CPU time of the whole process (start-up and loading included): less sensitive than wall
    # time to other jobs on a shared machine
    cpu = [float(x) for x in _CPU.findall(proc.stderr)]
    result["process_cpu_s"] = sum(cpu) if cpu else float("nan")
    return result


def bench_kk(
    size: int = 256, *, exspy: bool = True, folder: str | os.PathLike | None = None
) -> dict:
    """Run every part on a ``size x size x 2048`` SSD cube; return (and print) the figures."""
    tmp = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="eelsgpu-bench-kk-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        path = generate(tmp, size)
        print(
            f"SSD cube {size} x {size} x {N_E} float32 written in {time.perf_counter() - t0:.1f} s"
        )
        res: dict = {"size": size, "cpus": os.cpu_count()}
        res["fft"] = _run_part("fft", [str(path)])
        res["ours"] = _run_part("ours", [str(path), str(tmp / "kk.zarr")])
        res["ours_all"] = _run_part("ours-all", [str(path), str(tmp / "kk_all.zarr")])
        res["ours_memory"] = _run_part("ours-memory", [str(path)])
        res["copy"] = _run_part("copy", [str(path), str(tmp / "copy.zarr")])
        if exspy:
            res["exspy"] = _run_part("exspy", [str(path)])
    finally:
        if not folder:
            shutil.rmtree(tmp, ignore_errors=True)
    n = size * size
    f = res["fft"]
    lines = [
        f"Kramers-Kronig, {size} x {size} x {N_E} float32 SSD ({n} spectra), zarr -> zarr, "
        f"{res['cpus']} cores:",
        f"  bare scipy.fft rfft+irfft (n={f['fft_length']}) {f['rfft_irfft_s']:7.2f} s  "
        f"({n / f['rfft_irfft_s']:9.0f} spectra/s)  peak {f['peak_rss_GiB']:.2f} GiB "
        f"(best of the whole cube at once, {f['rfft_irfft_whole_s']:.2f} s, and slabs of 1024 "
        f"spectra, {f['rfft_irfft_slabs_s']:.2f} s)",
    ]
    for key, label in (
        ("ours", "eelsgpu (eps1, eps2, t)"),
        ("ours_all", "eelsgpu (all outputs)"),
        ("ours_memory", "eelsgpu (eps1, eps2, t), no I/O"),
    ):
        r = res[key]
        lines.append(
            f"  {label:<34} {r['wall_s']:7.2f} s  ({n / r['wall_s']:9.0f} spectra/s)  peak "
            f"{r['peak_rss_GiB']:.2f} GiB; time / bare FFTs = {r['wall_s'] / f['rfft_irfft_s']:.2f}"
            f" (process CPU {r['process_cpu_s']:.1f} s)"
        )
    c = res["copy"]
    lines.append(
        f"  I/O floor: read the SSD, write two cubes of eps's size, no computation: "
        f"{c['wall_s']:.2f} s = {c['wall_s'] / f['rfft_irfft_s']:.2f} x the bare FFTs"
    )
    if "exspy" in res:
        x = res["exspy"]
        lines.append(
            f"  exspy 0.3.2 (in memory, 1 iteration) {x['wall_s']:7.2f} s  "
            f"({n / x['wall_s']:9.0f} spectra/s)  peak {x['peak_rss_GiB']:.2f} GiB"
            f" (process CPU {x['process_cpu_s']:.1f} s)"
        )
        for key in ("ours", "ours_all", "ours_memory"):
            lines.append(f"  speed-up {key} vs exspy: {x['wall_s'] / res[key]['wall_s']:.1f}x")
    print("\n".join(lines))
    res["report"] = lines
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--no-exspy", action="store_true")
    ap.add_argument("--folder", help="keep the stores here")
    ap.add_argument("--json", help="write the figures to this JSON file")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.part:
        p = [Path(x) for x in a.paths]
        if a.part == "fft":
            out = _part_fft(p[0])
        elif a.part in ("ours", "ours-all"):
            out = _part_ours(p[0], p[1], a.part == "ours-all")
        elif a.part == "copy":
            out = _part_copy(p[0], p[1])
        elif a.part == "ours-memory":
            out = _part_ours_memory(p[0])
        elif a.part == "exspy":
            out = _part_exspy(p[0])
        else:
            raise SystemExit(f"unknown part {a.part}")
        print(json.dumps(out))
        return 0
    res = bench_kk(a.size, exspy=not a.no_exspy, folder=a.folder)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
