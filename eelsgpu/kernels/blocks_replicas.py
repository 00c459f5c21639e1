"""Replica sigmas for any declared block kernel, without touching it (issue 14).

:func:`with_replicas` turns a :class:`~eelsgpu.kernels.declare.BlockKernel` into one that returns
the same outputs plus ``<name>_sigma`` for each target output: one standard deviation of the
counting noise, from ``K`` noise replicas of every spectrum (Poisson ``g Poisson(x / g)``, or
Gaussian with a measured variance) run through the wrapped kernel as one ``K``-times larger batch
and reduced per pixel (:func:`eelsgpu.kernels.uncertainty.replica_sigmas`, in memory-bounded
batches; no ``K``-fold cube is written). Each pixel's replicas are seeded by ``(seed, its global
pixel index)``, so the sigmas do not depend on blocks or tiles. A target may be a map ``(n,)`` or
a per-pixel spectrum ``(n, m)`` (the SSD per channel).

The wrapped kernel's parameters and extras pass through unchanged; the wrapper adds the
parameters ``n_replicas``, ``seed``, ``gain`` and the extras ``variance`` (a cube, optional) and
``pixel_index`` (a map) that :meth:`eelsgpu.analysis._uncertainty.UncertaintyRequest.extras`
gives. Per-pixel extras of the wrapped kernel (``per_pixel``, e.g. a ZLP cube) are repeated for
each replica; everything else is a parameter shared by all.

Examples
--------
>>> import numpy as np
>>> from eelsgpu.kernels.declare import BlockKernel, Output
>>> def total(block, energy_eV):
...     return {"total": block.sum(axis=-1)}
>>> decl = with_replicas(BlockKernel(total, outputs=(Output("total", "counts"),)), ["total"])
>>> [o.name for o in decl.outputs_for({"n_replicas": 200})]
['total', 'total_sigma']
>>> out = decl.kernel(np.full((2, 100), 100.0), np.arange(100.0), n_replicas=200,
...                   pixel_index=np.arange(2))
>>> bool(np.all(np.abs(out["total_sigma"] / 100.0 - 1) < 0.15))
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from .._xp import array_namespace
from .declare import BlockKernel, Output
from .uncertainty import replica_sigmas

__all__ = ["with_replicas"]

#: Parameters the wrapper takes for itself (the rest go to the wrapped kernel).
_OWN = ("n_replicas", "seed", "gain", "uncertainty")


def with_replicas(
    decl: BlockKernel,
    targets: Sequence[str],
    *,
    per_pixel: Sequence[str] = ("zlp_cube",),
    batch_elements: int | None = None,
) -> BlockKernel:
    """``decl`` with ``<target>_sigma`` outputs from noise replicas run through its own kernel.

    Parameters
    ----------
    decl : BlockKernel
        Any declared block kernel (called with its own parameters, no uncertainty).
    targets : sequence of str
        Outputs of ``decl`` that get a sigma (maps or per-pixel spectra).
    per_pixel : sequence of str
        Names of ``decl``'s per-pixel extras (repeated for each replica); other keyword
        arguments are shared parameters.
    batch_elements : int, optional
        Replica values per batch (default
        :data:`eelsgpu.kernels.uncertainty.REPLICA_BATCH_ELEMENTS`).

    Returns
    -------
    BlockKernel
        Kernel ``kernel(block, energy_eV, *, n_replicas, seed=0, gain=1.0, variance=None,
        pixel_index=None, **decl's)`` returning ``decl``'s outputs and ``<target>_sigma`` (same
        shape and units; NaN where fewer than half the replicas give a finite value or the value
        itself is not finite). Outputs declared with attrs ``sigma_of``, ``part="counting"``,
        ``uncertainty="replicas:K"``.
    """
    targets = tuple(targets)
    per_pixel = tuple(per_pixel)
    inner = decl.kernel

    def kernel(
        block: Any,
        energy_eV: Any,
        *,
        n_replicas: int,
        seed: int = 0,
        gain: float = 1.0,
        variance: Any = None,
        pixel_index: Any = None,
        uncertainty: str | None = "replicas",
        **kw: Any,
    ) -> dict[str, Any]:
        xp = array_namespace(block)
        values = dict(inner(block, energy_eV, **kw))
        extras = {n: kw[n] for n in per_pixel if kw.get(n) is not None}
        params = {n: v for n, v in kw.items() if n not in extras}
        if batch_elements is not None:
            params["batch_elements"] = int(batch_elements)
        sig = replica_sigmas(
            inner,
            block,
            energy_eV,
            targets,
            n_replicas=int(n_replicas),
            seed=int(seed),
            gain=float(gain),
            variance=variance,
            pixel_index=pixel_index,
            extras=extras,
            **params,
        )
        for t in targets:
            values[f"{t}_sigma"] = xp.where(xp.isfinite(values[t]), sig[t], xp.nan)
        return values

    kernel.__name__ = f"{decl.label}_with_replicas"

    def outputs(params: Mapping[str, Any]) -> tuple[Output, ...]:
        inner_params = {k: v for k, v in params.items() if k not in _OWN}
        base = decl.outputs_for(inner_params)
        by_name = {o.name: o for o in base}
        label = f"replicas:{int(params.get('n_replicas', 0))}"
        extra = []
        for t in targets:
            o = by_name[t]
            extra.append(
                replace(
                    o,
                    name=f"{t}_sigma",
                    long_name=f"sigma of {o.long_name or t} (counting)",
                    dtype="float",
                    attrs={"sigma_of": t, "part": "counting", "uncertainty": label},
                )
            )
        return (*base, *extra)

    return BlockKernel(
        kernel,
        outputs=outputs,
        # K replicas per spectrum: keep the CPU tiles small so a tile's replicas stay bounded
        tile_pixels=decl.tile_pixels,
        extras=(*decl.extras, "variance", "pixel_index"),
        name=f"{decl.label}_with_replicas",
        peak_bytes_per_spectrum=decl.peak_bytes_per_spectrum,
    )
