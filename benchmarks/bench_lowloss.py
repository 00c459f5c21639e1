"""Low-loss benchmark: ZLP alignment + log-ratio thickness, eelsgpu vs exspy, beside the bare FFTs.

On a ``size x size x 2048`` float32 cube in a zarr store (written with :func:`eelsgpu.io.
write_store` if absent: Drude, t/lambda 0.2 to 2 along x, ZLP 0.5 eV drifting by +-0.4 eV from
pixel to pixel, Poisson noise at 1e5 counts per spectrum), each job runs in its own process under
``/usr/bin/time -v`` (peak RSS measured from outside):

* ``fft``: the limit, bare batched scipy.fft rfft + irfft of the whole cube in memory, all cores;
* ``ours``: :func:`eelsgpu.align_zlp` (Fourier shift, cropped to the common range) and
  :func:`eelsgpu.thickness` (log-ratio, threshold ZLP, tail included), zarr -> zarr, one pass
  over the data for the shifts and one for the rest, dask threads;
* ``ours-nocrop``: the same without the crop (one pass; the few channels at the ends that have
  no data after the shift are NaN);
* ``ours-thickness``: the thickness map alone, zarr -> zarr;
* ``exspy``: ``align_zero_loss_peak(subpixel=True, crop=True)`` then
  ``estimate_thickness(threshold=3)`` on the same cube in memory (exspy 0.3.2);
* ``ours-whole``: the issue's whole job in one pass, :func:`eelsgpu.deconvolve` (``zlp="mirror"``,
  ``output="ssd"``, density 2.7 g/cm3): ZLP centre and model, the SSD with zero loss at 0 eV,
  t/lambda from the SSD and the thickness in nm, zarr -> zarr;
* ``copy``: the cube read from zarr and written again (same codec): the I/O floor of any
  zarr -> zarr job;
* ``exspy-whole``: the same job in exspy: align, ``estimate_thickness(threshold=3, density=2.7)``
  and ``fourier_log_deconvolution`` with the ZLP cut at the threshold, cube in memory.

The Fourier-log SSD timing (helper C's ``_bench_fourier_log.bench_fourier_log``) is run after these
when importable. One function per job, ``main`` runs them and prints the table with ratios.
Big: take the shared lock::

    flock /tmp/eelsgpu-bench.lock python benchmarks/bench_lowloss.py [--size 256] [--no-exspy]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _imports import import_ours

N_E = 2048
DISPERSION = 0.05
OFFSET = -5.0
ROOT = Path(__file__).resolve().parents[1]
TILE = 8  # distinct rows generated; the image repeats them down y


def generate(path: Path, size: int) -> Path:
    """Write the benchmark cube (float32, pixel chunks of about 32 MiB) to ``path``."""
    import dask.array as da

    from eelsgpu import synthetic
    from eelsgpu.io import write_store
    from eelsgpu.model import spectrum_image

    rows = min(TILE, size)
    tl = np.broadcast_to(np.linspace(0.2, 2.0, size)[None, :], (rows, size))
    rng = np.random.default_rng(0)
    drift = rng.uniform(-0.4, 0.4, (rows, size))
    sim = synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0),
        t_over_lambda=tl,
        shape=(rows, size),
        n_channels=N_E,
        dispersion_eV=DISPERSION,
        offset_eV=OFFSET,
        beam_energy_keV=200.0,
        collection_angle_mrad=10.0,
        drift_eV=drift,
        total_counts=1e5,
        noise=True,
        return_ssd=False,
        dtype=np.float32,
    )
    tile = sim["signal"].values.astype(np.float32)
    reps = -(-size // rows)
    cube = da.tile(da.from_array(tile, chunks=(rows, size, N_E)), (reps, 1, 1))[:size]
    si = spectrum_image(
        cube,
        sim["energy"].values,
        beam_energy_keV=200.0,
        collection_angle_mrad=10.0,
        convergence_angle_mrad=0.0,
        source=f"bench_lowloss {size}",
    )
    write_store(si, path, overwrite=True)
    return path


# --------------------------------------------------------------------------- jobs
def job_fft(cube: Path) -> dict:
    """Bare batched FFTs of the whole cube in memory (the read is not timed), best of 3:
    rfft + irfft of 2048 points (``wall_s``), and the least a Fourier-log padded to 2N needs,
    2 rfft + 1 irfft of 4096 points (``padded_3fft_s``); see ``_bench_fourier_log._part_fft``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _bench_fourier_log import _part_fft

    r = _part_fft(cube)
    return {"wall_s": r["rfft_irfft_s"], "rfft_s": r["rfft_s"], "padded_3fft_s": r["padded_3fft_s"]}


