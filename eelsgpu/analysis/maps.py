"""Energy-window and spectral-feature maps of any spectrum image (EELS low/core loss, SXES).

:func:`window_maps` parses and checks its arguments against the energy axis, warns of
higher-order SXES lines, and runs :func:`eelsgpu.kernels.windows.window_kernel` (intensity with
background removal, centroid, Gaussian peak, FWHM, ratios; see :mod:`eelsgpu.kernels.windows`
for the equations) over the pixel blocks through the engine.

Examples
--------
>>> import numpy as np
>>> from eelsgpu.model import spectrum_image
>>> e = np.arange(100.0, 200.0, 0.5)
>>> si = spectrum_image(np.exp(-0.5 * ((e - 150.0) / 2.0) ** 2) * np.ones((2, 2, 1)), e)
>>> ds = window_maps(si, {"band": (140.0, 160.0)}, peak=["band"], device="cpu")
>>> round(float(ds["band_peak_eV"][0, 0]), 6)
150.0
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from ..engine import apply_kernel
from ..errors import InputError
from ..kernels.sxes import HigherOrderLineWarning, higher_order_lines_in_window
from ..kernels.windows import BACKGROUND_MODELS, window_block, window_spans
from ..model import as_spectrum_image
from ._checks import positive_int
from ._uncertainty import parse_uncertainty

__all__ = ["window_maps"]

Range = tuple[float, float]


# --------------------------------------------------------------------------- argument parsing
def _as_ranges(value: Any, what: str) -> list[Range]:
    """(lo, hi) or a sequence of (lo, hi) -> list of float pairs."""
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise InputError(
            f"{what} must be (lo_eV, hi_eV) or a list of them, not {value!r}"
        ) from None
    if arr.ndim == 1 and arr.size == 2:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InputError(f"{what} must be (lo_eV, hi_eV) or a list of them, not {value!r}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{what} must be finite energies in eV, not {value!r}")
    return [(float(lo), float(hi)) for lo, hi in arr]


def _check_range(lo: float, hi: float, energy: np.ndarray, what: str, source: str | None) -> None:
    where = f" ({source})" if source else ""
    if not hi > lo:
        raise InputError(f"{what} {lo:g}:{hi:g} eV is empty: the upper end must exceed the lower")
    if hi <= energy[0] or lo >= energy[-1]:
        raise InputError(
            f"{what} {lo:g}:{hi:g} eV lies outside the energy axis {energy[0]:g} to "
            f"{energy[-1]:g} eV{where}"
        )


def _names(value: str | Iterable[str] | None, windows: Mapping[str, Any], what: str) -> list[str]:
    if value is None:
        return []
    names = [value] if isinstance(value, str) else list(value)
    for n in names:
        if n not in windows:
            raise InputError(f"{what} names window {n!r}, which is not among {list(windows)}")
    return names


def _parse_windows(
    windows: Mapping[str, Range], energy: np.ndarray, source: str | None
) -> list[tuple[str, float, float]]:
    """``{name: (lo, hi)}`` -> ``[(name, lo, hi)]``, each name an identifier, each range on the axis."""
    win_list: list[tuple[str, float, float]] = []
    for name, rng in windows.items():
        if not str(name).isidentifier():
            raise InputError(
                f"window name {name!r} must be a plain identifier (letters, digits, _)"
            )
        (lo, hi), *rest = _as_ranges(rng, f"window {name}")
        if rest:
            raise InputError(f"window {name} must be one (lo_eV, hi_eV) range")
        _check_range(lo, hi, energy, f"window {name}", source)
        win_list.append((str(name), lo, hi))
    return win_list


def _parse_backgrounds(
    background: Mapping[str, Range | Sequence[Range]] | None,
    windows: Mapping[str, Range],
    background_model: str,
    energy: np.ndarray,
    source: str | None,
) -> dict[str, list[Range]]:
    """``{name: range or ranges}`` -> ``{name: [(lo, hi), ...]}``, checked against the windows."""
    bgs: dict[str, list[Range]] = {}
    for name, rng in (background or {}).items():
        if name not in windows:
            raise InputError(f"background given for {name!r}, which is not a window")
        ranges = _as_ranges(rng, f"background {name}")
        w_lo, w_hi = _as_ranges(windows[name], f"window {name}")[0]
        for lo, hi in ranges:
            _check_range(lo, hi, energy, f"background {name}", source)
            if lo < w_hi and hi > w_lo:
                # the fit would take the window's own signal for background and remove it
                raise InputError(
                    f"background {name} {lo:g}:{hi:g} eV overlaps its window {w_lo:g}:{w_hi:g} "
                    "eV; a background is fitted where the window has no signal: put it before "
                    "(or after) the window"
                )
            if background_model == "power-law" and lo <= 0:
                raise InputError(
                    f"a power-law background needs energies > 0; background {name} starts at {lo:g} eV"
                )
        bgs[str(name)] = ranges
    return bgs


def _parse_ratios(
    ratios: Iterable[str | tuple[str, str]] | None, windows: Mapping[str, Range]
) -> list[tuple[str, str]]:
    """``"A/B"`` or ``(A, B)`` -> ``[(A, B)]``, both windows."""
    ratio_pairs: list[tuple[str, str]] = []
    for r in ratios or ():
        a, b = r.split("/") if isinstance(r, str) else r
        a, b = a.strip(), b.strip()
        _names([a, b], windows, f"ratio {a}/{b}")
        ratio_pairs.append((a, b))
    return ratio_pairs


@dataclass(frozen=True)
class _WindowRequest:
    """The checked arguments of :func:`window_maps`, as the kernel takes them."""

    windows: tuple[tuple[str, float, float], ...]
    backgrounds: dict[str, list[Range]]
    background_model: str
    centroid: tuple[str, ...]
    peak: tuple[str, ...]
    width: tuple[str, ...]
    ratios: tuple[tuple[str, str], ...]
    peak_channels: int
    spans: dict[str, tuple[int, int]]

    def kernel_params(self) -> dict[str, Any]:
        """The parameters of :func:`eelsgpu.kernels.windows.window_kernel`."""
        return {
            "windows": self.windows,
            "backgrounds": self.backgrounds,
            "background_model": self.background_model,
            "centroid": self.centroid,
            "peak": self.peak,
            "width": self.width,
            "ratios": self.ratios,
            "peak_channels": self.peak_channels,
            "spans": self.spans,
        }


def _parse_request(
    si: xr.DataArray,
    windows: Mapping[str, Range],
    background: Mapping[str, Range | Sequence[Range]] | None,
    background_model: str,
    ratios: Iterable[str | tuple[str, str]] | None,
    centroid: str | Iterable[str] | None,
    peak: str | Iterable[str] | None,
    width: str | Iterable[str] | None,
    peak_channels: int,
) -> _WindowRequest:
    """Check every argument of :func:`window_maps` (in the order the user reads them)."""
    if background_model not in BACKGROUND_MODELS:
        raise InputError(
            f"background_model must be one of {BACKGROUND_MODELS}, not {background_model!r}"
        )
    if not windows:
        raise InputError("window_maps needs at least one window, e.g. windows={'Cu': (931, 1000)}")
    source = si.attrs.get("source")
    energy = np.asarray(si["energy"].values, dtype=np.float64)
    win_list = _parse_windows(windows, energy, source)
    bgs = _parse_backgrounds(background, windows, background_model, energy, source)
    ratio_pairs = _parse_ratios(ratios, windows)
    cen = _names(centroid, windows, "centroid")
    pk = _names(peak, windows, "peak")
    wd = _names(width, windows, "width")
    peak_channels = positive_int("peak_channels", peak_channels, 3)
    if peak_channels % 2 == 0:
        raise InputError(f"peak_channels must be odd and >= 3, not {peak_channels}")
    return _WindowRequest(
        windows=tuple(win_list),
        backgrounds=bgs,
        background_model=background_model,
        centroid=tuple(cen),
        peak=tuple(pk),
        width=tuple(wd),
        ratios=tuple(ratio_pairs),
        peak_channels=int(peak_channels),
        spans=window_spans(energy, win_list, bgs),
    )


def _warn_higher_orders(
    windows: Sequence[tuple[str, float, float]], elements: Iterable[str], max_order: int
) -> None:
    """A :class:`HigherOrderLineWarning` per window holding a higher-order line of ``elements``."""
    for name, lo, hi in windows:
        for hit in higher_order_lines_in_window((lo, hi), elements, max_order=max_order):
            warnings.warn(
                f"window {name} ({lo:g}-{hi:g} eV) holds {hit.describe()}",
                HigherOrderLineWarning,
                stacklevel=3,  # the caller of window_maps
            )


# --------------------------------------------------------------------------- public function
def window_maps(
    si: xr.DataArray,
    windows: Mapping[str, Range],
    background: Mapping[str, Range | Sequence[Range]] | None = None,
    background_model: str = "power-law",
    ratios: Iterable[str | tuple[str, str]] | None = None,
    centroid: str | Iterable[str] | None = None,
    peak: str | Iterable[str] | None = None,
    width: str | Iterable[str] | None = None,
    *,
    peak_channels: int = 3,
    elements: Iterable[str] | None = None,
    max_order: int = 3,
    uncertainty: str | None = None,
    n_replicas: int | None = None,
    gain: float | None = None,
    noise_variance: xr.DataArray | None = None,
    seed: int = 0,
    device: str = "auto",
) -> xr.Dataset:
    """Energy-window maps of a spectrum image, with background removal and band features.

    Parameters
    ----------
    si : xarray.DataArray
        Spectrum image (dims ``(..., "energy")``), counts per channel; the energy axis (eV) may
        be non-uniform (SXES).
    windows : mapping name -> (lo_eV, hi_eV)
        Integration windows, e.g. ``{"Cu": (931, 1000)}``.
    background : mapping name -> (lo_eV, hi_eV) or list of them, optional
        Background-fit range(s) per window, e.g. ``{"Cu": (850, 925)}``; windows not named get no
        background removed.
    background_model : {"power-law", "linear"}
        ``A E^-r`` (core-loss edges; Egerton 3rd ed. sec. 4.4.2) or ``a + b E`` (emission lines
        on a flat continuum).
    ratios : iterable of "A/B" or (A, B), optional
        Intensity ratios, returned as ``A_over_B``.
    centroid, peak, width : str or iterable of str, optional
        Windows for ``<name>_centroid_eV``, ``<name>_peak_eV`` (Gaussian fit on the top
        ``peak_channels`` channels) and ``<name>_fwhm_eV`` (half-maximum crossings).
    peak_channels : int
        Odd number of channels used by the peak fit (3 = exact log-parabola through the top 3).
    elements : iterable of str, optional
        Elements present (SXES): a :class:`eelsgpu.kernels.sxes.HigherOrderLineWarning` is
        issued for every window holding a known line of one of them in diffraction order
        2..``max_order``.
    uncertainty : {None, "analytic", "replicas", "replicas:K"}
        Adds ``<output>_sigma`` (one standard deviation of the counting noise, same units) for
        every intensity, ratio, centroid, peak and FWHM: ``"analytic"`` by the
        linearisation of each estimator (background fit included; a ratio with the covariance of
        its windows), ``"replicas"`` from ``n_replicas`` Poisson replicas per pixel run through
        the same kernel. None by default (analytic costs up to ~2x, replicas ~K x). See
        :mod:`eelsgpu.analysis._uncertainty`.
    n_replicas : int, optional
        Replicas per pixel (default 100).
    gain : float, optional
        Detector data units per counted electron (``var(x) = gain x``); estimated from the
        data's channel noise when neither it nor ``noise_variance`` is given (attrs say so).
    noise_variance : xarray.DataArray, optional
        A measured variance (data units squared) per channel or per pixel and channel.
    seed : int
        Replica seed (per pixel with its flat index: chunking does not change the result).
    device : {"auto", "cpu", "gpu"}

    Returns
    -------
    xarray.Dataset
        Lazy; per window ``<name>`` (counts in the window after background removal, unit of the
        input, i.e. counts -- not counts·eV), ``<name>_background`` (counts), ``<name>_valid``
        (False where the background fit failed; those pixels are NaN), and the requested extras.

    Examples
    --------
    >>> import eelsgpu  # doctest: +SKIP
    >>> ds = eelsgpu.window_maps(si, windows={"Cu": (931, 1000)},  # doctest: +SKIP
    ...                          background={"Cu": (850, 925)}, background_model="power-law")
    """
    si = as_spectrum_image(si, "window_maps")
    max_order = positive_int("max_order", max_order, 1)
    request = _parse_request(
        si,
        windows,
        background,
        background_model,
        ratios,
        centroid,
        peak,
        width,
        peak_channels,
    )
    unc = parse_uncertainty(si, uncertainty, n_replicas, gain, noise_variance, seed)
    if elements:
        _warn_higher_orders(request.windows, elements, max_order)
    return apply_kernel(
        window_block(si.attrs.get("units", "counts")),
        si,
        device=device,
        extras=unc.extras(si),
        attrs={"analysis": "window_maps", "background_model": background_model, **unc.attrs()},
        **request.kernel_params(),
        **unc.kernel_params(),
    )
