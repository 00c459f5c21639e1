"""The figures of the README's "Real data" section, measured on the files of ../shared/data.

Run from the project's root (CPU, about 30 s)::

    python benchmarks/real_data.py            # markdown tables on stdout
    python benchmarks/real_data.py --png DIR  # also the pictures: SSD and eps beside the optics

What it measures, each with the truth it is held against:

1. every real low-loss file, every pixel, every ZLP model, through the documented chain
   (``deconvolve(output="band-limited")`` -> ``kramers_kronig``): valid pixels, the KK /
   log-ratio thickness ratio, the loss peak against the shared README's, eps2's negative weight
   before the sign constraint, the surface share and the quality bits (tests/real_files.py);
2. the Al film (on axis, threshold ZLP): its SSD peak, the eps1 = 0 crossing, eps1 and eps2 at
   5-25 eV beside the optical constants of Rakic (Appl. Opt. 34, 4755 (1995)) and beside exspy
   0.3.2's ``kramers_kronig_analysis`` of the same SSD;
3. SiO2 (threshold ZLP) the same beside Franta et al. (Proc. SPIE 9890, 989014 (2016));
4. the sign constraint on noisy synthetic truth (eelsgpu.synthetic, Poisson, band-limited by the
   ZLP width): thickness error with and without it, and the negative weight it reports;
5. the WS2 band gap (EELSfitter Specimen 3): the reference-ZLP recipe, and the issue's route
   (the vacuum ZLP subtracted by hand, the old window heuristic) with and without the residue
   check.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import real_files as rf  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
ENERGIES_AL = (5.0, 8.0, 10.0, 12.0, 14.0, 16.0, 20.0, 25.0)
ENERGIES_SIO2 = (10.0, 12.0, 15.0, 18.0, 22.0, 25.0, 30.0)


def _optics(name: str) -> np.ndarray:
    """(E, eps1, eps2, ELF) of a table of shared/data/reference/optical_constants."""
    path = SHARED / "reference" / "optical_constants" / name
    rows = [r for r in csv.reader(path.open()) if r and not r[0].startswith("#")][1:]
    a = np.array(rows, dtype=float)
    return a[:, [0, 4, 5, 6]]


def _at(e: np.ndarray, y: np.ndarray, energy: float) -> float:
    return float(np.interp(energy, e, y))


def _fmt(a) -> str:
    a = np.atleast_1d(np.asarray(a, float))
    a = a[np.isfinite(a)]
    if not a.size:
        return "-"
    if a.size == 1 or np.ptp(a) < 5e-3 * max(1.0, abs(a[0])):
        return f"{a[0]:.3g}"
    return f"{np.median(a):.3g} ({a.min():.3g}-{a.max():.3g})"


def files_table() -> list[str]:
    from eelsgpu.kernels import quality

    out = [
        "| file | ZLP model | valid px | t_KK / t_log-ratio | loss peak (eV) / README |"
        " eps2 negative weight | surface share | quality bits set |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in rf.FILES:
        si = rf.open_real(SHARED, f)
        for m in rf.ZLP_MODELS:
            _, kk = rf.kk_chain(si, f, m)
            q = np.atleast_1d(kk["quality"].values)
            bits = sorted({n for x in q for n in quality.names(int(x))})
            v = np.atleast_1d(kk["valid"].values)
            readme = (
                f"{f.peak_eV[0]:g}"
                if f.peak_eV[0] == f.peak_eV[1]
                else "{:g}-{:g}".format(*f.peak_eV)
            )
            out.append(
                f"| {f.name} | {m} | {int(v.sum())}/{v.size} | {_fmt(kk['thickness_ratio'])} | "
                f"{_fmt(kk['loss_peak_eV'])} / {readme} | {_fmt(kk['eps2_negative_weight'])} | "
                f"{_fmt(kk['surface_share'])} | {', '.join(bits) or '-'} |"
            )
    return out


def _exspy_eps(dec: xr.Dataset, f: rf.RealFile, n: float) -> tuple[np.ndarray, np.ndarray, float]:
    """exspy 0.3.2's KK of the same band-limited SSD (its positive-loss part; one iteration)."""
    from exspy.signals import EELSSpectrum

    e = dec["energy"].values
    first = int(np.argmax(e > 1e-9))
    s = EELSSpectrum(np.asarray(dec["ssd"].values, float)[first:])
    ax = s.axes_manager.signal_axes[0]
    ax.offset, ax.scale, ax.units = float(e[first]), float(e[1] - e[0]), "eV"
    s.set_microscope_parameters(
        beam_energy=f.e0_keV, collection_angle=f.beta_mrad, convergence_angle=f.alpha_mrad
    )
    eps, extra = s.kramers_kronig_analysis(
        zlp=float(dec["zlp_intensity"].values), iterations=1, n=n, full_output=True
    )
    ee = eps.axes_manager.signal_axes[0].axis
    t = extra["thickness"]
    return ee, np.asarray(eps.data), float(np.ravel(np.asarray(getattr(t, "data", t)))[0])


