"""Physically honest synthetic low-loss spectrum images, with the exact answer beside the data.

The model (Egerton 2011, sections 3.3, 4.1 and 4.2; kk-theory.md eqs. 13-31 and 36):

1. a dielectric function eps(E): :class:`Drude` (a metal) or :class:`Lorentz` (an insulator with
   one oscillator above its gap);
2. the single-scattering distribution per unit thickness from Im[-1/eps] with the angular factor
   ln(1 + (beta/theta_E)^2) and the relativistic theta_E (eq. 31, :func:`eelsgpu.kernels.
   dielectric.bulk_loss_per_eV_nm`), optionally plus the surface term of eq. 36;
3. plural scattering by the Poisson sum, done exactly as the Fourier exponential
   J~ = Z~ exp(S~/N0) (eq. 18 transformed) on a zero-padded grid, so nothing wraps around;
4. a zero-loss peak of given FWHM, asymmetry and Lorentzian fraction, integrated over each channel
   and centred per pixel (energy drift), convolved with all of it;
5. optional Poisson noise.

:func:`sxes_image` makes a synthetic soft X-ray emission (SXES) spectrum image on the grating's
non-uniform energy axis: two bonding states of a CaB6-like boride (a B-K band whose top edge
shifts, Ca-Ll,eta in 2nd order), Poisson noise (../shared/docs/sxes.md).

Everything is discrete and exact on the channel grid: the SSD returned as truth is the one the
data were built from (counts per channel, on the loss-energy axis), so a perfect Fourier-log
deconvolution returns it to rounding error (up to what the finite window cuts off), and
``sum(ssd)/N0`` equals the true t/lambda of the window plus what lies beyond it
(``true_t_over_lambda`` counts the whole padded grid, reaching at least 4 times the window).

Examples
--------
>>> sim = low_loss_image(Drude(15.0, 1.0), t_over_lambda=0.5, shape=(2, 3), n_channels=512,
...                      dispersion_eV=0.1, offset_eV=-5.0)
>>> sim["signal"].dims
('y', 'x', 'energy')
>>> float(sim["true_t_over_lambda"][0, 0])
0.5
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.fft as sfft
import xarray as xr
from scipy.special import ndtr

from .errors import InputError
from .kernels.dielectric import bulk_loss_per_eV_nm
from .kernels.surface import surface_loss_per_eV
from .kernels.sxes import JS300N_PROVISIONAL, N_PIXELS, grating_energy_eV
from .kernels.windows import channel_edges
from .model import spectrum_image

__all__ = [
    "Drude",
    "Lorentz",
    "ZeroLossPeak",
    "BondingState",
    "DEFAULT_STATES",
    "low_loss_image",
    "low_loss_spectrum",
    "sxes_image",
    "thickness_map",
]


@dataclass(frozen=True)
class Drude:
    """Free-electron (metal) dielectric function eps = 1 - Ep^2 / (E^2 + i E Gamma).

    Egerton 2011, eq. 3.40. ``plasmon_energy_eV`` Ep and ``damping_eV`` Gamma in eV.
    """

    plasmon_energy_eV: float = 15.0
    damping_eV: float = 1.0

    is_metal = True

    def eps(self, energy_eV: np.ndarray) -> np.ndarray:
        e = np.asarray(energy_eV, dtype=np.float64).astype(np.complex128)
        with np.errstate(divide="ignore", invalid="ignore"):
            return 1.0 - self.plasmon_energy_eV**2 / (e**2 + 1j * e * self.damping_eV)

    @property
    def refractive_index(self) -> float:
        """Static refractive index: infinite for a metal (Re[1/eps(0)] = 0)."""
        return math.inf


@dataclass(frozen=True)
class Lorentz:
    """One-oscillator insulator eps = 1 + Ep^2 / (Eg^2 - E^2 - i E Gamma).

    ``gap_eV`` Eg is the oscillator's resonance (the "gap" of the model), Ep its strength and
    Gamma its width, all in eV (Egerton 2011, eq. 3.39 with one bound oscillator). eps(0) =
    1 + Ep^2/Eg^2 = n^2.
    """

    plasmon_energy_eV: float = 16.6
    gap_eV: float = 5.07
    damping_eV: float = 3.7

    is_metal = False

    def eps(self, energy_eV: np.ndarray) -> np.ndarray:
        e = np.asarray(energy_eV, dtype=np.float64)
        return 1.0 + self.plasmon_energy_eV**2 / (self.gap_eV**2 - e**2 - 1j * e * self.damping_eV)

    @property
    def refractive_index(self) -> float:
        """Static refractive index n = sqrt(eps(0)) (eq. 28: Re[1/eps(0)] = 1/n^2)."""
        return math.sqrt(1.0 + (self.plasmon_energy_eV / self.gap_eV) ** 2)


def loss_function(model: Drude | Lorentz, energy_eV: np.ndarray) -> np.ndarray:
    """Im[-1/eps(E)] of a model, 0 at E <= 0."""
    e = np.asarray(energy_eV, dtype=np.float64)
    out = np.zeros_like(e)
    pos = e > 0
    out[pos] = np.imag(-1.0 / model.eps(e[pos]))
    return out


@dataclass(frozen=True)
class ZeroLossPeak:
    """A zero-loss peak shape R(E), unit area.

    A split Gaussian (half widths FWHM/2 (1 - asymmetry) on the gain side and FWHM/2
    (1 + asymmetry) on the loss side, so the FWHM is ``fwhm_eV``) mixed with a Lorentzian of the
    same FWHM (fraction ``lorentzian_fraction``), as a cold-FEG or Schottky source gives.
    """

    fwhm_eV: float = 0.5
    asymmetry: float = 0.0
    lorentzian_fraction: float = 0.0

    def cdf(self, energy_eV: np.ndarray) -> np.ndarray:
        """Integral of R from -inf to E (for per-channel integrals)."""
        x = np.asarray(energy_eV, dtype=np.float64)
        k = 2.0 * math.sqrt(2.0 * math.log(2.0))
        sl = self.fwhm_eV * (1.0 - self.asymmetry) / k
        sr = self.fwhm_eV * (1.0 + self.asymmetry) / k
        wl, wr = sl / (sl + sr), sr / (sl + sr)
        gauss = np.where(x < 0, 2 * wl * ndtr(x / sl), wl + 2 * wr * (ndtr(x / sr) - 0.5))
        lor = 0.5 + np.arctan(x / (self.fwhm_eV / 2.0)) / math.pi
        eta = self.lorentzian_fraction
        return (1.0 - eta) * gauss + eta * lor

    def channel_integrals(self, edges_eV: np.ndarray) -> np.ndarray:
        c = self.cdf(edges_eV)
        return np.diff(c, axis=-1)


def thickness_map(
    shape: tuple[int, int],
    kind: str = "gradient",
    t_over_lambda_range: tuple[float, float] = (0.1, 4.0),
    hole_fraction: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """A t/lambda map for test images.

    ``kind``: ``"uniform"`` (the low end everywhere), ``"gradient"`` (linear along x),
    ``"steps"`` (four terraces along x), ``"holes"`` (a gradient with round holes to vacuum,
    t = 0, covering about ``hole_fraction`` of the image).
    """
    ny, nx = shape
    lo, hi = t_over_lambda_range
    x = np.linspace(0.0, 1.0, nx)[None, :] * np.ones((ny, 1))
    if kind == "uniform":
        return np.full(shape, float(lo))
    if kind == "gradient":
        return lo + (hi - lo) * x
    if kind == "steps":
        return lo + (hi - lo) * np.floor(x * 3.999) / 3.0
    if kind == "holes":
        t = lo + (hi - lo) * x
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:ny, 0:nx]
        target = hole_fraction * ny * nx
        r = max(1.0, 0.12 * min(ny, nx))
        holes = np.zeros(shape, bool)
        while holes.sum() < target:
            cy, cx = rng.uniform(0, ny), rng.uniform(0, nx)
            holes |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        t[holes] = 0.0
        return t
    raise ValueError(f"kind must be uniform, gradient, steps or holes, not {kind!r}")


def _single_scattering_unit(
    model: Drude | Lorentz,
    n_pad: int,
    dispersion_eV: float,
    beam_energy_keV: float,
    collection_angle_mrad: float,
    oversample: int = 8,
) -> tuple[np.ndarray, float]:
    """Per-channel single-scattering probability per nm, in kernel coordinates (index k = k dE).

    Returns ``(p, inv_lambda)``: ``p[k]`` is the integral of dP/dE (per nm) over channel k, and
    1/lambda (per nm) its sum over the padded grid.
    """
    # midpoint rule on `oversample` sub-channels: channel k spans [(k - 1/2) dE, (k + 1/2) dE]
    sub = (np.arange(n_pad * oversample) + 0.5) / oversample - 0.5
    e = sub * dispersion_eV
    dens = bulk_loss_per_eV_nm(loss_function(model, e), e, beam_energy_keV, collection_angle_mrad)
    p = dens.reshape(n_pad, oversample).sum(axis=1) * dispersion_eV / oversample
    return p, float(p.sum())


def _surface_unit(
    model: Drude | Lorentz,
    n_pad: int,
    dispersion_eV: float,
    beam_energy_keV: float,
    collection_angle_mrad: float,
    oversample: int = 8,
) -> np.ndarray:
    sub = (np.arange(n_pad * oversample) + 0.5) / oversample - 0.5
    e = sub * dispersion_eV
    eps = np.where(e > 0, model.eps(np.where(e > 0, e, 1.0)), 1.0)
    dens = surface_loss_per_eV(eps.real, eps.imag, e, beam_energy_keV, collection_angle_mrad)
    return dens.reshape(n_pad, oversample).sum(axis=1) * dispersion_eV / oversample


#: The notes' oxide (thin-film-theory.md section 1.6): eps(0) = 3.2, loss peak near 23 eV.
NOTES_OXIDE = Lorentz(plasmon_energy_eV=math.sqrt(2.2) * 13.0, gap_eV=13.0, damping_eV=6.0)


def _film_units(
    materials: list,
    region: np.ndarray,
    t_nm: np.ndarray,
    n_pad: int,
    n_used: int,
    dispersion_eV: float,
    beam_energy_keV: float,
    collection_angle_mrad: float,
    convergence_angle_mrad: float,
    kind: str,
    retarded: bool,
    oxide: Any,
    oxide_nm: float,
) -> np.ndarray:
    """Per-pixel single-scattering probability per channel (kernel coordinates) of a film model
    (:func:`eelsgpu.kernels.film.film_loss`), integrated over each channel [(k - 1/2) dE,
    (k + 1/2) dE] with 4 Gauss-Legendre nodes, for channels k < ``n_used`` (the rest is 0)."""
    from .kernels import film as F

    kinds = {"coupled": "coupled", "kroger": "kroger", "layered": "layered", "bulk": "none"}
    if kind not in kinds:
        raise ValueError(f"surface must be a bool or one of eq36, none, {', '.join(kinds)}")
    n_used = max(2, min(int(n_used), n_pad))
    k = np.arange(1, n_used)  # channel 0 (around 0 eV) has no loss
    nodes, weights, index = F.channel_nodes((k - 0.5) * dispersion_eV, (k + 0.5) * dispersion_eV, 4)
    nodes = np.maximum(nodes, 1e-3)
    setup = F.film_setup(
        nodes,
        beam_energy_keV,
        collection_angle_mrad,
        kind=kinds[kind],
        retarded=retarded,
        convergence_angle_mrad=convergence_angle_mrad,
        d_min_nm=max(0.5, min(float(np.min(t_nm[t_nm > 0], initial=10.0)), oxide_nm or 10.0)),
    )
    out = np.zeros((t_nm.size, n_pad))
    ox = oxide or NOTES_OXIDE
    for (r, t), rows in _groups(region, t_nm).items():
        if t <= 0:
            continue
        eps = materials[r].eps(nodes)[None, :]
        kw = {}
        if kind == "layered":
            kw = {"eps_oxide": ox.eps(nodes)[None, :], "oxide_nm": np.array([float(oxide_nm)])}
        loss = F.film_loss(np, setup, eps, np.array([t]), **kw).total.imag[0]
        per_channel = np.bincount(index, weights * loss, minlength=k.size)
        out[rows, 1:n_used] = per_channel / setup.beam.prefactor_nm_eV
    return out


def _groups(region: np.ndarray, t_nm: np.ndarray) -> dict[tuple[int, float], np.ndarray]:
    """Pixels with the same material and thickness (one film model each)."""
    out: dict[tuple[int, float], list[int]] = {}
    for i, (r, t) in enumerate(zip(region.tolist(), t_nm.tolist(), strict=True)):
        out.setdefault((int(r), float(t)), []).append(i)
    return {k: np.asarray(v) for k, v in out.items()}


def low_loss_image(
    material: Drude | Lorentz | Sequence[Drude | Lorentz],
    *,
    t_over_lambda: float | np.ndarray = 1.0,
    shape: tuple[int, ...] = (16, 16),
    regions: np.ndarray | None = None,
    beam_energy_keV: float = 200.0,
    collection_angle_mrad: float = 10.0,
    convergence_angle_mrad: float = 0.0,
    n_channels: int = 2048,
    dispersion_eV: float = 0.05,
    offset_eV: float = -5.0,
    zlp: ZeroLossPeak | None = None,
    total_counts: float | np.ndarray = 1e6,
    zlp_counts: float | None = None,
    drift_eV: float | np.ndarray = 0.0,
    surface: bool | str = False,
    film_retarded: bool = False,
    oxide_nm: float = 0.0,
    oxide: Drude | Lorentz | None = None,
    noise: bool = False,
    seed: int = 0,
    dtype: np.dtype = np.float32,
    pixel_size_nm: float | None = 1.0,
    return_ssd: bool = True,
    chunks: tuple[int, ...] | None = None,
) -> xr.Dataset:
    """A synthetic low-loss spectrum image and its exact answer.

    Parameters
    ----------
    material : Drude, Lorentz, or a sequence of them
        The dielectric model; with a sequence, ``regions`` (int map) says which pixel is which.
    t_over_lambda : float or array of ``shape``
        Thickness over the inelastic mean free path of each pixel (0 is vacuum).
    shape : tuple
        Navigation shape: ``()`` for one spectrum, ``(nx,)`` for a line scan, ``(ny, nx)``.
    beam_energy_keV, collection_angle_mrad : float
        E0 in keV and beta in mrad (the model assumes a parallel beam;
        ``convergence_angle_mrad`` is only recorded).
    n_channels, dispersion_eV, offset_eV : int, float, float
        The energy window: channel i is at ``offset_eV + i * dispersion_eV`` (eV).
    zlp : ZeroLossPeak
        Shape of the zero-loss peak (default: Gaussian, 0.5 eV FWHM).
    total_counts : float or array
        Counts per pixel, all energies (N0 = total_counts exp(-t/lambda)), unless ``zlp_counts``
        sets N0 directly.
    drift_eV : float or array of ``shape``
        Where each pixel's ZLP sits (eV): the whole spectrum is shifted by it.
    surface : bool or str
        Add the surface-loss term of eq. 36 (two surfaces) to the single scattering (True, or
        ``"eq36"``); or replace the single scattering by a film model of
        :mod:`eelsgpu.kernels.film` (thin-film-theory.md section 1): ``"coupled"`` (Ritchie's
        non-retarded film), ``"kroger"`` (the retarded slab), ``"layered"`` (``oxide`` of
        ``oxide_nm`` nm on both faces of the film), ``"bulk"`` (the bulk term alone, retarded
        with ``film_retarded``). The film models use each pixel's thickness t = t/lambda x
        lambda (lambda of eq. 31's bulk term, as without them) and are integrated over each
        channel with 4 Gauss-Legendre nodes, up to the window's end (nothing beyond it reaches
        the window).
    film_retarded : bool
        Retarded bulk (and layered) terms for ``surface="bulk"``/``"layered"``.
    oxide_nm, oxide : float, Drude or Lorentz
        The oxide of ``surface="layered"`` (nm per face; default eps: the notes' Lorentz at
        13 eV, f = 2.2 x 13^2 eV^2, Gamma 6 eV).
    noise : bool
        Draw Poisson counts (with ``seed``).
    return_ssd : bool
        Include the true SSD cube (float64, the size of the data twice over).

    Returns
    -------
    xarray.Dataset
        ``signal`` (the spectrum image, dask-backed, ``dtype``) and the truth: ``true_t_nm``,
        ``true_t_over_lambda``, ``true_mean_free_path_nm`` (nm), ``true_zlp_intensity`` (N0,
        counts), ``true_zlp_centre_eV``, ``true_ssd`` (counts per channel on the loss axis, if
        asked), ``true_zlp`` (N0 R per channel, centred at 0 eV), ``true_eps`` (per material),
        ``true_region``; attributes record every parameter.
    """
    materials = list(material) if isinstance(material, Sequence) else [material]
    zlp = zlp or ZeroLossPeak()
    shape = tuple(int(s) for s in shape)
    n_pix = int(np.prod(shape)) if shape else 1
    region = np.zeros(shape, dtype=np.int32) if regions is None else np.asarray(regions, np.int32)
    if region.shape != shape:
        raise ValueError(f"regions has shape {region.shape}, expected {shape}")
    tl = np.broadcast_to(np.asarray(t_over_lambda, dtype=np.float64), shape).copy()
    drift = np.broadcast_to(np.asarray(drift_eV, dtype=np.float64), shape).reshape(-1)
    if np.any(tl < 0):
        raise ValueError("t_over_lambda must be >= 0")

    n_pad = sfft.next_fast_len(4 * n_channels + int(abs(offset_eV) / dispersion_eV) + 64, real=True)
    energy = offset_eV + dispersion_eV * np.arange(n_channels)
    # per-material unit single scattering, in kernel coordinates (index k <-> k dE)
    units, inv_lambdas, surfaces = [], [], []
    for m in materials:
        p, inv_lam = _single_scattering_unit(
            m, n_pad, dispersion_eV, beam_energy_keV, collection_angle_mrad
        )
        units.append(p)
        inv_lambdas.append(inv_lam)
        surfaces.append(
            _surface_unit(m, n_pad, dispersion_eV, beam_energy_keV, collection_angle_mrad)
            if surface is True or surface == "eq36"
            else np.zeros(n_pad)
        )
    lam_nm = 1.0 / np.asarray(inv_lambdas)[region]
    t_nm = tl * lam_nm
    film_units = None
    if isinstance(surface, str) and surface not in ("eq36", "none"):
        film_units = _film_units(
            materials,
            region.reshape(-1),
            t_nm.reshape(-1),
            n_pad,
            n_channels + int(round(offset_eV / dispersion_eV)) + 2,
            dispersion_eV,
            beam_energy_keV,
            collection_angle_mrad,
            convergence_angle_mrad,
            surface,
            film_retarded,
            oxide,
            oxide_nm,
        )
    total = np.broadcast_to(np.asarray(total_counts, dtype=np.float64), shape)
    n0 = np.full(shape, float(zlp_counts)) if zlp_counts is not None else total * np.exp(-tl)

    # ZLP per pixel: per-channel integrals of R centred at the drift, on the spectrum grid
    edges = energy[:, None] + dispersion_eV * np.array([-0.5, 0.5])
    origin = int(round(-offset_eV / dispersion_eV))  # channel of 0 eV
    if abs(offset_eV + origin * dispersion_eV) > 1e-9 * dispersion_eV + 1e-12:
        raise ValueError("offset_eV must be a whole number of channels from 0 eV")

    signal = np.empty((n_pix, n_channels), dtype=np.float64)
    ssd_true = np.zeros((n_pix, n_channels), dtype=np.float64) if return_ssd else None
    flat_tl, flat_t, flat_n0, flat_reg = (
        tl.reshape(-1),
        t_nm.reshape(-1),
        n0.reshape(-1),
        region.reshape(-1),
    )
    block = 256
    for start in range(0, n_pix, block):
        sl = slice(start, min(n_pix, start + block))
        b = sl.stop - sl.start
        # single scattering S/N0 per pixel (kernel coordinates)
        s = np.empty((b, n_pad))
        for r, (p, surf) in enumerate(zip(units, surfaces, strict=True)):
            mask = flat_reg[sl] == r
            if np.any(mask):
                s[mask] = flat_t[sl][mask, None] * p[None, :] + (
                    (flat_tl[sl][mask, None] > 0) * surf[None, :]
                )
        if film_units is not None:
            s = film_units[sl]
        z = np.zeros((b, n_pad))
        z[:, :n_channels] = (
            flat_n0[sl, None]
            * np.diff(
                zlp.cdf(
                    edges.reshape(-1)[None, :].reshape(1, n_channels, 2) - drift[sl, None, None]
                ),
                axis=-1,
            )[..., 0]
        )
        spec = sfft.irfft(sfft.rfft(z, axis=-1) * np.exp(sfft.rfft(s, axis=-1)), n=n_pad, axis=-1)
        signal[sl] = spec[:, :n_channels]
        if ssd_true is not None:
            ssd_true[sl, origin:] = flat_n0[sl, None] * s[:, : n_channels - origin]

    if noise:
        rng = np.random.default_rng(seed)
        signal = rng.poisson(np.clip(signal, 0, None)).astype(np.float64)

    zlp_true = np.diff(zlp.cdf(edges), axis=-1)[:, 0]
    e_eps = energy[energy > 0]
    nav_dims = ("y", "x")[2 - len(shape) :] if shape else ()
    coords = {}
    if pixel_size_nm is not None:
        for d, n in zip(nav_dims, shape, strict=True):
            coords[d] = np.arange(n) * pixel_size_nm
    si = spectrum_image(
        signal.reshape(*shape, n_channels),
        energy,
        **coords,
        spatial_unit="nm" if pixel_size_nm is not None else None,
        beam_energy_keV=beam_energy_keV,
        collection_angle_mrad=collection_angle_mrad,
        convergence_angle_mrad=convergence_angle_mrad,
        source="eelsgpu.synthetic",
        dtype=dtype,
        chunks=chunks,
    )
    params = {
        "materials": [{"model": type(m).__name__, **asdict(m)} for m in materials],
        "zlp": asdict(zlp),
        "surface": surface,
        **(
            {
                "film": {
                    "retarded": film_retarded,
                    "oxide_nm": oxide_nm,
                    "oxide": asdict(oxide or NOTES_OXIDE),
                }
            }
            if film_units is not None
            else {}
        ),
        "noise": noise,
        "seed": seed,
        "n_pad": n_pad,
    }
    ds = xr.Dataset(
        {
            "signal": si,
            "true_t_over_lambda": (nav_dims, tl, {"units": "", "long_name": "t/lambda"}),
            "true_t_nm": (nav_dims, t_nm, {"units": "nm", "long_name": "thickness"}),
            "true_mean_free_path_nm": (
                nav_dims,
                lam_nm,
                {"units": "nm", "long_name": "inelastic mean free path"},
            ),
            "true_zlp_intensity": (nav_dims, n0, {"units": "counts", "long_name": "N0"}),
            "true_zlp_centre_eV": (nav_dims, drift.reshape(shape), {"units": "eV"}),
            "true_region": (nav_dims, region, {"long_name": "material index"}),
            "true_zlp_shape": ("energy", zlp_true, {"units": "1/channel", "long_name": "R(E)"}),
            "true_eps": (
                ("material", "energy_eps"),
                np.stack([m.eps(e_eps) for m in materials]),
                {"long_name": "dielectric function"},
            ),
        },
        coords={"energy_eps": ("energy_eps", e_eps, {"units": "eV"})},
        attrs={**si.attrs, "synthetic_parameters": json.dumps(params)},
    )
    ds["true_refractive_index"] = ("material", [m.refractive_index for m in materials])
    if ssd_true is not None:
        ds["true_ssd"] = (
            nav_dims + ("energy",),
            ssd_true.reshape(*shape, n_channels),
            {"units": "counts", "long_name": "single-scattering distribution"},
        )
    return ds


def low_loss_spectrum(material: Drude | Lorentz, **kwargs) -> xr.Dataset:
    """One synthetic spectrum (``shape=()``); the arguments of :func:`low_loss_image`."""
    return low_loss_image(material, shape=(), **kwargs)


# --------------------------------------------------------------------------- SXES images
@dataclass(frozen=True)
class BondingState:
    """Emission of one bonding state of a CaB6-like boride, in counts per pixel.

    The B-K valence band is ``sqrt(E - bottom)`` cut by a Fermi-like top edge
    ``1 / (1 + exp((E - top) / top_width))``; Ca-Ll and Ca-Leta (302.7, 306.6 eV) appear in
    2nd order at 151.35 and 153.3 eV as Gaussians; O-K (524.9 eV) in 3rd order at 175.0 eV; a
    flat continuum. Na doping (holes at the top of the B band) moves the top edge up.
    """

    band_top_eV: float = 187.0
    band_top_width_eV: float = 0.35
    band_bottom_eV: float = 170.0
    band_counts: float = 4000.0
    ca_counts: float = 800.0
    oxygen_counts: float = 100.0
    continuum_per_eV: float = 20.0
    line_sigma_eV: float = 0.4


DEFAULT_STATES = (
    BondingState(),
    BondingState(band_top_eV=187.6, ca_counts=650.0),  # Na-doped: higher top, less Ca
)


def _region_map(shape: tuple[int, int], regions: Any) -> np.ndarray:
    ny, nx = shape
    if isinstance(regions, str):
        yy, xx = np.mgrid[0:ny, 0:nx]
        if regions == "halves":
            return (xx >= nx // 2).astype(np.int32)
        if regions == "disk":
            r = min(ny, nx) / 3.0
            return (((yy - (ny - 1) / 2) ** 2 + (xx - (nx - 1) / 2) ** 2) <= r * r).astype(np.int32)
        raise InputError(f"regions must be 'halves', 'disk' or a label array, not {regions!r}")
    lab = np.asarray(regions)
    if lab.shape != tuple(shape):
        raise InputError(f"the region map has shape {lab.shape}, the image {tuple(shape)}")
    return lab.astype(np.int32)


def _state_density(state: BondingState, e: np.ndarray) -> np.ndarray:
    """Emission density (counts/eV) of one state on energies ``e``."""
    band = np.sqrt(np.clip(e - state.band_bottom_eV, 0.0, None)) / (
        1.0 + np.exp((e - state.band_top_eV) / state.band_top_width_eV)
    )
    fine = np.linspace(state.band_bottom_eV, state.band_top_eV + 10 * state.band_top_width_eV, 4000)
    norm = np.trapezoid(
        np.sqrt(fine - state.band_bottom_eV)
        / (1.0 + np.exp((fine - state.band_top_eV) / state.band_top_width_eV)),
        fine,
    )
    density = state.band_counts * band / norm + state.continuum_per_eV

    def gauss(centre: float, area: float) -> np.ndarray:
        s = state.line_sigma_eV
        return area * np.exp(-0.5 * ((e - centre) / s) ** 2) / (s * np.sqrt(2 * np.pi))

    density = (
        density + gauss(302.7 / 2, 0.6 * state.ca_counts) + gauss(306.6 / 2, 0.4 * state.ca_counts)
    )
    return density + gauss(524.9 / 3, state.oxygen_counts)


def sxes_image(
    shape: tuple[int, int] = (24, 24),
    regions: Any = "disk",
    states: Sequence[BondingState] = DEFAULT_STATES,
    *,
    energy_range_eV: tuple[float, float] = (140.0, 200.0),
    coefficients: Sequence[float] = JS300N_PROVISIONAL,
    intensity: Any = 1.0,
    noise: bool = True,
    seed: int | None = 0,
    dtype: Any = np.float32,
    chunks: Any = None,
) -> xr.Dataset:
    """A synthetic SXES spectrum image of regions in different bonding states (exact truth).

    The energy axis is the grating's non-uniform one: the CCD pixels whose first-order energy
    (``coefficients``, default the provisional JS300N cubic) lies in ``energy_range_eV``.
    Counts per channel are the state's density (see :class:`BondingState`) times the channel
    width, times ``intensity`` (scalar or (y, x) map), with Poisson noise when ``noise``.

    Parameters
    ----------
    shape : (ny, nx)
    regions : "disk", "halves" or int array (ny, nx)
        Which state each pixel is in (label k uses ``states[k]``).
    states : sequence of BondingState
        Default: CaB6-like (top edge 187.0 eV) and Na-doped (187.6 eV, less Ca).
    noise : bool
        Poisson counts (``seed`` for the generator).

    Returns
    -------
    xarray.Dataset
        ``signal`` (y, x, energy; counts per channel, lazy), ``true_region`` (y, x) and
        ``true_signal`` (the noise-free expectation).

    Examples
    --------
    >>> ds = sxes_image((4, 6), regions="halves", seed=1)
    >>> ds["signal"].dims, ds["true_region"].values.sum()
    (('y', 'x', 'energy'), np.int64(12))
    """
    labels = _region_map(tuple(shape), regions)
    if labels.min() < 0 or labels.max() >= len(states):
        raise InputError(f"region labels run 0..{labels.max()} but {len(states)} states were given")
    pix = np.arange(N_PIXELS)
    energy_all = grating_energy_eV(pix, coefficients)
    keep = (energy_all >= energy_range_eV[0]) & (energy_all <= energy_range_eV[1])
    order = np.argsort(energy_all[keep])
    e = energy_all[keep][order]
    if e.size < 8:
        raise InputError(f"energy_range_eV {energy_range_eV} holds only {e.size} channels")
    lo, hi = channel_edges(e)
    width = hi - lo
    per_state = np.stack([_state_density(s, e) * width for s in states])  # counts per channel
    scale = np.broadcast_to(np.asarray(intensity, dtype=np.float64), labels.shape)
    expected = per_state[labels] * scale[..., None]
    if noise:
        rng = np.random.default_rng(seed)
        counts = rng.poisson(expected).astype(np.float64)
    else:
        counts = expected
    sig = spectrum_image(
        counts, e, source="eelsgpu.synthetic.sxes_image", dtype=dtype, chunks=chunks
    )
    sig["energy"].attrs["long_name"] = "photon energy (first order)"
    true = spectrum_image(expected, e, dtype=np.float64, chunks=chunks).rename("true_signal")
    return xr.Dataset(
        {
            "signal": sig,
            "true_signal": true,
            "true_region": (("y", "x"), labels, {"units": "", "long_name": "true region label"}),
        },
        attrs={"source": "eelsgpu.synthetic.sxes_image", "pixel_first": int(pix[keep].min())},
    )
