"""PCA projection, non-negative loadings and reconstruction of a block of spectra: array API.

The image is the matrix ``D`` (pixels x channels, counts). Given factors fitted on the whole
image by :func:`eelsgpu.decompose` (:mod:`eelsgpu.analysis.decomposition`), these kernels work
on one pixel block at a time:

* :func:`project_kernel`: PCA loadings ``sqrt(g) (D / sqrt(g h^T)) V^T`` with the Poisson
  normalisation of Keenan & Kotula (Surf. Interface Anal. 36, 203 (2004)): ``g`` the mean counts
  of each pixel, ``h`` the mean spectrum;
* :func:`nnls_loadings_kernel`: non-negative loadings ``W >= 0`` with ``D ~= W H`` by the
  multiplicative updates of Lee & Seung (NIPS 13, 556 (2001)), Frobenius or generalised
  Kullback-Leibler (Poisson);
* :func:`reconstruct_kernel`: ``loadings @ factors`` (the denoised spectra).

Each has its declaration for the engine next to it (outputs with units, tile size).

Examples
--------
>>> d = np.array([[2.0, 4.0], [1.0, 2.0]])
>>> v = np.array([[1.0, 2.0]]) / np.sqrt(5.0)
>>> out = project_kernel(d, np.arange(2.0), components=v, energy_weight=np.ones(2), poisson=False)
>>> np.round(out["loadings"] @ v, 12).tolist()
[[2.0, 4.0], [1.0, 2.0]]
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._xp import array_namespace
from .declare import BlockKernel, Output

__all__ = [
    "PROJECT_BLOCK",
    "TILE_PIXELS",
    "nnls_loadings_block",
    "nnls_loadings_kernel",
    "project_kernel",
    "reconstruct_block",
    "reconstruct_kernel",
]

#: Spectra per CPU tile of the kernels here: None, the engine's default (about 1 MiB of input
#: per tile).
TILE_PIXELS: int | None = None


def project_kernel(
    block: Any, energy_eV: Any, *, components: Any, energy_weight: Any, poisson: bool = True
) -> dict:
    """PCA loadings of each spectrum: ``sqrt(g) * (D / sqrt(g h)) @ V^T``.

    Parameters
    ----------
    block : array (n_pix, n_E)
        Counts per channel.
    energy_eV : array (n_E,)
        Unused (the engine's signature).
    components : array (k, n_E)
        Orthonormal right singular vectors of the normalised matrix (dimensionless).
    energy_weight : array (n_E,)
        ``sqrt(h)``, ``h`` the mean spectrum in counts per channel (ones without Poisson
        normalisation).
    poisson : bool
        Divide each spectrum by ``sqrt(g)``, ``g`` its mean counts (Keenan & Kotula 2004).

    Returns
    -------
    dict
        ``loadings`` (n_pix, k), counts (per unit of ``components * energy_weight``), such
        that ``D ~= loadings @ (components * energy_weight)``.
    """
    xp = array_namespace(block)
    x = xp.astype(block, xp.float64)
    v = xp.astype(components, xp.float64)
    h = xp.astype(energy_weight, xp.float64)
    if poisson:
        g = xp.mean(x, axis=-1)
        g = xp.sqrt(xp.where(g > 0, g, 1.0))
    else:
        g = xp.ones(x.shape[0], dtype=x.dtype)
    scores = (x / (g[:, None] * h[None, :])) @ xp.matrix_transpose(v)
    return {"loadings": scores * g[:, None]}


def nnls_loadings_kernel(
    block: Any, energy_eV: Any, *, factors: Any, n_iter: int = 200, kl: bool = False
) -> dict:
    """Non-negative loadings ``W >= 0`` with ``D ~= W H`` for fixed factors ``H``.

    Multiplicative updates (Lee & Seung 2001): Frobenius ``W <- W (D H^T) / (W H H^T)``, or
    generalised Kullback-Leibler (Poisson) ``W <- W ((D / W H) H^T) / (1 H^T)`` when ``kl``.

    Parameters
    ----------
    block : array (n_pix, n_E)
        Counts per channel (negative values clipped to 0).
    energy_eV : array (n_E,)
        Unused (the engine's signature).
    factors : array (k, n_E), non-negative
        The NMF factors ``H`` (dimensionless, each with a maximum of 1).
    n_iter : int
        Multiplicative updates.
    kl : bool
        Generalised Kullback-Leibler (Poisson) loss instead of the Frobenius norm.

    Returns
    -------
    dict
        ``loadings`` (n_pix, k) and ``residual_rms`` (n_pix,): RMS of ``D - W H`` per pixel (counts).
    """
    xp = array_namespace(block)
    x = xp.clip(xp.astype(block, xp.float64), 0.0, None)
    hmat = xp.astype(factors, xp.float64)
    ht = xp.matrix_transpose(hmat)
    hht = hmat @ ht
    xht = x @ ht
    eps = 1e-12
    # Start from the unconstrained least-squares solution, clipped positive.
    w = xp.clip(xht @ xp.linalg.inv(hht + eps * xp.eye(hht.shape[0], dtype=hht.dtype)), eps, None)
    w = w + 1e-3 * xp.mean(w) + eps
    col = xp.sum(hmat, axis=-1)
    for _ in range(int(n_iter)):
        if kl:
            approx = w @ hmat
            w = w * ((x / (approx + eps)) @ ht) / (col[None, :] + eps)
        else:
            w = w * xht / (w @ hht + eps)
    resid = xp.sqrt(xp.mean((x - w @ hmat) ** 2, axis=-1))
    return {"loadings": w, "residual_rms": resid}


def reconstruct_kernel(block: Any, energy_eV: Any, *, loadings: Any, factors: Any) -> dict:
    """``loadings @ factors`` per pixel: the spectra rebuilt from ``k`` components.

    Parameters
    ----------
    block : array (n_pix, n_E)
        The spectra (only their namespace is used).
    energy_eV : array (n_E,)
        Unused (the engine's signature).
    loadings : array (n_pix, k)
        Per-pixel loadings, counts.
    factors : array (k, n_E)
        Factors (dimensionless, ``D ~= loadings @ factors``).

    Returns
    -------
    dict
        ``denoised`` (n_pix, n_E), counts per channel.
    """
    xp = array_namespace(block)
    return {"denoised": xp.astype(loadings, xp.float64) @ xp.astype(factors, xp.float64)}


# --------------------------------------------------------------------------- declarations
def _project_outputs(params: Mapping[str, Any]) -> list[Output]:
    k = params["components"].shape[0]
    return [Output("loadings", "counts", "PCA loading", axis="component", coord=np.arange(k))]


#: :func:`project_kernel` declared for the engine: ``loadings`` (pixels, component), counts.
PROJECT_BLOCK = BlockKernel(
    project_kernel, outputs=_project_outputs, tile_pixels=TILE_PIXELS, name="pca_loadings"
)


def _nnls_outputs(params: Mapping[str, Any], units: str) -> list[Output]:
    k = params["factors"].shape[0]
    return [
        Output("loadings", units, "NMF loading", axis="component", coord=np.arange(k)),
        Output("residual_rms", units, "RMS residual per channel"),
    ]


def nnls_loadings_block(units: str = "counts") -> BlockKernel:
    """:func:`nnls_loadings_kernel` declared for the engine, for input counts in ``units``:
    ``loadings`` (pixels, component) and ``residual_rms`` (pixels), both in ``units``."""
    return BlockKernel(
        nnls_loadings_kernel,
        outputs=functools.partial(_nnls_outputs, units=units),
        tile_pixels=TILE_PIXELS,
        name="nmf_loadings",
    )


def _reconstruct_outputs(params: Mapping[str, Any], units: str, method: str) -> list[Output]:
    k = params["factors"].shape[0]
    return [
        Output("denoised", units, f"reconstruction from {k} {method} components", axis="energy")
    ]


def reconstruct_block(units: str = "counts", method: str = "") -> BlockKernel:
    """:func:`reconstruct_kernel` declared for the engine: ``denoised`` (pixels, energy) in
    ``units`` (the input's), labelled with the decomposition ``method``; the per-pixel
    ``loadings`` ride along as an extra."""
    return BlockKernel(
        reconstruct_kernel,
        outputs=functools.partial(_reconstruct_outputs, units=units, method=method),
        tile_pixels=TILE_PIXELS,
        extras=("loadings",),
        name="reconstruct",
    )