def job_ours(cube: Path, out: Path, crop: bool = True) -> dict:
    """eelsgpu: align_zlp + log-ratio thickness, zarr -> zarr (``crop``: see align_zlp)."""
    import dask

    from eelsgpu.analysis.thickness import thickness
    from eelsgpu.analysis.zlp import align_zlp
    from eelsgpu.io import open_store, write_store

    dask.config.set(scheduler="threads")
    import_ours()
    t0 = time.perf_counter()
    si = open_store(cube)["signal"]
    aligned = align_zlp(si, method="fourier", crop=crop, device="cpu")
    t_align_pass = time.perf_counter() - t0  # the crop needs the shifts first: one pass
    th = thickness(si, method="log-ratio", device="cpu")
    ds = aligned[["signal"]].assign(
        {k: th[k] for k in ("t_over_lambda", "zlp_intensity", "zlp_centre_eV", "valid")}
    )
    write_store(ds, out, overwrite=True)
    wall = time.perf_counter() - t0
    res = open_store(out)
    return {
        "wall_s": wall,
        "centre_pass_s": t_align_pass,
        "valid_fraction": float(res["valid"].values.mean()),
        "t_over_lambda_mean": float(np.nanmean(res["t_over_lambda"].values)),
    }


def job_ours_thickness(cube: Path, out: Path) -> dict:
    """eelsgpu: the log-ratio thickness map alone, zarr -> zarr."""
    import dask

    from eelsgpu.analysis.thickness import thickness
    from eelsgpu.io import open_store, write_store

    dask.config.set(scheduler="threads")
    import_ours()
    t0 = time.perf_counter()
    th = thickness(open_store(cube)["signal"], method="log-ratio", device="cpu")
    write_store(th, out, overwrite=True)
    return {"wall_s": time.perf_counter() - t0}


