"""Band-gap maps: eelsgpu's grid/closed-form fit against a per-pixel scipy curve_fit loop.

The peer is what a script (or EELSfitter's bandgap step) does: scipy.optimize.curve_fit of
I = A (E - Eg)^b + c0 + c1 (E/E_lo)^-r on one spectrum after another. Both see the same
synthetic Poisson onsets (Eg from 1.5 to 3 eV across the image, b = 1.5, a ZLP-like tail), the
same window; printed: time per pixel, valid fraction and accuracy against the truth, and ratios.

    python benchmarks/bench_bandgap.py [--size 48] [--peer-pixels 200]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from scipy.optimize import curve_fit

from eelsgpu.analysis.bandgap import bandgap
from eelsgpu.model import spectrum_image


def make(size: int, seed: int = 0):
    e = np.arange(0.1, 6.0, 0.02)
    eg = 1.5 + 1.5 * np.linspace(0, 1, size)[None, :] * np.ones((size, 1))
    lam = 1000 * np.clip(e - eg[..., None], 0, None) ** 1.5 + 2e4 * (e / 0.5) ** -2.5 + 20
    return e, np.random.default_rng(seed).poisson(lam).astype(np.float32), eg


def model(e, a, eg, b, c0, c1, r):
    return a * np.clip(e - eg, 0, None) ** b + c0 + c1 * (e / e[0]) ** -r


def peer(e, y, window):
    sel = (e >= window[0]) & (e <= window[1])
    es, ys = e[sel], y[sel]
    p0 = (500.0, 0.5 * (window[0] + window[1]), 1.0, 20.0, ys[0], 2.0)
    lo = (0, window[0], 0.2, -np.inf, 0, 0.5)
    hi = (np.inf, window[1], 3.0, np.inf, np.inf, 8.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, cov = curve_fit(
            model, es, ys, p0=p0, bounds=(lo, hi), sigma=np.sqrt(np.clip(ys, 1, None)), maxfev=4000
        )
    return p[1], p[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--peer-pixels", type=int, default=200)
    args = ap.parse_args()
    e, y, eg_true = make(args.size)
    window = (0.8, 5.0)
    si = spectrum_image(y, e)
    t0 = time.perf_counter()
    ds = bandgap(si, window_eV=window, model="free", device="cpu").compute()
    t_ours = time.perf_counter() - t0
    n = y.shape[0] * y.shape[1]
    v = ds["valid"].values
    err = np.abs(ds["bandgap_eV"].values - eg_true)[v]
    print(f"image {args.size}x{args.size} x {e.size} channels, window {window} eV, model free")
    print(
        f"eelsgpu.bandgap (cpu): {t_ours:.2f} s, {1e3 * t_ours / n:.2f} ms/pixel, "
        f"valid {v.mean():.3f}, |Eg error| median {np.median(err):.4f} eV, "
        f"95th pct {np.percentile(err, 95):.4f} eV, type right "
        f"{np.mean(ds['gap_type'].values[v] == 1):.3f}, |b error| median "
        f"{np.median(np.abs(ds['exponent_b'].values[v] - 1.5)):.4f}"
    )

    rng = np.random.default_rng(1)
    flat = y.reshape(n, -1)
    idx = rng.choice(n, size=min(args.peer_pixels, n), replace=False)
    t0 = time.perf_counter()
    res, fails = [], 0
    for i in idx:
        try:
            res.append(peer(e, flat[i].astype(float), window))
        except RuntimeError:
            res.append((np.nan, np.nan))
            fails += 1
    t_peer = (time.perf_counter() - t0) / idx.size
    res = np.array(res)
    perr = np.abs(res[:, 0] - eg_true.reshape(-1)[idx])
    ok = np.isfinite(perr)
    print(
        f"scipy curve_fit loop:  {1e3 * t_peer:.2f} ms/pixel on {idx.size} pixels "
        f"({fails} did not converge), |Eg error| median {np.nanmedian(perr):.4f} eV, "
        f"95th pct {np.nanpercentile(perr[ok], 95):.4f} eV, type right "
        f"{np.mean(res[ok, 1] > 1.0):.3f}"
    )
    print(f"speed ratio (curve_fit / eelsgpu, per pixel, CPU): {t_peer / (t_ours / n):.1f}x")


if __name__ == "__main__":
    main()
