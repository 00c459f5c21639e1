"""Download the wheels the prepared GPU check installs (benchmarks/gpu_check.py --wheels .whl).

The GPU machine (Python 3.12, x86-64, no network) has CuPy 14 for CUDA 13, NumPy, SciPy, xarray,
h5py, numba, pytest... but not dask, zarr, numcodecs, array-api-compat or RosettaSciIO. This
downloads exactly those (and array-api-strict, for the kernel tests' strict entry), at the
versions tested here, with the dependencies of theirs that the machine lacks, as cp312
manylinux x86_64 wheels, into ``.whl/`` (git-ignored), and checks that every requirement of
every wheel is either among them or already on the machine (:data:`ON_THE_MACHINE`, from the
device notes' package list). About 20 MB.

    python benchmarks/fetch_gpu_wheels.py [--dest .whl]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

#: What the GPU check needs that the GPU machine lacks, pinned to what this repository tests.
WHEELS = {
    "dask": "2026.8.0",
    "distributed": "2026.8.0",  # tests import the schedulers
    "partd": "1.4.2",
    "locket": "1.0.0",
    "tornado": "6.6.1",
    "zict": "3.0.0",
    "tblib": "3.2.2",
    "zarr": "3.1.6",
    "donfig": "0.8.1.post1",
    "google-crc32c": "1.9.0",
    "numcodecs": "0.16.6",
    "array-api-compat": "1.16.0",
    "array-api-strict": "2.6.1",
    "rosettasciio": "0.15.0",
    "python-box": "7.4.1",
    "pint": "0.25.3",
    "flexcache": "0.3",
    "flexparser": "0.4",
    "platformdirs": "4.14.9",
}

#: Packages already on the GPU machine's Python (the device notes' list, normalised names).
ON_THE_MACHINE = set(
    """click cloudpickle fsspec packaging pyyaml toolz numpy scipy xarray h5py numba cupy-cuda13x
    jinja2 msgpack psutil sortedcontainers urllib3 typing-extensions python-dateutil pandas
    matplotlib scikit-learn tqdm pytest hypothesis six markupsafe pillow""".split()
)

PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def download(dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        *[a for p in PLATFORMS for a in ("--platform", p)],
        "-d",
        str(dest),
        *[f"{k}=={v}" for k, v in WHEELS.items()],
    ]
    subprocess.run(cmd, check=True)
    wanted = {_norm(k) for k in WHEELS}
    kept = []
    for whl in sorted(dest.glob("*.whl")):
        name = _norm(whl.name.split("-")[0])
        version = whl.name.split("-")[1]
        if name not in wanted or version != WHEELS[next(k for k in WHEELS if _norm(k) == name)]:
            whl.unlink()  # one version of each: two stop the whole install
        else:
            kept.append(whl)
    return kept


def missing_requirements(wheels: list[Path]) -> list[str]:
    """Requirements (for CPython 3.12 on Linux, no extras) that neither the wheels nor the
    machine satisfy."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    env = default_environment()
    env.update(python_version="3.12", python_full_version="3.12.3", sys_platform="linux")
    have = {_norm(k) for k in WHEELS} | ON_THE_MACHINE
    out = []
    for whl in wheels:
        with zipfile.ZipFile(whl) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            for line in z.read(meta).decode().splitlines():
                if not line.startswith("Requires-Dist:"):
                    continue
                req = Requirement(line.split(":", 1)[1].strip())
                if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
                    continue
                if _norm(req.name) not in have:
                    out.append(f"{whl.name}: {req}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", default=str(Path(__file__).resolve().parents[1] / ".whl"))
    a = ap.parse_args(argv)
    wheels = download(Path(a.dest))
    missing = missing_requirements(wheels)
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wheels)} wheels, {size:.1f} MiB in {a.dest}")
    if len(wheels) != len(WHEELS):
        print(f"expected {len(WHEELS)} wheels", file=sys.stderr)
        return 1
    if missing:
        print("requirements neither the wheels nor the machine satisfy:", *missing, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
