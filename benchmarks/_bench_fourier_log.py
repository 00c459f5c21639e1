"""Fourier-log SSD on a 256 x 256 x 2048 float32 cube read from zarr: eelsgpu vs exspy vs bare FFTs.

The issue's targets (issue 3, "Speed and memory"): at least 8x exspy's speed for the same job, at
no less than a third of the speed of the bare batched FFTs of the same cube (scipy.fft, all
cores), peak memory under 1.5 GB.

Each part runs in its own process under ``/usr/bin/time -v`` (peak RSS measured from outside):

* ``fft``: the bare batched FFTs of the cube (in memory, scipy.fft with all cores):
  forward rfft of length 2048, and rfft + irfft (the least a Fourier-log needs);
* ``ours-cube``: :func:`eelsgpu.deconvolve` (``output="ssd"``) with the per-pixel ZLP cube from
  a second zarr store (what exspy is given), zarr -> zarr;
* ``ours-mirror``: the same with the ZLP modelled per pixel (``zlp="mirror"``), zarr -> zarr:
  the whole job from the raw cube;
* ``ours-memory``: the ZLP-cube job with both cubes already in memory (like exspy's), best of
  dask threads and a single thread (on a shared machine the second core is often busy);
* ``exspy``: ``EELSSpectrum.fourier_log_deconvolution(zlp)`` on the same cube and ZLP cube in
  memory (what exspy 0.3.2 does: complex128/complex64 log, single-threaded NumPy).

Used by ``benchmarks/bench_lowloss.py`` (``bench_fourier_log``) and runnable alone (it is big,
about 1.5 GiB on disk and 7 GiB of RAM for exspy: take the shared lock)::

    flock /tmp/eelsgpu-bench.lock python benchmarks/_bench_fourier_log.py [--size 256] [--no-exspy]
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
ROOT = Path(__file__).resolve().parents[1]


def generate(folder: Path, size: int) -> tuple[Path, Path]:
    """signal.zarr (size x size x 2048 float32) and zlp.zarr (its true ZLP cube, N0 R).

    One synthetic row (Drude, t/lambda 0.2 to 3 along x, ZLP 0.5 eV) repeated down the image;
    content does not change the cost of an FFT, only its length does.
    """
    import dask.array as da

    from eelsgpu import synthetic
    from eelsgpu.io import write_store
    from eelsgpu.model import spectrum_image

    sim = synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0),
        t_over_lambda=np.linspace(0.2, 3.0, size)[None, :],
        shape=(1, size),
        n_channels=N_E,
        dispersion_eV=DISPERSION,
        offset_eV=OFFSET,
        beam_energy_keV=200.0,
        return_ssd=False,
        dtype=np.float32,
    )
    row = sim["signal"].values.astype(np.float32)  # (1, size, N_E)
    zrow = (
        sim["true_zlp_shape"].values[None, None, :] * sim["true_zlp_intensity"].values[..., None]
    ).astype(np.float32)
    e = sim["energy"].values
    paths = []
    for name, r in (("signal", row), ("zlp", zrow)):
        cube = da.broadcast_to(da.from_array(r, chunks=(1, size, N_E)), (size, size, N_E))
        si = spectrum_image(
            cube, e, beam_energy_keV=200.0, collection_angle_mrad=10.0, source=f"bench {name}"
        )
        p = folder / f"{name}.zarr"
        write_store(si, p, overwrite=True)
        paths.append(p)
    return paths[0], paths[1]


# --------------------------------------------------------------------------- the parts
def _part_fft(signal: Path) -> dict:
    import scipy.fft as sfft

    from eelsgpu.io import open_store

    x = np.ascontiguousarray(open_store(signal)["signal"].values)
    out = {"rfft_s": np.inf, "rfft_irfft_s": np.inf, "padded_3fft_s": np.inf}
    sfft.rfft(x[:8], axis=-1, workers=-1)  # plan
    for _ in range(3):  # best of 3: the machine is shared
        t0 = time.perf_counter()
        f = sfft.rfft(x, axis=-1, workers=-1)
        t1 = time.perf_counter()
        sfft.irfft(f, n=N_E, axis=-1, workers=-1)
        t2 = time.perf_counter()
        out["rfft_s"] = min(out["rfft_s"], t1 - t0)
        out["rfft_irfft_s"] = min(out["rfft_irfft_s"], t2 - t0)
        del f
    # what a Fourier-log padded to 2 n_E needs at the least: rfft of J and of Z, irfft, all of
    # length 4096 (in slabs of 8192 spectra, so that memory stays bounded like ours)
    p = 2 * N_E
    for _ in range(3):
        t0 = time.perf_counter()
        for s in range(0, x.shape[0], 8192 // x.shape[1] or 1):
            slab = x[s : s + max(1, 8192 // x.shape[1])]
            fj = sfft.rfft(slab, n=p, axis=-1, workers=-1)
            fz = sfft.rfft(slab, n=p, axis=-1, workers=-1)
            sfft.irfft(fj * fz, n=p, axis=-1, workers=-1)
        out["padded_3fft_s"] = min(out["padded_3fft_s"], time.perf_counter() - t0)
    return out


def warm_compiled() -> float:
    """numba's start-up (its import, its code generator's start and the compiled CPU kernels'
    load: ``eelsgpu.engine.cpu_fused.warm_up``), once per process, before the clock like the
    imports; returns its seconds (reported apart). A checkout without compiled kernels (a
    ``--before`` row) has none: 0."""
    try:
        from eelsgpu.engine.cpu_fused import warm_up
    except ImportError:
        return 0.0
    t0 = time.perf_counter()
    warm_up(wait=True)
    return time.perf_counter() - t0


def _part_ours(signal: Path, zlp: Path | None, out_path: Path) -> dict:
    import dask

    from eelsgpu.analysis.deconvolution import deconvolve
    from eelsgpu.io import open_store, write_store

    dask.config.set(scheduler="threads")
    import_ours()
    warm_s = warm_compiled()
    t0 = time.perf_counter()
    si = open_store(signal)["signal"]
    z = open_store(zlp)["signal"] if zlp is not None else "mirror"
    ds = deconvolve(si, zlp=z, output="ssd", device="cpu")
    write_store(ds, out_path, overwrite=True)
    wall = time.perf_counter() - t0
    valid = open_store(out_path)["valid"].values
    return {"wall_s": wall, "valid_fraction": float(valid.mean()), "warm_up_s": warm_s}


def _part_ours_memory(signal: Path, zlp: Path) -> dict:
    """Like exspy: both cubes loaded into memory first (not timed), the SSD computed in memory."""
    import dask

    from eelsgpu.analysis.deconvolution import deconvolve
    from eelsgpu.io import open_store

    si = open_store(signal)["signal"].compute()
    z = open_store(zlp)["signal"].compute()
    import_ours()
    out = {}
    for sched in ("threads", "sync"):
        with dask.config.set(scheduler=sched):
            t0 = time.perf_counter()
            ds = deconvolve(
                si.chunk({"y": 64, "x": 64}),
                zlp=z.chunk({"y": 64, "x": 64}),
                output="ssd",
                device="cpu",
            )
            ds["ssd"].values  # noqa: B018 - computes it
            out[f"wall_{sched}_s"] = time.perf_counter() - t0
    out["wall_s"] = min(out["wall_threads_s"], out["wall_sync_s"])
    return out


def _part_exspy(signal: Path, zlp: Path) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    from exspy.signals import EELSSpectrum

    from eelsgpu.io import open_store

    def load(p):
        da_ = open_store(p)["signal"]
        s = EELSSpectrum(np.ascontiguousarray(da_.values))
        ax = s.axes_manager.signal_axes[0]
        ax.offset, ax.scale, ax.units = float(da_["energy"][0]), DISPERSION, "eV"
        return s

    s, z = load(signal), load(zlp)
    t0 = time.perf_counter()
    s.fourier_log_deconvolution(z)
    return {"wall_s": time.perf_counter() - t0}


# --------------------------------------------------------------------------- driver
_RSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")


def _run_part(part: str, args: list[str]) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--part", part, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"part {part} failed:\n{proc.stdout}\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    m = _RSS.search(proc.stderr)
    result["peak_rss_GiB"] = int(m.group(1)) / 2**20 if m else float("nan")
    return result


def bench_fourier_log(
    size: int = 256, *, exspy: bool = True, folder: str | os.PathLike | None = None
) -> dict:
    """Run every part on a ``size x size x 2048`` cube; return (and print) the figures.

    Parameters
    ----------
    size : int
        Pixels per side (the issue's figure is for 256).
    exspy : bool
        Also run exspy (about 40 s and 6.5 GiB at 256).
    folder : path, optional
        Where the stores go (default a temporary folder, removed at the end).
    """
    tmp = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="eelsgpu-bench-flog-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        sig, zlp = generate(tmp, size)
        print(f"cube {size} x {size} x {N_E} float32 written in {time.perf_counter() - t0:.1f} s")
        res = {"size": size}
        res["fft"] = _run_part("fft", [str(sig)])
        res["ours_cube"] = _run_part("ours-cube", [str(sig), str(zlp), str(tmp / "o1.zarr")])
        res["ours_mirror"] = _run_part("ours-mirror", [str(sig), str(tmp / "o2.zarr")])
        res["ours_memory"] = _run_part("ours-memory", [str(sig), str(zlp)])
        if exspy:
            res["exspy"] = _run_part("exspy", [str(sig), str(zlp)])
    finally:
        if not folder:
            shutil.rmtree(tmp, ignore_errors=True)
    n = size * size
    f = res["fft"]
    lines = [
        f"Fourier-log SSD, {size} x {size} x {N_E} float32 ({n} spectra), {_cores()} cores:",
        f"  {'bare scipy.fft rfft':<34} {f['rfft_s']:7.2f} s  ({n / f['rfft_s']:9.0f} spectra/s)",
        f"  {'bare scipy.fft rfft+irfft':<34} {f['rfft_irfft_s']:7.2f} s  "
        f"({n / f['rfft_irfft_s']:9.0f} spectra/s)  peak {f['peak_rss_GiB']:.2f} GiB",
        f"  {'bare 2 rfft + 1 irfft of 4096 (2N)':<34} {f['padded_3fft_s']:7.2f} s  "
        f"({n / f['padded_3fft_s']:9.0f} spectra/s)  (the least a 2N-padded Fourier-log needs)",
    ]
    labels = (
        ("ours_cube", "eelsgpu, ZLP cube, zarr->zarr"),
        ("ours_mirror", "eelsgpu, mirror ZLP, zarr->zarr"),
        ("ours_memory", "eelsgpu, ZLP cube, in memory"),
    )
    for key, label in labels:
        r = res[key]
        lines.append(
            f"  {label:<34} {r['wall_s']:7.2f} s  ({n / r['wall_s']:7.0f} spectra/s)  peak "
            f"{r['peak_rss_GiB']:.2f} GiB; speed / bare rfft+irfft = "
            f"{f['rfft_irfft_s'] / r['wall_s']:.2f}, / bare rfft = {f['rfft_s'] / r['wall_s']:.2f}"
            f", / bare 2N FFTs = {f['padded_3fft_s'] / r['wall_s']:.2f}"
        )
    m = res["ours_memory"]
    lines.append(
        f"    (in memory: dask threads {m['wall_threads_s']:.2f} s, one thread "
        f"{m['wall_sync_s']:.2f} s)"
    )
    if "exspy" in res:
        x = res["exspy"]
        lines.append(
            f"  {'exspy 0.3.2 (in memory)':<34} {x['wall_s']:7.2f} s  ({n / x['wall_s']:7.0f} "
            f"spectra/s)  peak {x['peak_rss_GiB']:.2f} GiB"
        )
        for key, _ in labels:
            lines.append(f"  speed-up {key} vs exspy: {x['wall_s'] / res[key]['wall_s']:.1f}x")
    print("\n".join(lines))
    res["report"] = lines
    return res


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


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
        elif a.part == "ours-cube":
            out = _part_ours(p[0], p[1], p[2])
        elif a.part == "ours-mirror":
            out = _part_ours(p[0], None, p[1])
        elif a.part == "ours-memory":
            out = _part_ours_memory(p[0], p[1])
        elif a.part == "exspy":
            out = _part_exspy(p[0], p[1])
        else:
            raise SystemExit(f"unknown part {a.part}")
        print(json.dumps(out))
        return 0
    res = bench_fourier_log(a.size, exspy=not a.no_exspy, folder=a.folder)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
