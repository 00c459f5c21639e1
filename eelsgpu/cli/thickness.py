"""``eelsgpu thickness IN -o OUT.zarr``: relative and absolute thickness maps.

``--method log-ratio`` (default) maps t/lambda = ln(I_t/N0) per pixel, the scattering beyond the
window included (``--tail``); with ``--density`` (Iakoubovskii 2008, angular correction),
``--zeff`` (Malis 1988) or ``--mean-free-path`` it adds the absolute thickness in nm.
``--method kk`` gives the absolute thickness from the Kramers-Kronig sum rule on the Fourier-log
single-scattering distribution (kk-theory.md eq. 26): give ``--refractive-index N`` for an
insulator or semiconductor, ``--metal`` for a metal, or ``--kk-constant A`` (eq. 29) calibrated on
a region of known thickness. The store holds ``t_over_lambda``, ``thickness_nm`` (when absolute),
``zlp_intensity``, ``zlp_centre_eV``, ``zlp_fwhm_eV``, the per-pixel ``quality`` bitmask and
``valid`` (no fatal bit). The ZLP is found near 0 eV, else anywhere in the window (a warning says
when the axis is off); ``--search LO HI`` restricts it. ``--uncertainty analytic|replicas:K``
(with ``--gain``, ``--seed``, ``--mean-free-path-rel-sigma``) adds ``t_over_lambda_sigma``,
``thickness_nm_sigma``, ``zlp_intensity_sigma`` and the systematic parts
(``*_sigma_systematic``: the tail beyond the window, the mean free path formula).
``--zlp-models mirror,fit`` (or ``all``) runs the analysis again with these ZLP models and adds
their spread per pixel (half the range of the models that pass their checks:
``*_sigma_zlp_model``, ``zlp_models_passed``), a part of ``*_sigma_systematic``.

Examples::

    eelsgpu thickness lowloss.zarr -o t.zarr --png t.png
    eelsgpu thickness lowloss.zarr -o t.zarr --density 2.33 --zlp mirror
    eelsgpu thickness lowloss.zarr -o t.zarr --method kk --refractive-index 3.42
    eelsgpu thickness lowloss.zarr -o t.zarr --zeff 14 --uncertainty analytic --gain 1
    eelsgpu thickness lowloss.zarr -o t.zarr --zeff 14 --uncertainty analytic --zlp-models all
"""

from __future__ import annotations

import argparse

from ._common import (
    add_analysis_options,
    add_input,
    add_mean_free_path_options,
    add_output,
    add_png,
    open_input,
    output_path,
)
from .deconvolve import (
    _zlp_argument,
    add_mean_free_path_sigma_options,
    add_search_option,
    print_sigma,
    report_quality,
    search_value,
    sigma_kwargs,
)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "thickness",
        help="t/lambda and absolute thickness maps (log-ratio or Kramers-Kronig sum rule)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input(p)
    add_output(p)
    p.add_argument(
        "--method",
        choices=("log-ratio", "kk"),
        default="log-ratio",
        help="log-ratio (default) or kk (Kramers-Kronig sum rule)",
    )
    p.add_argument(
        "--zlp",
        default="threshold",
        metavar="METHOD|FILE",
        help="zero-loss peak model: threshold (default), mirror, fit, or a file holding a "
        "reference spectrum (1-D) or a ZLP cube of the data's shape",
    )
    p.add_argument(
        "--tail",
        choices=("auto", "power-law", "fourier-log", "none"),
        default="auto",
        help="log-ratio: how scattering beyond the window is counted (default auto)",
    )
    add_mean_free_path_options(p)
    kk = p.add_mutually_exclusive_group()
    kk.add_argument(
        "--refractive-index",
        type=float,
        metavar="N",
        dest="refractive_index",
        help="kk: static refractive index of an insulator or semiconductor",
    )
    kk.add_argument("--metal", action="store_true", help="kk: the specimen is a metal")
    kk.add_argument(
        "--kk-constant",
        type=float,
        metavar="nm.eV",
        dest="kk_constant_nm_eV",
        help="kk: A of eq. 29, calibrated on a region of known thickness",
    )
    add_search_option(p)
    add_png(p)
    add_analysis_options(p)
    add_mean_free_path_sigma_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import io
    from ..analysis._lowloss import check_any_valid
    from ..analysis.thickness import thickness

    out = output_path(args)
    si = open_input(args)
    calib = {
        k: getattr(args, k, None)
        for k in ("beam_energy_keV", "collection_angle_mrad", "convergence_angle_mrad")
    }
    ds = thickness(
        si,
        method=args.method,
        zlp=_zlp_argument(args.zlp, si),
        density_g_cm3=args.density_g_cm3,
        mean_free_path_nm=args.mean_free_path_nm,
        zeff=args.zeff,
        refractive_index=args.refractive_index,
        metal=args.metal,
        kk_constant_nm_eV=args.kk_constant_nm_eV,
        tail=args.tail,
        search_eV=search_value(args),
        device=args.device,
        **calib,
        **sigma_kwargs(args),
    )
    io.write_store(ds, out, overwrite=args.overwrite, progress=not args.quiet)
    res = io.open_store(out)
    valid = np.asarray(res["valid"].values)
    if not np.asarray(res["zlp_intensity"].notnull().values).any():
        check_any_valid(np.zeros(1, bool), si, search_value(args))
    name = "thickness_nm" if "thickness_nm" in res else "t_over_lambda"
    if args.png:
        if res[name].ndim == 2:
            from ..plotting import plot_map

            plot_map(res[name], args.png, title=f"{name} ({args.method})")
        elif not args.quiet:
            print(f"--png: {name} is not a 2-D map (dims {res[name].dims}); no PNG written")
    if not args.quiet:
        vals = np.asarray(res[name].values)[valid]
        unit = res[name].attrs.get("units", "")
        median = f"median {np.median(vals):.4g} {unit}" if vals.size else "no valid pixel"
        print(
            f"wrote {out}: {name} {median} over {int(valid.sum())} of "
            f"{valid.size} pixels ({valid.size - int(valid.sum())} flagged invalid)"
        )
        report_quality(res)
        print_sigma(res, name, valid)
    return 0