def eps_table(name: str, optics: str, energies, n_exspy: float, png: Path | None) -> list[str]:
    f = next(x for x in rf.FILES if x.name == name)
    si = rf.open_real(SHARED, f)
    dec, kk = rf.kk_chain(si, f, "threshold")
    opt = _optics(optics)
    e = kk["energy"].values
    e1, e2 = kk["eps1"].values, kk["eps2"].values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xe, xeps, xt = _exspy_eps(dec, f, n_exspy)
    d = dec["energy"].values
    ssd = dec["ssd"].values
    w = float(dec["zlp_fwhm_eV"].values)
    peak = d[np.argmax(np.where(d >= 3 * w, ssd, -np.inf))]
    i = np.nonzero((opt[:-1, 1] < 0) & (opt[1:, 1] >= 0))[0]
    a, b = opt[i, 1], opt[i + 1, 1]
    cross = opt[i, 0] + (opt[i + 1, 0] - opt[i, 0]) * (-a) / (b - a)  # linear between rows
    sel = (opt[:, 0] > 3) & (opt[:, 0] < 60)
    out = [
        f"{name} ({f.path}, threshold ZLP, {float(kk['low_energy_cutoff_eV']):.3g} eV cut-off):"
        f" SSD peak {peak:.2f} eV; loss-function peak {float(kk['loss_peak_eV']):.2f} eV "
        f"(optical ELF peak {opt[sel, 0][np.argmax(opt[sel, 3])]:.2f} eV); eps1 = 0 upwards at "
        f"{float(kk['plasmon_energy_eV']):.2f} eV (optical "
        + (", ".join(f"{c:.2f}" for c in cross if 3 < c < 60) or "none")
        + f"); KK thickness {float(kk['thickness_nm']):.1f} nm (exspy {xt:.1f} nm); quality: "
        + (", ".join(__import__("eelsgpu").kernels.quality.names(int(kk["quality"]))) or "none")
        + f", eps trusted from {float(kk['eps_trusted_from_eV']):.2f} eV",
        "",
        "| E (eV) | eps1 eelsgpu | eps1 exspy | eps1 optical | eps2 eelsgpu | eps2 exspy |"
        " eps2 optical |",
        "|---|---|---|---|---|---|---|",
    ]
    for en in energies:
        out.append(
            f"| {en:g} | {_at(e, e1, en):.2f} | {_at(xe, xeps.real, en):.2f} | "
            f"{_at(opt[:, 0], opt[:, 1], en):.2f} | {_at(e, e2, en):.2f} | "
            f"{_at(xe, xeps.imag, en):.2f} | {_at(opt[:, 0], opt[:, 2], en):.2f} |"
        )
    if png is not None:
        from eelsgpu.plotting import _pyplot

        plt = _pyplot()
        fig, axs = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
        axs[0].plot(d, ssd, lw=1)
        axs[0].set(
            xlim=(0, min(60, d[-1])),
            xlabel="energy loss (eV)",
            ylabel="SSD (counts)",
            title=f"{name}: band-limited SSD",
        )
        lo = float(kk["eps_trusted_from_eV"])
        for y, yo, lab in ((e1, opt[:, 1], "eps1"), (e2, opt[:, 2], "eps2")):
            (line,) = axs[1].plot(e, y, lw=1.2, label=f"{lab} EELS")
            axs[1].plot(opt[:, 0], yo, "--", color=line.get_color(), label=f"{lab} {optics}")
        axs[1].axvspan(0, lo, color="0.85", label="not trusted (flag)")
        axs[1].set(
            xlim=(0, min(40, e[-1])),
            ylim=(-6, 6),
            xlabel="energy loss (eV)",
            title=f"{name}: eps beside the optical constants",
        )
        axs[1].legend(fontsize=8)
        png.mkdir(parents=True, exist_ok=True)
        fig.savefig(png / f"real_{name.split()[0]}.png", dpi=110)
        plt.close(fig)
    return out


