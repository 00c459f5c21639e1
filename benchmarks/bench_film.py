"""The film fit (eelsgpu.fit_dielectric / eelsgpu.kernels.film_fit): speed on this CPU, the GPU
estimate from operation counts, and the real Al film beside classic KK and exspy.

Run from the project's root (CPU, about 2-3 minutes; one core busy)::

    python benchmarks/bench_film.py [--pixels 32] [--no-real]

What it measures:

1. **CPU speed** (spectra/s, one process): the per-pixel fit (3 starts, 6 + 14 Levenberg-
   Marquardt steps, Jacobian every step) of Poisson spectra of Al films (Drude 15/0.6 eV, 12-30
   nm, N0 = 1e6, 200 kV, 100 mrad) at 0.1 eV channels over 4.5-25 eV: non-retarded coupled film
   (2 and 1 nodes per channel; 1, the default, is the centre rule), retarded Kroger slab,
   non-retarded and retarded oxide/Al/oxide; and :func:`eelsgpu.fit_dielectric` as a user runs
   it on an in-memory image (default options, all cores and one core);
   beside :func:`eelsgpu.kramers_kronig` (metal, no iteration, and 10 surface iterations) on the
   same pixels' SSDs (from eelsgpu.synthetic, whole axis 0-40 eV at 0.1 eV).
2. **GPU estimate**: one fit step of a batch run through the counting stand-in
   (:mod:`eelsgpu.engine.counting`, the array-API path a GPU runs): array operations (launches),
   host syncs and bytes moved; an H100 estimate = launches x 10 us + bytes / 2 TB/s (memory
   bound: about 60 flops per byte at most here), per spectrum for a batch of 4096 pixels.
3. **Real Al film** (pytemlib/AL-DFoffset0.00.dm3, threshold ZLP, band-limited SSD): the fits
   (retarded and NR oxide/Al/oxide, bare film) against Rakic's optical eps1 at 8 and 10 eV, the
   zero crossing, the interface peak, the oxide, beside eelsgpu's classic KK and exspy 0.3.2's
   ``kramers_kronig_analysis`` of the same SSD (n = 1000 for the metal).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

LO, HI, BIN = 4.5, 25.0, 0.1
E0, BETA = 200.0, 100.0


def _fit_speed(kind: str, retarded: bool, n_pix: int, n_sub: int, oxide: bool) -> tuple:
    from eelsgpu.kernels import film_fit as FF

    lo = np.arange(LO, HI, BIN)
    fm = FF.fit_model(
        lo, lo + BIN, E0, BETA, kind=kind, retarded=retarded, fit_oxide=oxide, n_sub=n_sub
    )
    t = np.linspace(12.0, 30.0, n_pix)
    truth = [np.log(t), np.full(n_pix, np.log(15.0)), np.full(n_pix, np.log(0.6))]
    if oxide:
        truth.append(np.full(n_pix, np.log(2.5)))
    p = np.stack(truth, axis=-1)
    n0 = np.full(n_pix, 1e6)
    y = np.random.default_rng(1).poisson(FF.model_counts(np, fm, p, n0)).astype(float)
    seed = FF.seed_from_ssd(np, fm, y, n0)
    t0 = time.perf_counter()
    fit = FF.fit_pixels(np, fm, y, n0, seed, iterations=20)
    dt = time.perf_counter() - t0
    err = np.exp(fit.p_log[:, 0]) / t - 1.0
    return n_pix / dt, float(np.max(np.abs(err))), float(np.median(fit.deviance / fit.dof))


def _kk_speed(n_pix: int) -> tuple:
    import eelsgpu
    from eelsgpu import synthetic

    model = synthetic.Drude(15.0, 0.6)
    kw = dict(n_channels=500, dispersion_eV=0.1, offset_eV=-5.0, beam_energy_keV=E0,
              collection_angle_mrad=BETA, zlp_counts=1e6, dtype=np.float64)  # fmt: skip
    lam = float(synthetic.low_loss_spectrum(model, t_over_lambda=0.1, **kw).true_mean_free_path_nm)
    t = np.linspace(12.0, 30.0, n_pix)
    sim = synthetic.low_loss_image(
        model, t_over_lambda=t / lam, shape=(n_pix,), surface="coupled", noise=False, **kw
    )
    out = {}
    with warnings.catch_warnings():  # warm-up (imports, dask, caches) outside the clock
        warnings.simplefilter("ignore")
        eelsgpu.kramers_kronig(
            sim["true_ssd"][:2], zlp_intensity=sim["true_zlp_intensity"][:2], beam_energy_keV=E0,
            collection_angle_mrad=BETA, metal=True, device="cpu",
        ).compute()  # fmt: skip
    for it in (0, 10):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            ds = eelsgpu.kramers_kronig(
                sim["true_ssd"],
                zlp_intensity=sim["true_zlp_intensity"],
                beam_energy_keV=E0,
                collection_angle_mrad=BETA,
                metal=True,
                iterations=it,
                min_thickness_nm=5.0,  # let the surface iteration run on these thin films
                device="cpu",
            ).compute()
            dt = time.perf_counter() - t0
        err = np.asarray(ds.thickness_nm.values) / t - 1.0
        out[it] = (n_pix / dt, float(np.nanmax(np.abs(err))))
    return out


def _user_speed(n_pix: int, nodes: int, scheduler: str) -> tuple:
    """As a user runs it: :func:`eelsgpu.fit_dielectric` on an in-memory image of ``n_pix``
    coupled-film SSDs (eelsgpu.synthetic, Drude 15/0.6 eV, 12-30 nm, 0.1 eV), default options
    (NR coupled film, 3 starts, QUADRATURE check), the engine's blocks on ``scheduler``
    ("threads": every core; "sync": one)."""
    import dask

    import eelsgpu
    from eelsgpu import synthetic

    model = synthetic.Drude(15.0, 0.6)
    kw = dict(n_channels=400, dispersion_eV=0.1, offset_eV=0.0, beam_energy_keV=E0,
              collection_angle_mrad=BETA, total_counts=1e6)  # fmt: skip
    lam = float(synthetic.low_loss_spectrum(model, t_over_lambda=0.1, **kw).true_mean_free_path_nm)
    t = np.linspace(12.0, 30.0, n_pix)
    sim = synthetic.low_loss_image(
        model, t_over_lambda=t / lam, shape=(n_pix,), surface="coupled", **kw
    )
    fit_kw = dict(beam_energy_keV=E0, collection_angle_mrad=BETA, retardation=False,
                  window_eV=(LO, HI), nodes_per_channel=nodes, device="cpu")  # fmt: skip
    with dask.config.set(scheduler=scheduler), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eelsgpu.fit_dielectric(
            sim["true_ssd"][:2], zlp_intensity=sim["true_zlp_intensity"][:2], **fit_kw
        ).compute()  # warm-up outside the clock
        t0 = time.perf_counter()
        ds = eelsgpu.fit_dielectric(
            sim["true_ssd"], zlp_intensity=sim["true_zlp_intensity"], **fit_kw
        ).compute()
        dt = time.perf_counter() - t0
    err = np.asarray(ds.thickness_nm.values) / t - 1.0
    return n_pix / dt, float(np.max(np.abs(err))), float(np.median(ds.deviance_reduced.values))


def _gpu_estimate(kind: str, retarded: bool, oxide: bool, batch: int = 8) -> dict:
    """Counts of one Levenberg-Marquardt step (model + Jacobian + solve) on ``batch`` pixels
    through the counting stand-in; bytes scale with the batch, launches do not."""
    from eelsgpu.engine import counting
    from eelsgpu.kernels import film_fit as FF

    lo = np.arange(LO, HI, BIN)
    fm = FF.fit_model(
        lo, lo + BIN, E0, BETA, kind=kind, retarded=retarded, fit_oxide=oxide, n_sub=2,
        chunk=None,
    )  # fmt: skip
    xs = counting.xp
    p = np.tile(np.log([20.0, 15.0, 0.6] + ([2.5] if oxide else [])), (batch, 1))
    n0 = np.full(batch, 1e6)
    y = FF.model_counts(np, fm, p, n0)
    args = (xs.asarray(y), xs.asarray(n0), xs.asarray(p))
    FF.lm_fit(xs, fm, *args, iterations=1)  # warm the per-namespace caches
    with counting.count() as c1:
        FF.lm_fit(xs, fm, *args, iterations=1)
    with counting.count() as c2:
        FF.lm_fit(xs, fm, *args, iterations=2)
    ops = c2.ops - c1.ops
    nbytes = c2.bytes - c1.bytes
    per_pixel_bytes = nbytes / batch
    big = 4096
    step_s = ops * 10e-6 + per_pixel_bytes * big / 2e12
    # a fit: 3 starts x 6 steps + 14 steps = 32 pixel-steps per spectrum
    return {
        "ops_per_step": ops,
        "syncs_per_step": c2.syncs - c1.syncs,
        "MB_per_pixel_step": per_pixel_bytes / 1e6,
        "h100_ms_per_spectrum": 32 * step_s / big * 1e3,
    }


def _real_al() -> list[str]:
    import real_files as rf

    import eelsgpu

    shared = ROOT.parent / "shared" / "data"
    f = next(x for x in rf.FILES if x.path == "pytemlib/AL-DFoffset0.00.dm3")
    dec = rf.band_limited(rf.open_real(shared, f), "threshold")
    rak = np.loadtxt(
        shared / "reference" / "optical_constants" / "Al_Rakic.csv", delimiter=",", skiprows=4
    )
    rak = rak[np.argsort(rak[:, 0])]
    r8, r10 = np.interp([8.0, 10.0], rak[:, 0], rak[:, 4])
    lines = [
        "| model | t (nm) | oxide (nm) | Ep (eV) | Gamma (eV) | eps1(8) | eps1(10) | eps1 = 0 "
        "(eV) | interface peak (eV) | rel. deviance | time (s) | flags |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = None
    for name, kw in (
        ("retarded 3-layer", dict(oxide_nm="fit", retardation=True)),
        ("NR 3-layer", dict(oxide_nm="fit", retardation=False)),
        ("bare, retarded", dict(retardation=True)),
        ("bare, NR", dict(retardation=False)),
    ):
        t0 = time.perf_counter()
        ds = eelsgpu.fit_dielectric(dec, window_eV=(LO, HI), bin_eV=BIN, **kw)
        dt = time.perf_counter() - t0
        e = ds.energy.values
        e1 = ds.eps1.values.reshape(-1)
        zero = e[(e > 14.0) & (e1 > 0)][0]
        ef = ds.energy_fit.values
        surf = ds.model_surface.values.reshape(-1)
        m = (ef > 5) & (ef < 10)
        dev = float(ds.deviance_reduced.values.reshape(-1)[0])
        base = base or dev

        def v(n, ds=ds):
            if n not in ds:
                return "-"
            return f"{float(ds[n].values.reshape(-1)[0]):.3f} +- {float(ds[n + '_sigma'].values.reshape(-1)[0]):.3f}"

        from eelsgpu.kernels.film_fit import fit_flag_names

        lines.append(
            f"| {name} | {v('thickness_nm')} | {v('oxide_nm')} | {v('plasmon_energy_eV')} | "
            f"{v('damping_eV')} | {np.interp(8.0, e, e1):.2f} | {np.interp(10.0, e, e1):.2f} | "
            f"{zero:.2f} | {ef[m][np.argmax(surf[m])]:.2f} | {dev / base:.2f} | {dt:.1f} | "
            f"{', '.join(fit_flag_names(int(ds.fit_flags.values.reshape(-1)[0])))} |"
        )
        if name == "retarded 3-layer":
            data = ds.data.values.reshape(-1)
            model = ds.model.values.reshape(-1)
            misfit = []
            for a, b in ((4.5, 6), (6, 7), (7, 8), (8, 10), (10, 12), (12, 14), (14, 16), (16, 25)):
                mm = (ef >= a) & (ef < b)
                misfit.append(f"{a:g}-{b:g} eV {np.mean(data[mm] / model[mm] - 1):+.2f}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kk = eelsgpu.kramers_kronig(dec, metal=True, device="cpu").compute()
        kk_it = eelsgpu.kramers_kronig(dec, metal=True, iterations=10, device="cpu").compute()
    ke = kk.energy.values
    row = []
    for res in (kk, kk_it):
        row.append(
            f"{np.interp(8.0, ke, res.eps1.values.reshape(-1)):.2f} / "
            f"{np.interp(10.0, ke, res.eps1.values.reshape(-1)):.2f}"
        )
    ex = _exspy_al(dec, f)
    lines += [
        "",
        f"Rakic eps1(8, 10 eV) = {r8:.2f} / {r10:.2f}. Classic KK (metal) of the same SSD: "
        f"{row[0]} (10 surface iterations: {row[1]}, quality "
        f"{', '.join(eelsgpu.kernels.quality.names(int(kk_it.quality.values.reshape(-1)[0])))});"
        f" exspy 0.3.2: {ex}.",
        "",
        "Retarded 3-layer misfit, (data - model)/model: " + "; ".join(misfit) + ".",
    ]
    return lines


def _exspy_al(dec, f) -> str:
    try:
        from exspy.signals import EELSSpectrum
    except ImportError:
        return "not installed"
    e = dec["energy"].values
    first = int(np.argmax(e > 1e-9))
    s = EELSSpectrum(np.asarray(dec["ssd"].values, float)[first:])
    ax = s.axes_manager.signal_axes[0]
    ax.offset, ax.scale, ax.units = float(e[first]), float(e[1] - e[0]), "eV"
    s.set_microscope_parameters(
        beam_energy=f.e0_keV, collection_angle=f.beta_mrad, convergence_angle=f.alpha_mrad
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps = s.kramers_kronig_analysis(
            zlp=float(dec["zlp_intensity"].values), iterations=1, n=1000
        )
    ee = eps.axes_manager.signal_axes[0].axis
    e1 = np.real(np.asarray(eps.data))
    return f"{np.interp(8.0, ee, e1):.2f} / {np.interp(10.0, ee, e1):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pixels", type=int, default=32)
    ap.add_argument("--no-real", action="store_true")
    args = ap.parse_args()
    n = args.pixels
    print(f"## Film fit speed (this CPU, one process; {n} Al spectra, 0.1 eV, {LO}-{HI} eV)\n")
    print("| model | nodes/channel | pixels | spectra/s | max t error | median D/dof |")
    print("|---|---|---|---|---|---|")
    for kind, ret, sub, ox, npx in (
        ("coupled", False, 2, False, n),
        ("coupled", False, 1, False, n),
        ("kroger", True, 2, False, max(4, n // 4)),
        ("layered", False, 1, True, max(2, n // 16)),
        ("layered", True, 1, True, max(2, n // 16)),
    ):
        rate, err, dev = _fit_speed(kind, ret, npx, sub, ox)
        label = f"{kind}{' + oxide' if ox else ''}, {'retarded' if ret else 'NR'}"
        print(f"| {label} | {sub} | {npx} | {rate:.2f} | {err:.2e} | {dev:.3f} |")
    for sub in (2, 1):
        for sched, label in (("threads", "all cores"), ("sync", "one core")):
            rate, err, dev = _user_speed(2 * n, sub, sched)
            print(
                f"| `fit_dielectric`, coupled NR, {label} | {sub} | {2 * n} | {rate:.2f} | "
                f"{err:.2e} | {dev:.3f} |"
            )
    kk = _kk_speed(n)
    for it, (rate, err) in kk.items():
        print(
            f"| classic KK (metal, {it} surface iterations) | - | {n} | {rate:.1f} | {err:.2e} | - |"
        )
    print(
        "\n## GPU estimate (counting stand-in: one LM step; H100 = launches x 10 us + bytes / 2 TB/s)\n"
    )
    print("| model | launches/step | syncs/step | MB/pixel/step | H100 ms/spectrum (batch 4096) |")
    print("|---|---|---|---|---|")
    for kind, ret, ox in (
        ("coupled", False, False),
        ("kroger", True, False),
        ("layered", False, True),
    ):
        g = _gpu_estimate(kind, ret, ox)
        print(
            f"| {kind}{' + oxide' if ox else ''} {'retarded' if ret else 'NR'} | {g['ops_per_step']} | "
            f"{g['syncs_per_step']} | {g['MB_per_pixel_step']:.1f} | {g['h100_ms_per_spectrum']:.2f} |"
        )
    if not args.no_real:
        print("\n## Real Al film (pytemlib/AL-DFoffset0.00.dm3)\n")
        print("\n".join(_real_al()))


if __name__ == "__main__":
    main()
