"""``eelsgpu kk IN -o OUT.zarr --model film ...``: the dielectric-model fit of thin films.

The argument set and runner that ``eelsgpu kk`` calls when ``--model`` is given
(:func:`eelsgpu.fit_dielectric`, thin-film-theory.md): instead of the classic Kramers-Kronig
inversion with its surface iteration, a causal Drude + Lorentz eps is fitted through a forward
model of the whole film (bulk, surfaces, guided modes; an oxide on both faces with ``--oxide``),
per pixel, by the Poisson deviance. No normalisation (``--metal`` ...) is needed: the model is
absolute.

Hook in ``eelsgpu/cli/kk.py`` (the merge adds it): in ``add_parser``, make the normalisation group
``required=False`` and call ``add_film_options(p)``; in ``run``, right after the SSD is made (the
``if io.is_store(...) ... else deconvolve(...)`` block), ``if film_requested(args): return
run_film(args, ssd, out)``; the classic path then checks the normalisation itself
(:func:`check_normalisation`).

Examples::

    eelsgpu kk al.dm3 -o al_fit.zarr --zlp threshold --model film --oxide fit --window 4.5:25
    eelsgpu kk ssd.zarr -o fit.zarr --model film --no-retardation --oscillators 1 \
        --oscillator 7,150,3
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = [
    "add_film_options",
    "check_normalisation",
    "film_kwargs",
    "film_requested",
    "run_film",
    "standalone_parser",
]


def _triple(text: str) -> tuple[float, float, float]:
    from ..errors import InputError

    try:
        e, f, g = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(
            f"an oscillator is E,F,GAMMA (eV, eV^2, eV) like 7,150,3, not {text!r}"
        ) from None
    if min(e, f, g) <= 0:
        raise InputError(f"oscillator {text!r}: E, F and GAMMA must be positive")
    return e, f, g


def _window(text: str) -> tuple[float, float]:
    from ..errors import InputError

    try:
        lo, hi = (float(v) for v in text.replace(",", ":").split(":"))
    except ValueError:
        raise InputError(f"--window is LO:HI in eV like 4.5:25, not {text!r}") from None
    if not 0 < lo < hi:
        raise InputError(f"--window {text!r}: need 0 < LO < HI (eV)")
    return lo, hi


def add_film_options(p: argparse.ArgumentParser) -> None:
    """The film-fit options of ``eelsgpu kk`` (all inactive without ``--model``)."""
    g = p.add_argument_group("dielectric-model fit (thin films; replaces the KK inversion)")
    g.add_argument(
        "--model",
        dest="film_model",
        choices=("film", "eq36", "bulk"),
        help="fit a Drude + Lorentz eps through a film model: film (coupled film, Kroger's slab "
        "with retardation, oxide/film/oxide with --oxide), eq36 (bulk + uncoupled surfaces), "
        "bulk (eq. 31 alone)",
    )
    g.add_argument(
        "--no-retardation",
        dest="retardation",
        action="store_false",
        help="non-retarded model (5 x faster; wrong for Cerenkov losses and metals below 8 eV)",
    )
    g.add_argument(
        "--oxide",
        metavar="fit|NM",
        help="an oxide on both faces: 'fit' its thickness, or a fixed thickness in nm",
    )
    g.add_argument(
        "--oscillators",
        type=int,
        default=0,
        metavar="N",
        dest="n_oscillators",
        help="free Lorentz oscillators (default 0)",
    )
    g.add_argument(
        "--oscillator",
        action="append",
        default=[],
        metavar="E,F,G",
        dest="oscillator_starts",
        help="start of a free oscillator: energy eV, strength eV^2, width eV (repeat)",
    )
    g.add_argument(
        "--fixed-oscillator",
        action="append",
        default=[],
        metavar="E,F,G",
        dest="fixed_oscillators",
        help="an oscillator held fixed (outside the window), as E,F,G (repeat)",
    )
    g.add_argument(
        "--no-drude", dest="drude", action="store_false", help="no Drude term (insulators)"
    )
    g.add_argument("--window", metavar="LO:HI", help="fitted energy range in eV")
    g.add_argument(
        "--bin",
        type=float,
        default=0.1,
        metavar="eV",
        dest="bin_eV",
        help="sum channels to about this width before fitting (default 0.1 eV)",
    )
    g.add_argument(
        "--fit-iterations",
        type=int,
        default=20,
        metavar="K",
        dest="fit_iterations",
        help="Levenberg-Marquardt steps per pixel (default 20)",
    )
    g.add_argument(
        "--cutoff",
        type=float,
        metavar="mrad",
        dest="cutoff_mrad",
        help="plasmon cut-off angle of the bulk term (default none: flagged)",
    )


def film_requested(args: argparse.Namespace) -> bool:
    """True when ``--model`` was given."""
    return getattr(args, "film_model", None) is not None


def check_normalisation(args: argparse.Namespace) -> None:
    """The classic path's rule: exactly one of --refractive-index, --metal, --thickness."""
    from ..errors import InputError

    n = sum(
        [
            getattr(args, "refractive_index", None) is not None,
            bool(getattr(args, "metal", False)),
            getattr(args, "thickness", None) is not None,
        ]
    )
    if n != 1:
        raise InputError(
            "give one normalisation (--refractive-index N, --metal or --thickness NM), or "
            "--model for the dielectric-model fit"
        )


