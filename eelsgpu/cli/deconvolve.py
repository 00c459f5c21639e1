"""``eelsgpu deconvolve IN -o OUT.zarr``: single-scattering distribution by Fourier-log.

Every pixel's zero-loss peak is modelled (``--zlp``), then removed together with the plural
scattering by the Fourier-log deconvolution (kk-theory.md eq. 22, phase unwrapped, tail
extrapolated, the raw SSD's roll-off following the measured error of each pixel). The store
holds ``ssd`` (counts per channel), ``zlp_intensity``, ``zlp_centre_eV``, ``zlp_fwhm_eV``,
``resolution_eV`` (the FWHM of the point-spread the SSD carries), the per-pixel ``quality``
bitmask, ``valid`` (no fatal bit) and the relative thickness ``t_over_lambda``
(log-ratio; the scattering beyond the window from the spectrum's power-law tail, or from the
SSD where that fails); with ``--density``, ``--zeff`` or ``--mean-free-path`` also
``thickness_nm``. ``--uncertainty analytic|replicas:K`` (``--gain``, ``--seed``,
``--mean-free-path-rel-sigma``) adds the maps' ``<name>_sigma`` and, with replicas, ``ssd_sigma``
per channel. The whole low-loss job (ZLP, aligned SSD, both thickness maps) in one pass
over the data::

    eelsgpu deconvolve lowloss.zarr -o ssd.zarr --kind ssd --zlp fit --density 2.7

Examples::

    eelsgpu deconvolve lowloss.zarr -o ssd.zarr
    eelsgpu deconvolve lowloss.zarr -o ssd.zarr --zlp fit --kind ssd
    eelsgpu deconvolve lowloss.zarr -o ssd.zarr --kind band-limited --search 15 25
    eelsgpu deconvolve lowloss.zarr -o ssd.zarr --zlp vacuum.msa --kind reconvolved-gaussian --fwhm 0.3
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import (
    add_analysis_options,
    add_input,
    add_mean_free_path_options,
    add_output,
    mean_free_path_kwargs,
    open_input,
    output_path,
)
from ._uncertainty import add_uncertainty_options, describe, uncertainty_kwargs

OUTPUT_CHOICES = ("reconvolved-zlp", "ssd", "band-limited", "reconvolved-gaussian", "residual")


def _search_token(text: str) -> float | tuple[float, float]:
    """One ``--search`` token: a number of eV, or ``LO:HI`` (argparse reports the error)."""
    from ._common import OPTION_RANGES

    if ":" in text:
        parts = text.split(":")
        if len(parts) != 2:
            raise argparse.ArgumentTypeError(f"takes LO HI or LO:HI in eV, not {text!r}")
        lo, hi = (OPTION_RANGES["--search"].check(v) for v in parts)
        return (float(lo), float(hi))
    return float(OPTION_RANGES["--search"].check(text))


def add_search_option(p: argparse.ArgumentParser, default: str = "") -> None:
    """``--search LO HI`` (or ``LO:HI``): where the ZLP maximum may be, eV on the stored axis;
    every command that looks for a ZLP spells it the same way (:func:`search_value` reads it).
    ``default`` describes the default (else: near 0 eV, else anywhere)."""
    p.add_argument(
        "--search",
        type=_search_token,
        nargs="+",
        metavar="LO HI",
        default=None,
        help="energy range (eV, stored axis) where the ZLP maximum may be, as LO HI or LO:HI "
        + (
            f"(default {default})"
            if default
            else "(default: near 0 eV, else the spectrum's first dominant peak anywhere in the "
            "window)"
        ),
    )


def search_value(args: argparse.Namespace) -> tuple[float, float] | None:
    """The ``--search`` range as (lo, hi) eV, or None when not given; an
    :class:`~eelsgpu.errors.InputError` for anything but LO HI or LO:HI with LO < HI."""
    from ..errors import InputError

    tokens = getattr(args, "search", None)
    if tokens is None:
        return None
    if len(tokens) == 1 and isinstance(tokens[0], tuple):
        lo, hi = tokens[0]
    elif len(tokens) == 2 and not any(isinstance(t, tuple) for t in tokens):
        lo, hi = tokens
    else:
        raise InputError("--search takes LO HI or LO:HI in eV, e.g. -5 5 or 10:30")
    if not hi > lo:
        raise InputError(f"--search {lo:g} {hi:g}: HI must be above LO")
    return (float(lo), float(hi))


def report_quality(res: Any) -> None:
    """Print how many pixels carry each quality bit (one line), if any."""
    import numpy as np

    from ..kernels import quality

    if "quality" not in res:
        return
    q = np.asarray(res["quality"].values).astype(np.uint32)
    counts = [
        f"{name} {int(np.count_nonzero(q & bit))}"
        for name, (bit, _, _) in quality.BITS.items()
        if np.count_nonzero(q & bit)
    ]
    if counts:
        print("quality flags (pixels): " + ", ".join(counts))


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "deconvolve",
        help="single-scattering distribution by Fourier-log deconvolution",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input(p)
    add_output(p)
    p.add_argument(
        "--zlp",
        default="mirror",
        metavar="METHOD|FILE",
        help="zero-loss peak model: mirror (default), fit, threshold, or a file holding a "
        "reference spectrum (1-D, applied to every pixel) or a ZLP cube of the data's shape",
    )
    # (--output is the store, -o, as in every command; the kind of result is --kind)
    p.add_argument(
        "--kind",
        dest="deconv_output",
        choices=OUTPUT_CHOICES,
        default="reconvolved-zlp",
        help="what to write: the SSD reconvolved with the ZLP (default), the raw SSD, the SSD "
        "band-limited by a Gaussian of each pixel's ZLP FWHM, the SSD reconvolved with a "
        "Gaussian (--fwhm), or the plural-scattering residual",
    )
    p.add_argument(
        "--fwhm",
        type=float,
        metavar="eV",
        dest="fwhm_eV",
        help="FWHM of the Gaussian for --kind reconvolved-gaussian (eV)",
    )
    p.add_argument(
        "--extrapolation",
        choices=("power-law", "exponential", "none"),
        default="power-law",
        help="how the spectrum is continued beyond the window (default power-law)",
    )
    add_search_option(p)
    add_mean_free_path_options(p)
    add_analysis_options(p)
    add_mean_free_path_sigma_options(p)
    return p


def add_mean_free_path_sigma_options(p: argparse.ArgumentParser) -> None:
    """``--uncertainty``, ``--gain``, ``--seed`` (:mod:`eelsgpu.cli._uncertainty`) and
    ``--mean-free-path-rel-sigma`` (the systematic part of ``thickness_nm``)."""
    add_uncertainty_options(p)
    p.add_argument(
        "--mean-free-path-rel-sigma",
        type=float,
        metavar="R",
        dest="mean_free_path_rel_sigma",
        help="with --uncertainty: relative one-sigma of the mean free path (0.1 = 10 %%), "
        "a systematic part of thickness_nm (default: Malis 20 %%, Iakoubovskii 10 %%, a given "
        "lambda none)",
    )
    p.add_argument(
        "--zlp-models",
        metavar="M1,M2|all",
        dest="zlp_models",
        help="the ZLP model's systematic part: run again with these models (threshold, mirror, "
        "fit; 'all' the three) and report half their range per pixel where their checks pass "
        "(<name>_sigma_zlp_model, zlp_models_passed, a part of <name>_sigma_systematic); one "
        "more run per model",
    )


def sigma_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The uncertainty keyword arguments of ``thickness`` / ``deconvolve`` from the options."""
    kw = uncertainty_kwargs(args)
    zlp_models = getattr(args, "zlp_models", None)
    if (kw or zlp_models) and args.mean_free_path_rel_sigma is not None:
        kw["mean_free_path_rel_sigma"] = args.mean_free_path_rel_sigma
    if zlp_models:
        kw["zlp_models"] = zlp_models
    return kw