def sign_constraint_table() -> list[str]:
    from kk_cases import MODELS, norm

    from eelsgpu import synthetic
    from eelsgpu.kernels.blocks_kk import kk_kernel
    from eelsgpu.kernels.fourier_log import fourier_log_kernel
    from eelsgpu.kernels.zlp import centre_kernel, zlp_kernel

    out = [
        "| model | counts | t/lambda | t error, free (median, max) | t error, constrained |"
        " eps2 < 0 channels free (signal range) | negative weight (max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, model in MODELS.items():
        for counts in (1e5, 1e6):
            for tl in (0.3, 1.0):
                sim = synthetic.low_loss_image(
                    model, t_over_lambda=tl, shape=(8,), noise=True, total_counts=counts,
                    dtype=np.float64, seed=1,
                )  # fmt: skip
                e, y = sim["energy"].values, sim["signal"].values
                cen = centre_kernel(y, e)
                z = zlp_kernel(y, e, method="mirror", centre=cen)
                ssd = fourier_log_kernel(
                    y, e, np.nan_to_num(z["zlp"]), output="reconvolved-gaussian", fwhm_eV=0.5
                )["ssd"]
                res = {}
                for nn in (False, True):
                    res[nn] = kk_kernel(
                        ssd, e, zlp_intensity=z["zlp_intensity"], cutoff_eV=3 * cen["fwhm_eV"],
                        beam_energy_keV=200.0, collection_angle_mrad=10.0, nonnegative=nn,
                        **norm(model),
                    )  # fmt: skip
                err = {nn: res[nn]["thickness_nm"] / sim["true_t_nm"].values - 1 for nn in res}
                out.append(
                    f"| {name} | {counts:.0e} | {tl:g} | {np.median(err[False]):+.2%}, "
                    f"{np.max(np.abs(err[False])):.2%} | {np.median(err[True]):+.2%}, "
                    f"{np.max(np.abs(err[True])):.2%} | "
                    f"{np.median(res[True]['eps2_negative_fraction']):.1%} | "
                    f"{np.max(res[True]['eps2_negative_weight']):.2%} |"
                )
    return out


def ws2_table() -> list[str]:
    import eelsgpu
    from eelsgpu.analysis.bandgap import _mean_subtracted
    from eelsgpu.kernels.bandgap import auto_window
    from eelsgpu.kernels.zlp import zlp_kernel
    from eelsgpu.model import spectrum_image

    d = rf.ws2_spectra(SHARED)
    e, y = d["energy"], d["specimen"]
    vac = xr.DataArray(d["vacuum"].mean(axis=0), dims="energy", coords={"energy": e})
    si = spectrum_image(y, e, dtype=np.float64)
    kw = dict(search_eV=(-0.5, 0.5), device="cpu")
    rows = {}
    rows["recipe: zlp=vacuum mean, window 0.8-3.5 eV, constant, free b"] = eelsgpu.bandgap(
        si, zlp=vac, window_eV=(0.8, 3.5), background="constant", **kw
    )
    rows["recipe, window 1.0-3.5 eV"] = eelsgpu.bandgap(
        si, zlp=vac, window_eV=(1.0, 3.5), background="constant", **kw
    )
    rows["zlp=vacuum, window found after the residue, power-law, direct"] = eelsgpu.bandgap(
        si, zlp=vac, background="power-law", model="direct", **kw
    )
    z = zlp_kernel(y, e, method="reference", reference=vac.values, search_eV=(-0.5, 0.5))
    sub = spectrum_image(y - np.nan_to_num(z["zlp"]), e, dtype=np.float64)
    old = auto_window(
        e, _mean_subtracted(si, dict(zlp_method="reference", reference=vac.values,
                                     search_eV=(-0.5, 0.5)))
    )  # fmt: skip
    rows["issue's route (subtracted by hand, old window), no residue check"] = eelsgpu.bandgap(
        sub, window_eV=old, background="power-law", model="direct", device="cpu"
    )
    rows["issue's route, zlp_removed=True (residue checked)"] = eelsgpu.bandgap(
        sub, window_eV=old, background="power-law", model="direct", zlp_removed=True,
        device="cpu",
    )  # fmt: skip
    out = [
        "| route | window (eV) | Eg per spectrum (eV; - not valid) | valid | in 1.57-1.70 |",
        "|---|---|---|---|---|",
    ]
    for label, ds in rows.items():
        ds = ds.compute()
        eg = ds["bandgap_eV"].values
        v = ds["valid"].values
        lo, hi = ds.attrs["bandgap_window_eV"]
        cells = " ".join(f"{x:.2f}" if ok else "-" for x, ok in zip(eg, v, strict=True))
        out.append(
            f"| {label} | {lo:.2f}-{hi:.2f} | {cells} | {int(v.sum())}/{v.size} | "
            f"{int(np.sum(v & (eg >= 1.57) & (eg <= 1.70)))} |"
        )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--png", type=Path, help="folder for the SSD / eps pictures")
    args = p.parse_args(argv)
    if not SHARED.is_dir():
        print(f"no shared data at {SHARED}")
        return 1
    t0 = time.perf_counter()
    sections = [
        ("Every file, every ZLP model (band-limited SSD -> kramers_kronig)", files_table()),
        ("Al film beside the optical constants (Rakic) and exspy",
         eps_table("Al film 0.00", "Al_Rakic.csv", ENERGIES_AL, 1000.0, args.png)),
        ("SiO2 beside the optical constants (Franta) and exspy",
         eps_table("SiO2", "SiO2_Franta.csv", ENERGIES_SIO2, 1.46, args.png)),
        ("The sign constraint on noisy synthetic truth", sign_constraint_table()),
        ("WS2 band gap (EELSfitter Specimen 3)", ws2_table()),
    ]  # fmt: skip
    for title, lines in sections:
        print(f"\n### {title}\n")
        print("\n".join(lines))
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