def film_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`eelsgpu.fit_dielectric` given on the command line."""
    from ..analysis._checks import positive
    from ..errors import InputError

    oxide: Any = args.oxide
    if oxide is not None and oxide != "fit":
        try:
            oxide = float(oxide)
        except ValueError:
            raise InputError(f"--oxide is 'fit' or a thickness in nm, not {oxide!r}") from None
        oxide = positive("--oxide", oxide, "nm")
    out: dict[str, Any] = {
        "model": args.film_model,
        "retardation": args.retardation,
        "oxide_nm": oxide,
        "n_oscillators": args.n_oscillators,
        "oscillators": [_triple(t) for t in args.oscillator_starts],
        "fixed_oscillators": [_triple(t) for t in args.fixed_oscillators],
        "drude": args.drude,
        "bin_eV": args.bin_eV,
        "iterations": args.fit_iterations,
        "cutoff_mrad": args.cutoff_mrad,
    }
    if args.window:
        out["window_eV"] = _window(args.window)
    for key in ("beam_energy_keV", "collection_angle_mrad", "convergence_angle_mrad"):
        if getattr(args, key, None) is not None:
            out[key] = getattr(args, key)
    return out


def run_film(args: argparse.Namespace, ssd: Any, out: Path) -> int:
    """Fit, write the store at ``out`` and print a one-line summary (the ``kk`` runner's tail)."""
    import numpy as np

    from .. import io
    from ..analysis.film import fit_dielectric
    from ..kernels.film_fit import FIT_BITS

    kw = film_kwargs(args)
    ds = fit_dielectric(ssd, **kw)
    ds.attrs["kk_input_path"] = str(args.input)
    io.write_store(ds, out, overwrite=args.overwrite, progress=not args.quiet)
    if not args.quiet:
        valid = np.asarray(ds["valid"].values)
        t = np.asarray(ds["thickness_nm"].values)
        good = valid & np.isfinite(t)
        msg = f"wrote {out}: film fit ({ds.attrs['film_model']}) valid for {int(valid.sum())} "
        msg += f"of {valid.size} pixels"
        if good.any():
            msg += f", thickness {np.median(t[good]):.2f} nm median"
            if "oxide_nm" in ds:
                msg += f", oxide {np.median(np.asarray(ds['oxide_nm'].values)[good]):.2f} nm"
            msg += f", reduced deviance {np.median(ds['deviance_reduced'].values[good]):.3g}"
        print(msg)
        flags = np.asarray(ds["fit_flags"].values).reshape(-1)
        counts = {n: int(np.sum((flags & b) > 0)) for n, (b, _, _) in FIT_BITS.items()}
        set_ = [f"{n} {c}" for n, c in counts.items() if c]
        print("fit flags: " + (", ".join(set_) if set_ else "none"))
    return 0


def standalone_parser() -> argparse.ArgumentParser:
    """A parser with the inputs ``eelsgpu kk`` gives the runner (IN, -o, calibration, the film
    options): for tests and for use before the merge wires ``--model`` into ``eelsgpu kk``."""
    from ._common import add_analysis_options, add_input, add_output

    p = argparse.ArgumentParser(prog="eelsgpu kk --model", description=__doc__)
    add_input(p, help="an SSD store (eelsgpu deconvolve)")
    add_output(p)
    add_film_options(p)
    add_analysis_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the film fit on an SSD store (``IN`` written by ``eelsgpu deconvolve``)."""
    from .. import io
    from ._common import output_path

    args = standalone_parser().parse_args(argv)
    if args.film_model is None:
        args.film_model = "film"
    out = output_path(args)
    ssd = io.open_store(args.input)
    return run_film(args, ssd, out)