def _exspy_spectrum(cube: Path):
    """The cube as an exspy EELSSpectrum in memory, calibrated (200 kV, 10 mrad), and the
    seconds its loading took (not counted in exspy's times, as the README says)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from exspy.signals import EELSSpectrum

    from eelsgpu.io import open_store

    t0 = time.perf_counter()
    da_ = open_store(cube)["signal"]
    s = EELSSpectrum(np.ascontiguousarray(da_.values))
    ax = s.axes_manager.signal_axes[0]
    ax.offset, ax.scale, ax.units = float(da_["energy"][0]), DISPERSION, "eV"
    s.set_microscope_parameters(beam_energy=200.0, collection_angle=10.0, convergence_angle=0.0)
    return s, time.perf_counter() - t0


def job_exspy(cube: Path) -> dict:
    """exspy 0.3.2: align_zero_loss_peak + estimate_thickness on the cube in memory."""
    s, t_load = _exspy_spectrum(cube)
    t0 = time.perf_counter()
    s.align_zero_loss_peak(subpixel=True, crop=True, print_stats=False, show_progressbar=False)
    t_align = time.perf_counter() - t0
    t1 = time.perf_counter()
    tl = s.estimate_thickness(threshold=3.0)
    t_thick = time.perf_counter() - t1
    return {
        "wall_s": t_align + t_thick,
        "load_s": t_load,
        "align_s": t_align,
        "thickness_s": t_thick,
        "t_over_lambda_mean": float(np.nanmean(tl.data)),
    }


def job_copy(cube: Path, out: Path) -> dict:
    """The I/O floor of any zarr -> zarr job: read the cube and write it again (same codec)."""
    import dask

    from eelsgpu.io import open_store, write_store

    dask.config.set(scheduler="threads")
    import_ours()
    t0 = time.perf_counter()
    write_store(open_store(cube)[["signal"]], out, overwrite=True)
    return {"wall_s": time.perf_counter() - t0}


def job_ours_whole(cube: Path, out: Path) -> dict:
    """eelsgpu: the whole low-loss job in one pass, zarr -> zarr: per pixel the ZLP centre and
    model (mirror), the Fourier-log SSD with zero loss at 0 eV (aligned whatever the drift), t/lambda
    from the SSD and the absolute thickness (Iakoubovskii mean free path, density 2.7 g/cm3)."""
    import dask

    from eelsgpu.analysis.deconvolution import deconvolve
    from eelsgpu.io import open_store, write_store

    dask.config.set(scheduler="threads")
    import_ours()
    t0 = time.perf_counter()
    si = open_store(cube)["signal"]
    ds = deconvolve(si, zlp="mirror", output="ssd", density_g_cm3=2.7, device="cpu")
    write_store(ds, out, overwrite=True)
    wall = time.perf_counter() - t0
    res = open_store(out)
    return {
        "wall_s": wall,
        "valid_fraction": float(res["valid"].values.mean()),
        "t_over_lambda_mean": float(np.nanmean(res["t_over_lambda"].values)),
        "thickness_nm_mean": float(np.nanmean(res["thickness_nm"].values)),
    }


def job_exspy_whole(cube: Path) -> dict:
    """exspy 0.3.2, the same job on the cube in memory: align_zero_loss_peak(subpixel, crop),
    estimate_thickness(threshold 3 eV, density 2.7: t/lambda and nm), then
    fourier_log_deconvolution with the ZLP cut at the same threshold."""
    s, t_load = _exspy_spectrum(cube)
    t0 = time.perf_counter()
    s.align_zero_loss_peak(subpixel=True, crop=True, print_stats=False, show_progressbar=False)
    t_align = time.perf_counter() - t0
    t1 = time.perf_counter()
    t_nm = s.estimate_thickness(threshold=3.0, density=2.7)
    t_thick = time.perf_counter() - t1
    t2 = time.perf_counter()
    zlp = s.isig[:3.0].deepcopy()
    ssd = s.fourier_log_deconvolution(zlp)
    t_fl = time.perf_counter() - t2
    return {
        "wall_s": t_align + t_thick + t_fl,
        "load_s": t_load,
        "align_s": t_align,
        "thickness_s": t_thick,
        "fourier_log_s": t_fl,
        "thickness_nm_mean": float(np.nanmean(t_nm.data)),
        "ssd_shape": list(ssd.data.shape),
    }


JOBS = {
    "copy": lambda a: job_copy(Path(a[0]), Path(a[1])),
    "ours-whole": lambda a: job_ours_whole(Path(a[0]), Path(a[1])),
    "exspy-whole": lambda a: job_exspy_whole(Path(a[0])),
    "fft": lambda a: job_fft(Path(a[0])),
    "ours": lambda a: job_ours(Path(a[0]), Path(a[1])),
    "ours-nocrop": lambda a: job_ours(Path(a[0]), Path(a[1]), crop=False),
    "ours-thickness": lambda a: job_ours_thickness(Path(a[0]), Path(a[1])),
    "exspy": lambda a: job_exspy(Path(a[0])),
}

_RSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")


def run_job(name: str, args: list[str]) -> dict:
    """Run one job in a fresh process under /usr/bin/time -v; its figures and peak RSS."""
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--job", name, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"job {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    m = _RSS.search(proc.stderr)
    out["peak_rss_GiB"] = int(m.group(1)) / 2**20 if m else float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=256, help="pixels per side (default 256)")
    ap.add_argument("--store", help="the cube's zarr store (default /tmp/eelsgpu-bench/...)")
    ap.add_argument("--no-exspy", action="store_true", help="skip exspy (slow, several GiB)")
    ap.add_argument("--no-fourier-log", action="store_true", help="skip the Fourier-log part")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.job:
        print(json.dumps(JOBS[a.job](a.paths)))
        return 0

    size = a.size
    folder = Path("/tmp/eelsgpu-bench")
    folder.mkdir(parents=True, exist_ok=True)
    cube = Path(a.store) if a.store else folder / f"lowloss_{size}x{size}x{N_E}.zarr"
    if not cube.exists():
        t0 = time.perf_counter()
        generate(cube, size)
        print(f"wrote {cube} in {time.perf_counter() - t0:.1f} s")
    res: dict = {"size": size, "cube": str(cube)}
    res["fft"] = run_job("fft", [str(cube)])
    res["ours"] = run_job("ours", [str(cube), str(folder / "out_align_thickness.zarr")])
    res["ours_nocrop"] = run_job("ours-nocrop", [str(cube), str(folder / "out_nocrop.zarr")])
    res["ours_thickness"] = run_job("ours-thickness", [str(cube), str(folder / "out_t.zarr")])
    res["copy"] = run_job("copy", [str(cube), str(folder / "out_copy.zarr")])
    res["ours_whole"] = run_job("ours-whole", [str(cube), str(folder / "out_whole.zarr")])
    if not a.no_exspy:
        res["exspy"] = run_job("exspy", [str(cube)])
        res["exspy_whole"] = run_job("exspy-whole", [str(cube)])

    n = size * size
    f = res["fft"]
    lines = [
        f"Low-loss, {size} x {size} x {N_E} float32 ({n} spectra) from zarr, {_cores()} cores:",
        f"  {'job':<44}{'wall s':>8}{'spectra/s':>11}{'peak GiB':>10}{'vs FFT':>8}{'vs exspy':>9}",
    ]

    def row(label, r, ex=None):
        ratio_fft = f["wall_s"] / r["wall_s"]
        vs = f"{ex / r['wall_s']:8.1f}x" if ex else f"{'':>9}"
        lines.append(
            f"  {label:<44}{r['wall_s']:8.2f}{n / r['wall_s']:11.0f}{r['peak_rss_GiB']:10.2f}"
            f"{ratio_fft:8.2f}{vs}"
        )

    ex_wall = res["exspy"]["wall_s"] if "exspy" in res else None
    row("bare scipy.fft rfft+irfft (all cores, limit)", f)
    row("eelsgpu align_zlp + thickness (zarr->zarr)", res["ours"], ex_wall)
    row("eelsgpu same, no crop (ends NaN, one pass)", res["ours_nocrop"], ex_wall)
    row("eelsgpu thickness only (zarr->zarr)", res["ours_thickness"])
    if "exspy" in res:
        x = res["exspy"]
        row("exspy align_zero_loss_peak + estimate_thickness", x)
        lines.append(
            f"    exspy parts: align {x['align_s']:.2f} s, thickness {x['thickness_s']:.2f} s "
            f"(loading into memory {x['load_s']:.2f} s not counted)"
        )
        lines.append(
            f"    mean t/lambda: eelsgpu {res['ours']['t_over_lambda_mean']:.4f} (tail "
            f"included), exspy {x['t_over_lambda_mean']:.4f} (window only, 3 eV threshold)"
        )
    exw = res["exspy_whole"]["wall_s"] if "exspy_whole" in res else None
    lines.append("  the whole job: ZLP alignment, Fourier-log SSD, t/lambda and thickness in nm")
    row("zarr -> zarr copy of the cube (the I/O floor)", res["copy"])
    row("eelsgpu deconvolve (one pass, zarr->zarr)", res["ours_whole"], exw)
    lines.append(
        f"    bare 2 rfft + 1 irfft of 4096 (what a 2N-padded Fourier-log needs at least): "
        f"{f['padded_3fft_s']:.2f} s; eelsgpu's whole job runs at "
        f"{f['padded_3fft_s'] / res['ours_whole']['wall_s']:.2f} of their speed"
    )
    if "exspy_whole" in res:
        x = res["exspy_whole"]
        row("exspy align + estimate_thickness + Fourier-log", x)
        lines.append(
            f"    exspy parts: align {x['align_s']:.2f} s, thickness {x['thickness_s']:.2f} s, "
            f"Fourier-log {x['fourier_log_s']:.2f} s; mean thickness: eelsgpu "
            f"{res['ours_whole']['thickness_nm_mean']:.1f} nm, exspy {x['thickness_nm_mean']:.1f} nm"
        )
    lines.append("  vs FFT: speed / speed of the bare FFTs; vs exspy: exspy's time / ours")
    print("\n".join(lines))
    res["report"] = lines

    if not a.no_fourier_log:
        try:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from _bench_fourier_log import bench_fourier_log
        except ImportError as exc:  # helper C's part not there
            print(f"(Fourier-log part skipped: {exc})")
        else:
            res["fourier_log"] = bench_fourier_log(size, exspy=not a.no_exspy)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    sys.exit(main())
