"""Window maps and PCA: eelsgpu vs HyperSpy/exspy on the same synthetic core-loss cube.

The cube (default 128 x 128 x 1024 float32, 700-1723 eV at 1 eV/ch) is a power-law background
with Cu-L and Zn-L-like edges whose strengths vary across the image, with Poisson noise. Parts,
each in its own process under ``/usr/bin/time -v`` (peak RSS measured from outside):

* ``ours-maps``: :func:`eelsgpu.window_maps` (power-law backgrounds, Cu and Zn windows, their
  ratio), in memory -> computed maps;
* ``hs-maps``: exspy ``remove_background(signal_range, "PowerLaw")`` (fast two-area estimate, the
  default) + ``isig[...].integrate1D`` for both windows;
* ``ours-pca``: :func:`eelsgpu.decompose` (randomised, block-wise PCA, 20 components, Poisson
  normalised) + loadings computed;
* ``hs-pca``: HyperSpy ``decomposition(normalize_poissonian_noise=True)`` (full SVD).

Run (take the shared lock; a few minutes at the default size)::

    flock /tmp/eelsgpu-bench.lock python benchmarks/bench_maps.py [--size 128]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import warnings

import numpy as np

N_E = 1024
E0, DE = 700.0, 1.0
WINDOWS = {"Cu": (931.0, 1000.0), "Zn": (1020.0, 1100.0)}
BACKGROUND = {"Cu": (850.0, 925.0), "Zn": (940.0, 1015.0)}


def cube(size: int) -> tuple[np.ndarray, np.ndarray]:
    e = E0 + DE * np.arange(N_E)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    cu = np.exp(-((xx - 0.35) ** 2 + (yy - 0.5) ** 2) / 0.04)
    zn = np.exp(-((xx - 0.65) ** 2 + (yy - 0.5) ** 2) / 0.04)
    bg = 2e10 * e**-2.5
    edge_cu = np.where(e >= 931, (e / 931.0) ** -3, 0.0) * 40
    edge_zn = np.where(e >= 1020, (e / 1020.0) ** -3, 0.0) * 40
    mean = bg + cu[..., None] * edge_cu + zn[..., None] * edge_zn
    rng = np.random.default_rng(0)
    return rng.poisson(mean).astype(np.float32), e


def true_maps(size: int) -> dict[str, np.ndarray]:
    """The edge counts in each window (no background, no noise): the exact answer."""
    e = E0 + DE * np.arange(N_E)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    amp = {
        "Cu": np.exp(-((xx - 0.35) ** 2 + (yy - 0.5) ** 2) / 0.04),
        "Zn": np.exp(-((xx - 0.65) ** 2 + (yy - 0.5) ** 2) / 0.04),
    }
    onset = {"Cu": 931.0, "Zn": 1020.0}
    out = {}
    for k, (lo, hi) in WINDOWS.items():
        edge = 40 * (e / onset[k]) ** -3 * (e >= onset[k])
        sel = (e >= lo) & (e <= hi)
        # (under Zn, the Cu edge's tail is a power law too: the fitted background takes it)
        out[k] = amp[k] * edge[sel].sum()
    return out


def part(name: str, size: int) -> dict:
    data, e = cube(size)
    t0 = time.perf_counter()
    if name.startswith("ours"):
        import eelsgpu
        from eelsgpu.model import spectrum_image

        si = spectrum_image(data, e)
        t0 = time.perf_counter()
        if name == "ours-maps":
            ds = eelsgpu.window_maps(
                si, WINDOWS, background=BACKGROUND, ratios=["Cu/Zn"], device="cpu"
            ).compute()
            out = {k: np.asarray(ds[k].values) for k in WINDOWS}
        else:
            ds = eelsgpu.decompose(si, "pca", n_components=20, device="cpu").compute()
            out = {"ev": ds["explained_variance_ratio"].values[:5]}
    else:
        warnings.simplefilter("ignore")
        import exspy  # noqa: F401
        import hyperspy.api as hs

        s = hs.signals.Signal1D(data)
        s.set_signal_type("EELS")
        s.axes_manager[-1].offset, s.axes_manager[-1].scale = E0, DE
        t0 = time.perf_counter()
        if name == "hs-maps":
            out = {}
            for k, (lo, hi) in WINDOWS.items():
                r = s.remove_background(
                    signal_range=BACKGROUND[k], background_type="PowerLaw", show_progressbar=False
                )
                out[k] = r.isig[lo:hi].integrate1D(-1).data
        else:
            s.decomposition(normalize_poissonian_noise=True, print_info=False)
            ev = s.learning_results.explained_variance
            out = {"ev": ev[:5] / np.sum(ev)}
    seconds = time.perf_counter() - t0
    np.savez(f"/tmp/bench_maps_{name}.npz", **out)
    return {"part": name, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--part")
    args = ap.parse_args()
    if args.part:
        print(json.dumps(part(args.part, args.size)))
        return
    results = {}
    for name in ("ours-maps", "hs-maps", "ours-pca", "hs-pca"):
        proc = subprocess.run(
            [
                "/usr/bin/time",
                "-v",
                sys.executable,
                __file__,
                "--part",
                name,
                "--size",
                str(args.size),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
        res = json.loads(line)
        res["peak_rss_MiB"] = rss / 1024
        results[name] = res
        print(f"{name:10s} {res['seconds']:8.2f} s   peak RSS {res['peak_rss_MiB']:7.0f} MiB")
    ours = np.load("/tmp/bench_maps_ours-maps.npz")
    peer = np.load("/tmp/bench_maps_hs-maps.npz")
    truth = true_maps(args.size)
    for k in WINDOWS:
        r = np.corrcoef(ours[k].ravel(), peer[k].ravel())[0, 1]
        r_ours = np.corrcoef(ours[k].ravel(), truth[k].ravel())[0, 1]
        r_peer = np.corrcoef(peer[k].ravel(), truth[k].ravel())[0, 1]
        print(
            f"{k} map: correlation eelsgpu vs exspy {r:.4f}; vs the true edge counts: "
            f"eelsgpu {r_ours:.4f}, exspy {r_peer:.4f}"
        )
    print(
        f"maps speed-up vs exspy: {results['hs-maps']['seconds'] / results['ours-maps']['seconds']:.1f}x"
    )
    print(
        f"PCA speed-up vs HyperSpy: {results['hs-pca']['seconds'] / results['ours-pca']['seconds']:.1f}x"
    )
    print(
        "explained variance ratio (first 5), ours:",
        np.round(np.load("/tmp/bench_maps_ours-pca.npz")["ev"], 5),
    )
    print(
        "explained variance ratio (first 5), HyperSpy:",
        np.round(np.load("/tmp/bench_maps_hs-pca.npz")["ev"], 5),
    )


if __name__ == "__main__":
    main()