def print_sigma(res: Any, name: str, valid: Any) -> None:
    """One line: the uncertainty and noise model, and the median sigma of ``name``."""
    import numpy as np

    line = describe(res)
    key = f"{name}_sigma_zlp_model"
    if key in res:
        vals = np.asarray(res[key].values)[valid]
        vals = vals[np.isfinite(vals)]
        spread = f"median {np.median(vals):.3g}" if vals.size else "none measured"
        models = ", ".join(res.attrs.get("zlp_models_compared", []))
        print(f"ZLP-model spread of {name} (half range of {models}): {spread}")
    if not line:
        return
    if f"{name}_sigma" in res:
        vals = np.asarray(res[f"{name}_sigma"].values)[valid]
        vals = vals[np.isfinite(vals)]
        if vals.size:
            unit = res[name].attrs.get("units", "")
            line += f"; median {name}_sigma {np.median(vals):.3g} {unit}".rstrip()
    print(line)


def _zlp_argument(text: str, si: Any) -> Any:
    """A method name as is; a file becomes a reference spectrum or a cube (numpy / eelsgpu.open)."""
    if text in ("mirror", "fit", "threshold"):
        return text
    from ..errors import InputError

    path = Path(text)
    if not path.exists():
        raise InputError(f"--zlp {text!r}: not a method (mirror, fit, threshold) and no such file")
    if path.suffix == ".npy":
        import numpy as np

        return np.load(path, allow_pickle=False)
    from .. import io

    return io.open(path)


def run(args: argparse.Namespace) -> int:
    from .. import io
    from ..analysis.deconvolution import deconvolve
    from ..errors import InputError

    out = output_path(args)
    if args.deconv_output == "reconvolved-gaussian" and args.fwhm_eV is None:
        raise InputError("--kind reconvolved-gaussian needs --fwhm (eV)")
    si = open_input(args)
    ds = deconvolve(
        si,
        zlp=_zlp_argument(args.zlp, si),
        output=args.deconv_output,
        fwhm_eV=args.fwhm_eV,
        extrapolation=args.extrapolation,
        search_eV=search_value(args),
        device=args.device,
        **mean_free_path_kwargs(args),
        **sigma_kwargs(args),
    )
    io.write_store(ds, out, overwrite=args.overwrite, progress=not args.quiet)
    import numpy as np

    res = io.open_store(out)
    valid = np.asarray(res["valid"].values)
    if not args.quiet:
        print(
            f"wrote {out}: ssd ({args.deconv_output}) for {int(valid.sum())} of {valid.size} "
            f"pixels ({valid.size - int(valid.sum())} flagged invalid)"
        )
        report_quality(res)
        print_sigma(res, "t_over_lambda", valid)
    return 0
