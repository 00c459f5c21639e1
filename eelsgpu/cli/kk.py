"""``eelsgpu kk IN -o OUT.zarr``: Kramers-Kronig analysis, the dielectric function of every pixel.

IN is either a raw low-loss spectrum image (any file ``eelsgpu.open`` reads; the zero-loss peak
is modelled with ``--zlp``, looked for near 0 eV, else anywhere (``--search LO HI`` eV restricts
it), and the single-scattering
distribution found by Fourier-log first, as ``eelsgpu deconvolve --kind band-limited`` does: the
SSD band-limited by a Gaussian of each pixel's measured ZLP FWHM) or an SSD store written by
``eelsgpu deconvolve`` (it has a variable ``ssd``; any kind but ``residual``: a
``reconvolved-zlp`` SSD is analysed on energy relative to each pixel's ZLP centre). Give one
normalisation: ``--refractive-index N`` (insulator or semiconductor), ``--metal``, or
``--thickness NM`` (a number, or a store/.npy map in nm). ``--density`` or
``--mean-free-path`` add the log-ratio thickness to compare with (KK_THICKNESS_DISAGREES).
``--surface fit`` refits, through a film model, the pixels whose surface correction fails.

The store holds the cubes eps1 and eps2 (``--cubes`` picks others: ``loss_function``,
``surface_intensity``, ``refractive_index``, ``extinction_coefficient``,
``absorption_coefficient``, ``n_eff``, ``all``, or ``none`` for maps only) and every map:
thickness_nm, iterations, converged, the plasmon energy and the other derived maps, and the
``quality`` bitmask with ``valid`` (see ``eelsgpu.kramers_kronig``; ``eelsgpu report`` draws and
explains it). The low-energy cut-off is 3 x each pixel's measured ZLP FWHM unless
``--low-energy-cutoff`` is given. ``--png PATH`` draws eps1, eps2 and the loss function (eq. 34
from eps where that cube is not kept) of one pixel (``--pixel Y,X``) or the mean of a region
(``--pixel Y0:Y1,X0:X1``) at PATH, and the thickness, plasmon-energy and quality maps beside it
(PATH_thickness.png, PATH_plasmon.png, PATH_quality.png). ``--uncertainty replicas:K`` (with
``--gain`` and ``--seed``) adds ``eps1_sigma``, ``eps2_sigma``, ``thickness_nm_sigma``,
``plasmon_energy_eV_sigma`` and the other sigmas from K Poisson replicas of each pixel: on a raw
input, replicas of the recorded counts (``--gain``: the recorded data units per electron), each
deconvolved and analysed again (end to end: the deconvolution's noise included); on an SSD store,
replicas of the SSD (its values taken as counts, ``--gain`` the SSD's units per electron: this
misses the deconvolution's own noise; see ``eelsgpu.kramers_kronig``).

Examples::

    eelsgpu kk lowloss.zarr -o kk.zarr --beam-energy 200 --collection-angle 10 --metal
    eelsgpu kk lowloss.dm3 -o kk.zarr --zlp threshold --search 10:30 --refractive-index 1.46
    eelsgpu kk ssd.zarr -o kk.zarr --refractive-index 3.42 --iterations 10 --png kk.png
    eelsgpu kk ssd.zarr -o kk.zarr --metal --cubes eps1,eps2,loss_function,n_eff
    eelsgpu kk ssd.zarr -o kk.zarr --metal --uncertainty replicas:50 --gain 1
    eelsgpu kk lowloss.zarr -o kk.zarr --metal --uncertainty replicas:32
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import (
    add_analysis_options,
    add_input,
    add_output,
    open_input,
    output_path,
    parse_chunks,
)
from ._uncertainty import add_uncertainty_options, describe, uncertainty_kwargs
from .deconvolve import add_search_option


def add_parser(sub) -> argparse.ArgumentParser:

    p = sub.add_parser(
        "kk",
        help="Kramers-Kronig analysis: eps1, eps2, thickness and optical maps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input(p, help="raw low-loss spectrum image, or an SSD store (eelsgpu deconvolve)")
    add_output(p)
    norm = p.add_mutually_exclusive_group(required=False)  # --model needs none (_film.py)
    norm.add_argument(
        "--refractive-index",
        type=float,
        metavar="N",
        dest="refractive_index",
        help="static refractive index n of an insulator or semiconductor (eq. 28)",
    )
    norm.add_argument("--metal", action="store_true", help="metal: Re[1/eps(0)] = 0")
    norm.add_argument(
        "--thickness",
        metavar="NM|MAP",
        dest="thickness",
        help="known thickness in nm: a number, a .npy map or a store with thickness_nm",
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=0,
        metavar="K",
        help="surface-loss correction iterations at most (eqs. 35-36; default 0)",
    )
    p.add_argument(
        "--surface",
        choices=("iterate", "fit"),
        default="iterate",
        help="iterate (default): the surface correction of --iterations alone; fit: where it "
        "cannot correct a pixel (SURFACE_NOT_CORRECTED, not converged), fit a Drude + Lorentz "
        "eps through a film model there (issue 15; --model and the fit options below choose it)",
    )
    p.add_argument(
        "--zlp",
        default="mirror",
        metavar="METHOD|FILE",
        help="raw input only: zero-loss peak model (mirror, fit, threshold) or file",
    )
    add_search_option(p)
    p.add_argument(
        "--kind",
        dest="deconv_output",
        default="band-limited",
        choices=("band-limited", "ssd", "reconvolved-gaussian", "reconvolved-zlp"),
        help="raw input only: which SSD to analyse (default band-limited: the SSD with a "
        "Gaussian of each pixel's measured ZLP FWHM)",
    )
    p.add_argument(
        "--fwhm",
        type=float,
        metavar="eV",
        dest="fwhm_eV",
        help="raw input only: Gaussian FWHM for --kind reconvolved-gaussian",
    )
    p.add_argument(
        "--low-energy-cutoff",
        type=float,
        metavar="eV",
        dest="low_energy_cutoff_eV",
        help="below it Im[-1/eps] is extrapolated linearly to 0 (default: 3 ZLP FWHM, "
        "measured on raw input, else 1.5 eV)",
    )
    p.add_argument(
        "--density",
        type=float,
        metavar="g/cm3",
        dest="density_g_cm3",
        help="density for the log-ratio thickness to compare with (Iakoubovskii mean free path)",
    )
    p.add_argument(
        "--mean-free-path",
        type=float,
        metavar="nm",
        dest="mean_free_path_nm",
        help="a known inelastic mean free path (nm), for the log-ratio thickness to compare with",
    )
    p.add_argument(
        "--min-thickness",
        type=float,
        default=20.0,
        metavar="NM",
        dest="min_thickness_nm",
        help="no surface correction below this thickness (default 20 nm)",
    )
    p.add_argument(
        "--cubes",
        default="eps1,eps2",
        metavar="NAMES",
        help="the spectra per pixel to compute and keep, comma-separated (default eps1,eps2; "
        "also loss_function, surface_intensity, refractive_index, extinction_coefficient, "
        "absorption_coefficient, n_eff; 'all'; 'none' for maps only)",
    )
    p.add_argument(
        "--png", metavar="PATH", help="eps1, eps2, loss function of --pixel at PATH; maps beside it"
    )
    p.add_argument(
        "--pixel",
        metavar="Y,X",
        help="pixel (Y,X) or region (Y0:Y1,X0:X1) for the spectra PNG (default: the centre pixel)",
    )
    add_analysis_options(p)
    add_uncertainty_options(p)
    p.add_argument(
        "--refractive-index-rel-sigma",
        type=float,
        metavar="R",
        dest="refractive_index_rel_sigma",
        help="relative one-sigma of --refractive-index (0.01 = 1 %%): the normalisation's "
        "systematic part of every output (<name>_sigma_systematic)",
    )
    p.add_argument(
        "--thickness-rel-sigma",
        type=float,
        metavar="R",
        dest="thickness_rel_sigma",
        help="relative one-sigma of --thickness (0.05 = 5 %%), as --refractive-index-rel-sigma",
    )
    from ._film import add_film_options  # the dielectric-model fit (issue 15)

    add_film_options(p)
    return p


def _selection(text: str | None, shape: tuple[int, ...]) -> dict[str, Any]:
    """--pixel as an isel dict over the navigation dims (a region is averaged later); an index
    outside the image or an empty region is an :class:`~eelsgpu.errors.InputError`."""
    from ..errors import InputError

    dims = ("y", "x")[2 - len(shape) :]
    if not dims:
        return {}
    if not text:
        return {d: n // 2 for d, n in zip(dims, shape, strict=True)}
    parts = text.split(",")
    if len(parts) != len(dims):
        raise InputError(f"--pixel {text!r}: give {len(dims)} comma-separated index(es)")
    out: dict[str, Any] = {}
    for d, part, n in zip(dims, parts, shape, strict=True):
        try:
            if ":" in part:
                a, b = (int(v) if v else None for v in part.split(":"))
                value: Any = slice(a, b)
            else:
                value = int(part)
        except ValueError:
            raise InputError(
                f"--pixel {text!r}: not integers or ranges like 10,20 or 0:8,4:12"
            ) from None
        if isinstance(value, slice):
            if not range(n)[value]:
                raise InputError(
                    f"--pixel {text!r}: the {d} range {part} holds no pixel of 0..{n - 1}"
                )
        elif not -n <= value < n:
            raise InputError(f"--pixel {text!r}: {d} index {value} outside 0..{n - 1}")
        out[d] = value
    return out


def _cubes_argument(text: str, png: str | None) -> Any:
    """--cubes as kramers_kronig's ``cubes``: "all", () for "none", else the names (checked
    there); --png needs eps1 and eps2."""
    from ..analysis.kramers_kronig import output_names
    from ..errors import InputError

    key = text.strip().lower()
    cubes: Any = (
        "all"
        if key == "all"
        else ()
        if key in ("none", "")
        else tuple(n.strip() for n in text.split(",") if n.strip())
    )
    try:
        names = output_names(cubes, None)
    except InputError as exc:
        raise InputError(f"--cubes {text!r}: {exc}") from None
    if png and not {"eps1", "eps2"} <= set(names):
        raise InputError(f"--png draws eps1 and eps2: keep them in --cubes (not {text!r})")
    return cubes


def _thickness_argument(text: str):
    from ..analysis._checks import positive
    from ..errors import InputError

    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None:  # a number of nm: the same thickness for every pixel
        return positive("--thickness", value, "nm")
    path = Path(text)
    if not path.exists():
        raise InputError(f"--thickness {text!r}: not a number of nm and no such file")
    if path.suffix == ".npy":
        import numpy as np

        return np.load(path, allow_pickle=False)
    from .. import io

    ds = io.open_store(path)
    if "thickness_nm" not in ds:
        raise InputError(f"--thickness {text}: the store has no thickness_nm variable")
    return ds["thickness_nm"]


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import io
    from ..analysis.kramers_kronig import kramers_kronig, warn_flagged
    from ..errors import InputError
    from ..plotting import quality_summary
    from ._common import calibration_kwargs

    out = output_path(args)
    chunks = parse_chunks(args.chunks)
    # a number of nm is checked before the input is read
    thickness = None if args.thickness is None else _thickness_argument(args.thickness)
    cubes = _cubes_argument(args.cubes, args.png)
    chain = None  # (the recorded image, deconvolve's options) for end-to-end replicas
    if io.is_store(args.input) and "ssd" in io.open_store(args.input):
        ssd = io.open_store(args.input, chunks=chunks or "auto")
    else:
        from ..analysis.deconvolution import deconvolve
        from .deconvolve import _zlp_argument, search_value

        if args.deconv_output == "reconvolved-gaussian" and args.fwhm_eV is None:
            raise InputError("--kind reconvolved-gaussian needs --fwhm (eV)")
        si = open_input(args)
        kind, gauss = args.deconv_output, args.fwhm_eV
        dec_options = dict(
            zlp=_zlp_argument(args.zlp, si),
            output=kind,
            fwhm_eV=gauss,
            search_eV=search_value(args),
            device=args.device,
        )
        ssd = deconvolve(si, **dec_options)
        for key in ("beam_energy_keV", "collection_angle_mrad"):
            if key in si.attrs:
                ssd.attrs.setdefault(key, si.attrs[key])
        if str(args.uncertainty or "").startswith("replicas") and args.surface != "fit":
            # replicas of the recorded counts through the deconvolution and KK both (end to
            # end: eelsgpu.analysis._chain), not of the SSD
            chain = (si, dec_options)
    from ._film import check_normalisation, film_kwargs, film_requested, run_film  # issue 15

    surface_fit = None
    if args.surface == "fit":  # KK first, the film fit only where its surface iteration fails
        surface_fit = {
            k: v
            for k, v in film_kwargs(args).items()
            if v is not None and k not in ("beam_energy_keV", "collection_angle_mrad")
        }
    elif film_requested(args):
        return run_film(args, ssd, out)
    check_normalisation(args)
    cal = calibration_kwargs(args)
    ds = kramers_kronig(
        ssd if chain is None else chain[0],
        beam_energy_keV=cal.get("beam_energy_keV"),
        collection_angle_mrad=cal.get("collection_angle_mrad"),
        refractive_index=args.refractive_index,
        metal=args.metal,
        thickness_nm=thickness,
        iterations=args.iterations,
        device=args.device,
        low_energy_cutoff_eV=args.low_energy_cutoff_eV,
        density_g_cm3=args.density_g_cm3,
        mean_free_path_nm=args.mean_free_path_nm,
        min_thickness_nm=args.min_thickness_nm,
        cubes=cubes,
        surface=args.surface,
        surface_fit=surface_fit,
        deconvolve=None if chain is None else chain[1],
        refractive_index_rel_sigma=args.refractive_index_rel_sigma,
        thickness_rel_sigma=args.thickness_rel_sigma,
        **uncertainty_kwargs(args),
    )
    ds.attrs["kk_input_path"] = str(args.input)
    if args.pixel is not None:  # a bad --pixel is an error before anything is written
        _selection(args.pixel, tuple(ds["valid"].shape))
    io.write_store(ds, out, overwrite=args.overwrite, progress=not args.quiet)
    res = io.open_store(out)
    warn_flagged(res)
    valid = np.asarray(res["valid"].values)
    if args.png:
        _pictures(res, Path(args.png), args.pixel)
    if not args.quiet:
        t = np.asarray(res["thickness_nm"].values)
        good = valid & np.isfinite(t)
        msg = f"wrote {out}: eps valid for {int(valid.sum())} of {valid.size} pixels"
        if good.any():
            msg += f", thickness {np.median(t[good]):.1f} nm median"
        if args.iterations:
            msg += f", surface correction converged in {int(np.sum(res['converged'].values))}"
        if "surface_method" in res:
            method = np.asarray(res["surface_method"].values)
            msg += (
                f", film fit where the iteration could not correct: {int(np.sum(method == 1))} "
                f"pixels fitted, {int(np.sum(method == 2))} failed (KK kept, flagged)"
            )
        print(msg)
        print(quality_summary(res["quality"]))
        line = describe(res)
        if line:
            if "thickness_nm_sigma" in res and good.any():
                sig = np.asarray(res["thickness_nm_sigma"].values)[good]
                sig = sig[np.isfinite(sig)]
                if sig.size:
                    line += f"; median thickness_nm_sigma {np.median(sig):.3g} nm"
            print(line)
    return 0


def _pictures(res, path: Path, pixel: str | None) -> None:
    import numpy as np

    from .. import plotting

    sel = _selection(pixel, tuple(res["valid"].shape))
    spectra = {}
    picked = {name: res[name].isel(sel) for name in ("eps1", "eps2") if name in res}
    if "loss_function" in res:
        picked["loss_function"] = res["loss_function"].isel(sel)
    else:  # not kept: eq. 34, Im[-1/eps] = eps2 / (eps1^2 + eps2^2), pixel by pixel
        e1, e2 = picked["eps1"], picked["eps2"]
        picked["loss_function"] = (e2 / (e1 * e1 + e2 * e2)).assign_attrs(
            units="", long_name="loss function Im[-1/eps] (eq. 34 from eps)"
        )
    for name, da in picked.items():
        attrs = res[name].attrs if name in res else da.attrs
        if da.ndim > 1:
            da = da.mean([d for d in da.dims if d != "energy"])
        da.attrs = attrs
        spectra[name.replace("_", " ")] = da
    where = ", ".join(
        f"{k}={v.start}:{v.stop}" if isinstance(v, slice) else f"{k}={v}" for k, v in sel.items()
    )
    # a metal's eps diverges as 1/E^2 towards 0 eV: start the plot where |eps| < 50 for good,
    # so the picture shows the plasmon region instead of the divergence
    energy = np.asarray(spectra["eps1"]["energy"].values, float)
    big = (np.abs(spectra["eps1"].values) > 50) | (np.abs(spectra["eps2"].values) > 50)
    lo = float(energy[np.nonzero(big)[0][-1] + 1]) if big.any() and not big[-1] else 0.0
    title = f"dielectric function ({where or 'spectrum'})"
    plotting.plot_spectra(
        spectra,
        path,
        title=title + (f", from {lo:.1f} eV where |eps| < 50" if lo > 0 else ""),
        ylabel="eps1, eps2, Im[-1/eps] (dimensionless)",
        xlim=(lo, min(50.0, float(res["energy"].values[-1]))),
    )
    if res["valid"].ndim >= 1:
        stem = path.with_suffix("")
        plotting.plot_map(res["thickness_nm"], f"{stem}_thickness.png")
        plotting.plot_map(res["plasmon_energy_eV"], f"{stem}_plasmon.png")
        if "quality" in res:
            plotting.plot_quality(res["quality"], f"{stem}_quality.png")
