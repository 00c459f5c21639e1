"""The CPU path where users run it, and the two restated speed ratios of issue 13.

On a ``--size`` x ``--size`` x 2048 float32 cube (128 by default), each part in its own process
under ``/usr/bin/time -v`` (peak RSS measured from outside the process), all in the same run:

* **in memory, as a new user would** -- the cube and the per-pixel ZLP cube as NumPy arrays in
  DataArrays without dask chunks (eelsgpu cuts them into pixel blocks for every core):
  ``eelsgpu.deconvolve(si, zlp=<ZLP cube>, output="ssd")`` against exspy's
  ``fourier_log_deconvolution(zlp)``, and ``eelsgpu.kramers_kronig`` (eps1, eps2, thickness: what
  exspy returns) against exspy's ``kramers_kronig_analysis`` on the same SSD cube. Target
  (issue 13): at least 8x exspy, under 1 GB peak RSS.
* **ratio 1, in memory**: the Fourier-log (resp. KK) computation against the bare batched FFTs it
  needs on the same cores (scipy.fft, all cores: two rfft and one irfft of length 2 n_E for the
  Fourier-log; one rfft and one irfft of the Hilbert transform's length for KK). Target >= 1/3.
* **ratio 2, zarr to zarr**: the same analyses store to store against copying the same input
  store with no computation (read, decompress, compress, write). Target >= 1/2.

eelsgpu's deconvolution times start after its imports and numba's start-up (the compiled CPU
kernels' load, once per process: printed apart), as exspy's start after its imports.

    python benchmarks/bench_cpu_path.py [--size 128] [--no-exspy] [--json out.json] [--before DIR]

``--before DIR`` also runs the two in-memory rows with eelsgpu imported from DIR (another
checkout, e.g. ``git archive <commit> | tar -x -C DIR``), in the same run.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _imports import import_ours  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_E = 2048
EXSPY_VARIABLES = ("eps1", "eps2", "thickness_nm")


def _slabs(n: int, rows: int = 8192):
    for s in range(0, n, rows):
        yield slice(s, min(n, s + rows))


def part_fft_deconvolve(signal: str) -> dict:
    """The bare batched FFTs a 2N-padded Fourier-log needs: rfft of J and of Z, one irfft, all
    of length fast_length(2 n_E), scipy.fft on all cores, in slabs of 8192 spectra."""
    import scipy.fft as sfft

    from eelsgpu.io import open_store

    x = np.ascontiguousarray(open_store(signal)["signal"].values).reshape(-1, N_E)
    p = sfft.next_fast_len(2 * N_E, real=True)
    best = np.inf
    for _ in range(3):
        t = time.perf_counter()
        for s in _slabs(x.shape[0]):
            fj = sfft.rfft(x[s], n=p, axis=-1, workers=-1)
            fz = sfft.rfft(x[s], n=p, axis=-1, workers=-1)
            sfft.irfft(fj * fz, n=p, axis=-1, workers=-1)
        best = min(best, time.perf_counter() - t)
    return {"wall_s": best, "fft_length": p}


def part_fft_kk(ssd: str) -> dict:
    """The bare batched FFTs of one KK pass: rfft and irfft of the Hilbert transform's length
    fast_length(2K - 1) over the K positive-loss channels, scipy.fft on all cores."""
    import scipy.fft as sfft

    from eelsgpu._xp import fast_length
    from eelsgpu.io import open_store

    da_ = open_store(ssd)["ssd"]
    e = da_["energy"].values
    x = np.ascontiguousarray(da_.values[..., e > 0]).reshape(-1, int((e > 0).sum()))
    m = fast_length(2 * x.shape[1] - 1)
    best = np.inf
    for _ in range(3):
        t = time.perf_counter()
        for s in _slabs(x.shape[0]):
            f = sfft.rfft(x[s], n=m, axis=-1, workers=-1)
            sfft.irfft(f, n=m, axis=-1, workers=-1)
        best = min(best, time.perf_counter() - t)
    return {"wall_s": best, "fft_length": m}


def part_ours_deconvolve_memory(signal: str, zlp: str) -> dict:
    """As a new user would: both cubes in memory (NumPy under DataArrays, no dask chunks)."""
    import dask

    import eelsgpu
    from eelsgpu.io import open_store

    si = open_store(signal)["signal"].load()
    z = open_store(zlp)["signal"].load()
    si = si.copy(data=np.asarray(si.values))  # NumPy, no chunks
    z = z.copy(data=np.asarray(z.values))
    import_ours()
    from _bench_fourier_log import warm_compiled

    warm_s = warm_compiled()  # (numba's start-up, once per process: reported apart)
    dask.config.set(scheduler="threads")
    t = time.perf_counter()
    ds = eelsgpu.deconvolve(si, zlp=z, output="ssd", device="cpu").compute()
    wall = time.perf_counter() - t
    return {"wall_s": wall, "valid_fraction": float(ds["valid"].values.mean()), "warm_up_s": warm_s}


def part_exspy_deconvolve(signal: str, zlp: str) -> dict:
    from _bench_fourier_log import _part_exspy

    return _part_exspy(Path(signal), Path(zlp))


def part_ours_kk_memory(ssd: str) -> dict:
    import dask

    import eelsgpu
    from eelsgpu.io import open_store

    ds = open_store(ssd).load()  # NumPy under every variable, no chunks
    import_ours()
    dask.config.set(scheduler="threads")
    t = time.perf_counter()
    out = eelsgpu.kramers_kronig(ds, metal=True, device="cpu", variables=EXSPY_VARIABLES)
    out = out.compute()
    return {"wall_s": time.perf_counter() - t}


def part_exspy_kk(ssd: str) -> dict:
    from bench_kk import _part_exspy

    return _part_exspy(Path(ssd))


def part_ours_deconvolve_zarr(signal: str, zlp: str, out: str) -> dict:
    from _bench_fourier_log import _part_ours

    return _part_ours(Path(signal), Path(zlp), Path(out))


def part_ours_kk_zarr(ssd: str, out: str) -> dict:
    import dask

    import eelsgpu
    from eelsgpu.io import open_store, write_store

    dask.config.set(scheduler="threads")
    import_ours()
    t = time.perf_counter()
    ds = eelsgpu.kramers_kronig(
        open_store(ssd), metal=True, device="cpu", variables=EXSPY_VARIABLES
    )
    write_store(ds, out, overwrite=True)
    return {"wall_s": time.perf_counter() - t}


def part_copy(store: str, out: str) -> dict:
    """Copy the input store: read and decompress every chunk, compress and write it again, no
    computation, dask threads (the I/O floor of a store-to-store job)."""
    import dask

    from eelsgpu.io import open_store, write_store

    dask.config.set(scheduler="threads")
    import_ours()
    t = time.perf_counter()
    write_store(open_store(store), out, overwrite=True)
    return {"wall_s": time.perf_counter() - t}


PARTS = {
    "fft-deconvolve": part_fft_deconvolve,
    "fft-kk": part_fft_kk,
    "ours-deconvolve-memory": part_ours_deconvolve_memory,
    "exspy-deconvolve": part_exspy_deconvolve,
    "ours-kk-memory": part_ours_kk_memory,
    "exspy-kk": part_exspy_kk,
    "ours-deconvolve-zarr": part_ours_deconvolve_zarr,
    "ours-kk-zarr": part_ours_kk_zarr,
    "copy": part_copy,
}

_RSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")


def run_part(part: str, *args: str, source: str | None = None) -> dict:
    """One part in its own process under /usr/bin/time -v; ``source``: import eelsgpu from that
    checkout instead (the ``--before`` rows)."""
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--part", part, *args]
    env = None
    if source:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([source, *env.get("PYTHONPATH", "").split(os.pathsep)])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"part {part} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    m = _RSS.search(proc.stderr)
    result["peak_rss_GB"] = int(m.group(1)) * 1024 / 1e9 if m else float("nan")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--no-exspy", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--before",
        default=None,
        help="another checkout of eelsgpu (e.g. a `git archive` of an older commit): its in-memory "
        "rows are run too, in the same run, for a before/after comparison",
    )
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)
    a, rest = ap.parse_known_args(argv)
    if a.part:
        print(json.dumps(PARTS[a.part](*rest)))
        return 0
    import _bench_fourier_log
    import bench_kk

    tmp = Path(tempfile.mkdtemp(prefix="eelsgpu-bench-cpu-"))
    try:
        sig, zlp = _bench_fourier_log.generate(tmp, a.size)
        ssd = bench_kk.generate(tmp, a.size)
        r = {"size": a.size, "cpus": os.cpu_count()}
        r["fft_deconvolve"] = run_part("fft-deconvolve", str(sig))
        r["fft_kk"] = run_part("fft-kk", str(ssd))
        r["ours_deconvolve_memory"] = run_part("ours-deconvolve-memory", str(sig), str(zlp))
        r["ours_kk_memory"] = run_part("ours-kk-memory", str(ssd))
        if a.before:
            r["before_deconvolve_memory"] = run_part(
                "ours-deconvolve-memory", str(sig), str(zlp), source=a.before
            )
            r["before_kk_memory"] = run_part("ours-kk-memory", str(ssd), source=a.before)
        if not a.no_exspy:
            r["exspy_deconvolve"] = run_part("exspy-deconvolve", str(sig), str(zlp))
            r["exspy_kk"] = run_part("exspy-kk", str(ssd))
        r["ours_deconvolve_zarr"] = run_part(
            "ours-deconvolve-zarr", str(sig), str(zlp), str(tmp / "o1.zarr")
        )
        r["copy_signal"] = run_part("copy", str(sig), str(tmp / "c1.zarr"))
        r["ours_kk_zarr"] = run_part("ours-kk-zarr", str(ssd), str(tmp / "o2.zarr"))
        r["copy_ssd"] = run_part("copy", str(ssd), str(tmp / "c2.zarr"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = a.size * a.size
    print(f"{a.size} x {a.size} x {N_E} float32 ({n} spectra), {r['cpus']} cores, same run")
    for job in ("deconvolve", "kk"):
        ours = r[f"ours_{job}_memory"]
        line = (
            f"  {job:<11} in memory: ours {ours['wall_s']:.2f} s "
            f"({n / ours['wall_s']:.0f} sp/s, peak {ours['peak_rss_GB']:.2f} GB)"
        )
        if f"exspy_{job}" in r:
            ex = r[f"exspy_{job}"]
            line += (
                f"; exspy {ex['wall_s']:.2f} s (peak {ex['peak_rss_GB']:.2f} GB): "
                f"{ex['wall_s'] / ours['wall_s']:.1f}x exspy (target >= 8x, < 1 GB)"
            )
        if ours.get("warm_up_s"):
            line += (
                f"; numba's start-up before the clock {ours['warm_up_s']:.2f} s (once a process)"
            )
        print(line)
        if f"before_{job}_memory" in r:
            b = r[f"before_{job}_memory"]
            line = (
                f"  {job:<11} in memory, before ({a.before}): {b['wall_s']:.2f} s "
                f"(peak {b['peak_rss_GB']:.2f} GB)"
            )
            if f"exspy_{job}" in r:
                line += f": {r[f'exspy_{job}']['wall_s'] / b['wall_s']:.1f}x exspy"
            fft = r[f"fft_{job}"]
            line += f"; ratio 1 {fft['wall_s'] / b['wall_s']:.2f}"
            print(line)
        fft = r[f"fft_{job}"]
        print(
            f"  {job:<11} ratio 1: bare batched FFTs {fft['wall_s']:.2f} s (length "
            f"{fft['fft_length']}) / ours {ours['wall_s']:.2f} s = "
            f"{fft['wall_s'] / ours['wall_s']:.2f} (target >= 0.33)"
        )
        z = r[f"ours_{job}_zarr"]
        c = r["copy_signal" if job == "deconvolve" else "copy_ssd"]
        print(
            f"  {job:<11} ratio 2: copying the store {c['wall_s']:.2f} s / ours zarr->zarr "
            f"{z['wall_s']:.2f} s = {c['wall_s'] / z['wall_s']:.2f} (target >= 0.5)"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
