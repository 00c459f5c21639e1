"""The prepared GPU check: one command, under 8 minutes, on a GPU machine with no network.

    python benchmarks/gpu_check.py --wheels .whl --out $OUT            # on the GPU machine
    python benchmarks/gpu_check.py --wheels .whl --out /tmp/o --standin --size 64   # rehearsal

It (1) installs the wheels it is given (``benchmarks/fetch_gpu_wheels.py`` downloads them:
dask, zarr, numcodecs, array-api-compat, RosettaSciIO and what they need) into a fresh folder
with ``pip --no-index --no-deps --target`` and puts it on the path; (2) records the machine
(GPU, driver, CuPy, NumPy); (3) runs the ``gpu``-marked tests and the kernel tests (the ``xp``
fixture has a CuPy entry where a GPU is usable, so every kernel test reruns on CuPy) and the
engine tests; (4) compares every result variable of deconvolve (three outputs), thickness
(log-ratio and KK), Kramers-Kronig (0 and 10 surface iterations) and the band gap computed on
the GPU with the CPU's, on the synthetic cube; (5) times deconvolve, thickness and
Kramers-Kronig on a ``--size`` x ``--size`` x 2048 float32 cube (256 by default): with the cube
in device memory (the block kernel on device-resident blocks, compute only), from host memory
(the analysis on an in-memory image, through the engine's staging and copies) and zarr to zarr;
(6) writes everything as JSON (``$OUT/gpu_check.json``, the pytest log beside it). Between (3)
and (4) it checks each fused CUDA kernel (``kernels/fourier_log.cu``, ``kernels/tails.cu``) as the
GPU path gets it -- compiled, checked against its array-API twin at first use, or fallen back
with a warning -- against the twin on the probes at two sizes, with the time of one call of each
(``fused_kernels`` in the JSON): the first time those kernels run on a GPU.

``--standin`` runs the same steps with the counting stand-in (:data:`eelsgpu.engine.counting.xp`,
array-api-strict) in place of CuPy: the check of the check on a machine without a GPU (use a
small ``--size``: the stand-in is slow). Each step has a share of ``--budget`` seconds and is
skipped, saying so, when the time is spent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
T0 = time.perf_counter()


def _elapsed() -> float:
    return time.perf_counter() - T0


def install_wheels(wheels: Path, target: Path) -> dict[str, Any]:
    files = sorted(str(p) for p in Path(wheels).glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    cmd += ["--no-compile", "--no-cache-dir", "--upgrade", "--target", str(target), *files]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"installing the wheels failed:\n{proc.stdout}\n{proc.stderr}")
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(target), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    return {"wheels": [Path(f).name for f in files], "seconds": time.perf_counter() - t}


def machine(standin: bool) -> dict[str, Any]:
    import numpy as np

    info: dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__}
    info["cpus"] = os.cpu_count()
    if standin:
        info["device"] = "counting stand-in (array-api-strict); NO GPU"
        return info
    from eelsgpu.engine.device import gpu_status

    st = gpu_status()
    info["gpu_usable"] = st.usable
    info["gpu_reason"] = st.reason
    info["gpu_name"] = st.name
    try:
        import cupy

        info["cupy"] = cupy.__version__
        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        info["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        free, total = cupy.cuda.runtime.memGetInfo()
        info["gpu_memory_GiB"] = [free / 2**30, total / 2**30]
    except Exception as exc:  # recorded, not fatal: the tests say more
        info["cupy_error"] = f"{type(exc).__name__}: {exc}"
    return info


def run_tests(out: Path, standin: bool, timeout: float) -> dict[str, Any]:
    """The kernel and engine tests (the xp fixture reruns each kernel test on CuPy where a GPU
    is usable) and the gpu-marked tests everywhere else, with pytest in subprocesses."""
    log = out / "pytest.log"
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"]
    gpu_files = [
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / "tests").rglob("test_*.py"))
        if "mark.gpu" in p.read_text() and p.parent.name not in ("kernels", "engine")
    ]
    commands = {
        "kernels+engine": [*base, "tests/kernels", "tests/engine"],
        "gpu-marked": [*base, "-m", "gpu", *gpu_files],
    }
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    results: dict[str, Any] = {"standin": standin}
    t = time.perf_counter()
    for name, cmd in commands.items():
        left = timeout - (time.perf_counter() - t)
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=max(10, left)
            )
            text, rc = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            text, rc = f"{exc.stdout or ''}\nTIMED OUT after {left:.0f} s", -1
        with open(log, "a") as fh:
            fh.write(f"==== {name}: {' '.join(cmd)}\n{text}\n")
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        results[name] = {
            "returncode": rc,
            "summary": lines[-1] if lines else "",
            "failed": [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))],
        }
    results["seconds"] = time.perf_counter() - t
    return results


# --------------------------------------------------------------------------- fused kernels
def _fused_cases(xp: Any) -> dict[str, list[tuple[str, Any, Any, Any]]]:
    """Per fused kernel: (case, make the twin's arguments, the twin, agree(want, got) on host
    arrays) -- the probes the first-use checks run, at a small and at a block's size."""
    import numpy as np

    from eelsgpu.engine import cuda
    from eelsgpu.kernels import fourier_log as fl
    from eelsgpu.kernels import tails

    def consts(k: int) -> Any:
        p = 2 * (k - 1)
        nu = xp.asarray((np.arange(k) / (p * 0.05)).astype(np.float32))
        return fl.RolloffConsts(p, 0.05, fl.MAX_RESOLUTION_FWHM, True, max(8, k // 64), nu)

    def rolloff_agree(want: Any, got: Any) -> bool:
        return cuda._agree(want, got)

    def rolloff_twin(*a: Any) -> dict[str, Any]:
        return fl.rolloff_twin(xp, *a)

    def tails_twin(*a: Any) -> tuple[Any, ...]:
        return tails.tails_twin(xp, *a)

    return {
        fl.FUSED_NAME: [
            (
                f"probe, {k} frequencies",
                lambda k=k: fl.rolloff_probe(xp, k, consts(k)),
                rolloff_twin,
                rolloff_agree,
            )
            for k in (1025, 2049)
        ],
        tails.FUSED_NAME: [
            (
                f"probe, {n} rows",
                lambda n=n: tails.tails_probe(xp, n, seed=n % 97),
                tails_twin,
                cuda.tails_agree,
            )
            for n in (256, 65536)
        ],
    }


def _host(out: Any) -> Any:
    from eelsgpu.engine.device import to_host

    if isinstance(out, dict):
        return {k: to_host(v) for k, v in out.items()}
    return tuple(to_host(v) for v in out)


def fused_kernels(xp: Any, repeats: int = 5) -> dict[str, Any]:
    """Each fused CUDA kernel of :mod:`eelsgpu.engine.cuda` (``kernels/*.cu``) as the GPU path
    gets it: served by the registry (compiled on first use and checked against its array-API
    twin at that size; a failure falls back to the twin with a warning, recorded here), its
    result against the twin on the probes at two sizes, and the seconds of one call of each
    (the median of ``repeats``). On the counting stand-in the served kernel is the twin counted
    as one launch: the check of the check, without a GPU."""
    import warnings

    from eelsgpu.engine import cuda
    from eelsgpu.kernels import _fused

    cuda.register_fused_kernels()
    report: dict[str, Any] = {}
    for name, cases in _fused_cases(xp).items():
        entry: dict[str, Any] = {}
        for case, make, twin, agree in cases:
            row: dict[str, Any] = {}
            try:
                args = make()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    fused = _fused.lookup(name, xp)
                    row["served"] = fused is not None
                    got = _host(fused(*args)) if fused is not None else None
                row["warnings"] = [str(w.message) for w in caught]
                want = _host(twin(*args))
                if got is not None:
                    row["agrees_with_twin"] = bool(agree(want, got))
                state = cuda._TAILS if name == "tails_solve" else cuda._FUSED
                row["fused_kernel_used"] = bool(state.get("kernel") is not None) and not any(
                    v is False for k, v in state.items() if isinstance(k, tuple)
                )
                for label, fn in (("fused", fused), ("twin", twin)):
                    if fn is None:
                        continue
                    times = []
                    for _ in range(repeats):
                        t = time.perf_counter()
                        fn(*args)
                        _sync(xp)
                        times.append(time.perf_counter() - t)
                    row[f"{label}_s"] = sorted(times)[len(times) // 2]
            except Exception as exc:  # recorded: the rest of the check goes on
                row["error"] = f"{type(exc).__name__}: {exc}"
                row["traceback"] = traceback.format_exc()
            entry[case] = row
        report[name] = entry
    return report


# --------------------------------------------------------------------------- the jobs
def cube(size: int, seed: int = 0):
    """A noisy Al-like Drude image, size x size x 2048 float32 (0.05 eV from -5 eV), t/lambda
    0.3-1.5 across it, in memory (NumPy under the DataArray)."""
    import numpy as np

    from eelsgpu import synthetic

    tl = synthetic.thickness_map((size, size), "gradient", (0.3, 1.5))
    sim = synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0),
        t_over_lambda=tl,
        shape=(size, size),
        n_channels=2048,
        dispersion_eV=0.05,
        noise=True,
        seed=seed,
        dtype=np.float32,
    )
    return sim["signal"].compute()


def onsets(size: int):
    import numpy as np

    from eelsgpu.model import spectrum_image

    e = 0.1 + np.arange(2048) * 0.003
    eg = np.linspace(1.5, 3.0, size * size)[:, None]
    lam = 1000 * np.clip(e - eg, 0, None) ** 1.5 + 2e4 * (e / 0.5) ** -2.5 + 20
    y = np.random.default_rng(1).poisson(lam).astype(np.float32).reshape(size, size, -1)
    return spectrum_image(y, e).compute()


def jobs(ssd):
    import eelsgpu

    return {
        "deconvolve-reconvolved-zlp": lambda si, d: eelsgpu.deconvolve(si, device=d),
        "deconvolve-band-limited": lambda si, d: eelsgpu.deconvolve(
            si, output="band-limited", device=d
        ),
        "deconvolve-ssd": lambda si, d: eelsgpu.deconvolve(si, output="ssd", device=d),
        "thickness-log-ratio": lambda si, d: eelsgpu.thickness(si, tail="auto", device=d),
        "thickness-kk": lambda si, d: eelsgpu.thickness(
            si, method="kk", zlp="mirror", metal=True, device=d
        ),
        "kk-0": lambda si, d: eelsgpu.kramers_kronig(ssd, metal=True, device=d),
        "kk-10": lambda si, d: eelsgpu.kramers_kronig(ssd, metal=True, iterations=10, device=d),
    }


def _compare(gpu_ds, cpu_ds) -> dict[str, Any]:
    import numpy as np

    out = {}
    for k in cpu_ds.data_vars:
        a = np.asarray(cpu_ds[k].values)
        b = np.asarray(gpu_ds[k].values)
        if a.dtype.kind in "biu":
            out[k] = {"equal_fraction": float(np.mean(a == b))}
            continue
        both = np.isfinite(a) & np.isfinite(b)
        scale = float(np.nanmax(np.abs(a))) if np.isfinite(a).any() else 1.0
        diff = float(np.max(np.abs(a[both] - b[both]))) if both.any() else 0.0
        out[k] = {
            "max_abs_diff_over_max": diff / (scale or 1.0),
            "nan_mismatch_fraction": float(np.mean(np.isfinite(a) != np.isfinite(b))),
        }
    worst = max((v.get("max_abs_diff_over_max", 0.0) for v in out.values()), default=0.0)
    return {"variables": out, "worst_relative": worst}


def compare_all(device: Any, size: int, deadline: float) -> dict[str, Any]:
    """Every job's every variable, GPU (or stand-in) against the CPU, on a size x size cube."""
    import warnings

    import eelsgpu

    warnings.simplefilter("ignore")
    si = cube(size)
    ssd = eelsgpu.deconvolve(si, output="band-limited", device="cpu").compute()
    res: dict[str, Any] = {"size": size}
    for name, run in jobs(ssd).items():
        if _elapsed() > deadline:
            res[name] = "skipped: time"
            continue
        try:
            cpu = run(si, "cpu").compute()
            dev = run(si, device).compute()
            res[name] = _compare(dev, cpu)
        except Exception:
            res[name] = {"error": traceback.format_exc(limit=4)}
    if _elapsed() < deadline:
        try:
            on = onsets(max(4, size // 2))
            cpu = eelsgpu.bandgap(on, window_eV=(0.8, 5.0), device="cpu").compute()
            dev = eelsgpu.bandgap(on, window_eV=(0.8, 5.0), device=device).compute()
            res["bandgap"] = _compare(dev, cpu)
        except Exception:
            res["bandgap"] = {"error": traceback.format_exc(limit=4)}
    return res


class _Recorder:
    """Records the engine call an analysis makes (the declaration, its parameters, extras)."""

    def __init__(self):
        self.calls = []

    def __enter__(self):
        from eelsgpu import engine

        self._real = engine.apply_kernel

        def spy(decl, si, **kw):
            self.calls.append((decl, si, kw))
            return self._real(decl, si, **kw)

        engine.apply_kernel = spy
        return self

    def __exit__(self, *exc):
        from eelsgpu import engine

        engine.apply_kernel = self._real


def _sync(xp) -> None:
    if xp.__name__.split(".")[-1] == "cupy":
        import cupy

        cupy.cuda.get_current_stream().synchronize()


def time_in_device_memory(run, si, device, xp, rows: int = 16384) -> dict[str, Any]:
    """The block kernel the analysis declares, on blocks of ``rows`` spectra already on the
    device: compute only (no copies, no dask). Returns seconds and spectra/s."""
    import numpy as np

    with _Recorder() as rec:
        run(si, "cpu")  # only to learn the kernel and its parameters (not computed)
    decl, si_used, kw = rec.calls[-1]
    params = {k: v for k, v in kw.items() if k not in ("device", "extras", "attrs", "tile_pixels")}
    data = np.asarray(si_used.values, dtype=np.float32)
    flat = data.reshape(-1, data.shape[-1])
    energy = xp.asarray(np.asarray(si_used["energy"].values, dtype=np.float64))
    dev_params = {k: (xp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in params.items()}
    extras = {}
    for k, v in (kw.get("extras") or {}).items():
        arr = np.asarray(getattr(v, "values", v))
        extras[k] = arr.reshape(flat.shape[0], -1) if arr.ndim == data.ndim else arr.reshape(-1)
    rows = min(rows, flat.shape[0])
    blocks = [
        (
            xp.asarray(flat[s : s + rows]),
            {k: xp.asarray(v[s : s + rows]) for k, v in extras.items()},
        )
        for s in range(0, flat.shape[0], rows)
    ]
    warm = {k: v[:64, ...] for k, v in blocks[0][1].items()}
    decl.kernel(blocks[0][0][:64, ...], energy, **dev_params, **warm)  # plans, compilation
    _sync(xp)
    t = time.perf_counter()
    for b, ex in blocks:
        decl.kernel(b, energy, **dev_params, **ex)
    _sync(xp)
    dt = time.perf_counter() - t
    return {"seconds": dt, "spectra_per_s": flat.shape[0] / dt, "rows_per_call": rows}


def timings(device: Any, xp: Any, size: int, deadline: float) -> dict[str, Any]:
    import warnings

    import eelsgpu
    from eelsgpu.io import open_store, write_store

    warnings.simplefilter("ignore")
    si = cube(size)
    n = size * size
    tmp = Path(tempfile.mkdtemp(prefix="eelsgpu-gpu-check-"))
    write_store(si.to_dataset(name="signal"), tmp / "in.zarr")
    ssd = eelsgpu.deconvolve(si, output="band-limited", device=device).compute()
    write_store(ssd, tmp / "ssd.zarr")
    todo = {
        "deconvolve": (lambda s, d: eelsgpu.deconvolve(s, device=d), "in.zarr", "signal"),
        "thickness": (lambda s, d: eelsgpu.thickness(s, device=d), "in.zarr", "signal"),
        "kramers_kronig": (
            lambda s, d: eelsgpu.kramers_kronig(s, metal=True, device=d),
            "ssd.zarr",
            None,
        ),
    }
    res: dict[str, Any] = {"size": size, "spectra": n}
    for name, (run, store, var) in todo.items():
        if _elapsed() > deadline:
            res[name] = "skipped: time"
            continue
        data = si if var else ssd
        r: dict[str, Any] = {}
        try:
            r["device_memory"] = time_in_device_memory(run, data, device, xp)
            t = time.perf_counter()
            run(data, device).compute()
            r["host_memory"] = {"seconds": time.perf_counter() - t}
            t = time.perf_counter()
            src = open_store(tmp / store)
            src = src[var] if var else src
            write_store(run(src, device), tmp / f"out-{name}.zarr", overwrite=True)
            r["zarr_to_zarr"] = {"seconds": time.perf_counter() - t}
            for k in ("host_memory", "zarr_to_zarr"):
                r[k]["spectra_per_s"] = n / r[k]["seconds"]
        except Exception:
            r["error"] = traceback.format_exc(limit=4)
        res[name] = r
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheels", default=None, help="folder of wheels to install first")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-check-out"))
    ap.add_argument("--standin", action="store_true", help="the counting stand-in, no GPU")
    ap.add_argument("--size", type=int, default=256, help="pixels per side of the timed cube")
    ap.add_argument("--compare-size", type=int, default=32)
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for everything")
    ap.add_argument("--skip-tests", action="store_true")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(a)}
    if a.wheels:
        report["install"] = install_wheels(Path(a.wheels), Path(tempfile.mkdtemp()) / "site")
    sys.path.insert(0, str(ROOT))
    report["machine"] = machine(a.standin)

    def save():
        report["elapsed_s"] = _elapsed()
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))

    save()
    if a.standin:
        from eelsgpu.engine import counting

        device, xp = counting.xp, counting.xp
    else:
        import cupy
        from array_api_compat import array_namespace

        device, xp = "gpu", array_namespace(cupy.empty(0))
    if not a.skip_tests:
        report["tests"] = run_tests(out, a.standin, timeout=0.45 * a.budget)
        save()
    report["fused_kernels"] = fused_kernels(xp)
    save()
    report["compare"] = compare_all(device, a.compare_size, 0.7 * a.budget)
    save()
    report["timings"] = timings(device, xp, a.size, 0.95 * a.budget)
    save()
    print(json.dumps({k: report[k] for k in ("machine", "elapsed_s")}, default=str))
    print(f"written: {out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
