"""The film fit's recovery tests over the notes' whole grid (thin-film-theory.md section 4.2).

The test suite runs one point of each recovery test (tests/kernels/test_film_fit.py: T1 at
20 nm coupled and 10 nm Kroger, T5 at 3 nm NR and retarded); this script runs the grid, too slow
for the suite: T1 with coupled-NR and Kroger truths (matching models) at t = 10, 20, 50, 100 nm and
Gamma = 1 and 0.5 eV (Al Drude, Ep 15 eV), and T5 (oxide/Al/oxide, 19 nm of Al) at d = 2, 3, 4 nm,
NR and retarded. Truth: the forward model itself, Poisson at N0 = 1e6, 200 kV, 100 mrad, 0.2 eV
channels (3-40 eV for T1, 4.5-30 eV for T5), seed + 2 jittered starts.

Per point it prints the pass criteria of the notes: the largest |bias| / standard error over the
parameters, the Monte-Carlo scatter over the mean Cramer-Rao sigma (0.7-1.3), the largest eps1
RMS error over 3-25 eV (< 0.5 %), the largest zero-crossing error (< 5 meV), fatal flags::

    python benchmarks/film_recovery.py [--realisations 16] [--kroger-realisations 4] [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from eelsgpu import synthetic
from eelsgpu.kernels import film_fit as FF


def _fit(fm, truth, n, seed, iterations=16):
    p = np.tile(np.log(np.asarray(truth, dtype=float)), (n, 1))
    n0 = np.full(n, 1e6)
    y = np.random.default_rng(seed).poisson(FF.model_counts(np, fm, p, n0)).astype(float)
    t0 = time.perf_counter()
    fit = FF.fit_pixels(np, fm, y, n0, FF.seed_from_ssd(np, fm, y, n0), iterations=iterations)
    return fit, time.perf_counter() - t0


def _row(fit, truth, fm, gamma=None):
    truth = np.asarray(truth, dtype=float)
    p = np.exp(fit.p_log)
    sig = p * np.sqrt(np.diagonal(fit.cov, axis1=1, axis2=2))
    n = p.shape[0]
    se = np.mean(sig, axis=0) / np.sqrt(n)
    bias = np.max(np.abs(np.mean(p, axis=0) - truth) / se)
    scatter = (
        np.std(p, axis=0, ddof=1) / np.mean(sig, axis=0) if n > 2 else np.full(p.shape[1], np.nan)
    )
    out = {"bias_se": bias, "mc_over_crlb": (np.nanmin(scatter), np.nanmax(scatter))}
    if gamma is not None:
        grid = np.linspace(3.0, 25.0, 441)
        eps, _ = FF.film_eps(np, fm, fit.p_log, grid)
        true = synthetic.Drude(15.0, gamma).eps(grid)
        rms = np.sqrt(np.mean((eps.real - true.real) ** 2, axis=-1) / np.mean(true.real**2))
        zero = np.sqrt(p[:, 1] ** 2 - p[:, 2] ** 2)
        out["eps1_rms"] = float(np.max(rms))
        out["zero_meV"] = float(np.max(np.abs(zero - np.sqrt(15.0**2 - gamma**2)))) * 1e3
    fatal = [FF.fit_flag_names(int(f) & FF.FIT_FATAL) for f in fit.flags]
    out["fatal"] = sum(bool(f) for f in fatal)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--realisations", type=int, default=16)
    ap.add_argument("--kroger-realisations", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="t = 20 nm and d = 3 nm only")
    args = ap.parse_args()
    thick = (20.0,) if args.quick else (10.0, 20.0, 50.0, 100.0)
    print("## T1: matching models, Al Drude 15 eV (pass: bias < 3 SE, MC/CRLB 0.7-1.3, eps1 RMS")
    print("< 0.5 %, zero crossing < 5 meV, no fatal flag)\n")
    print("| truth = model | t (nm) | Gamma (eV) | n | max bias / SE | MC / CRLB | eps1 RMS | "
          "zero (meV) | fatal | s/spectrum |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    lo = np.arange(3.0, 40.0, 0.2)
    for kind, n in (("coupled", args.realisations), ("kroger", args.kroger_realisations)):
        fm = FF.fit_model(lo, lo + 0.2, 200.0, 100.0, kind=kind, n_sub=1)
        for t in thick:
            for gamma in (1.0, 0.5):
                truth = [t, 15.0, gamma]
                fit, dt = _fit(fm, truth, n, 100 + int(t) + int(10 * gamma))
                r = _row(fit, truth, fm, gamma)
                lo_mc, hi_mc = r["mc_over_crlb"]
                print(
                    f"| {kind} | {t:g} | {gamma:g} | {n} | {r['bias_se']:.2f} | "
                    f"{lo_mc:.2f}-{hi_mc:.2f} | {100 * r['eps1_rms']:.3f} % | "
                    f"{r['zero_meV']:.2f} | {r['fatal']} | {dt / n:.2f} |",
                    flush=True,
                )
    print("\n## T5: oxide/Al/oxide, 19 nm Al, Drude 15/0.6 eV (pass: d within 3 sigma)\n")
    print("| truth = model | d (nm) | n | d fitted (mean +- sigma) | max bias / SE | fatal | "
          "s/spectrum |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    lo = np.arange(4.5, 30.0, 0.2)
    for retarded in (False, True):
        fm = FF.fit_model(
            lo, lo + 0.2, 200.0, 100.0, kind="layered", fit_oxide=True, retarded=retarded, n_sub=1
        )
        n = 2
        for d in (3.0,) if args.quick else (2.0, 3.0, 4.0):
            truth = [19.0, 15.0, 0.6, d]
            fit, dt = _fit(fm, truth, n, 200 + int(d), iterations=14)
            r = _row(fit, truth, fm)
            p = np.exp(fit.p_log[:, 3])
            s = p * np.sqrt(fit.cov[:, 3, 3])
            print(
                f"| {'retarded' if retarded else 'NR'} | {d:g} | {n} | "
                f"{np.mean(p):.3f} +- {np.mean(s):.3f} | {r['bias_se']:.2f} | {r['fatal']} | "
                f"{dt / n:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
