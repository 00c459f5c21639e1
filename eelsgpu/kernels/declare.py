"""How a per-block kernel tells the engine what it returns: :class:`Output` and :class:`BlockKernel`.

Every analysis hands the engine one :class:`BlockKernel`: the pure per-block function, the outputs
it makes (name, dims, dtype, units) and the tile size it runs best at. The engine reads nothing
else about it, so it needs no physics; the kernel needs no dask, xarray or files. LiberTEM
declares a UDF's result buffers and tiling preferences with the UDF the same way
(``src/libertem/udf/base.py``).

A kernel has the signature::

    kernel(block, energy_eV, **extras, **params) -> dict[str, array]

``block`` is ``(n_pixels, n_energy)`` in whatever array namespace the block lives in (NumPy, CuPy,
array-api-strict), ``energy_eV`` the float64 energy coordinate on the same device, ``extras`` the
per-pixel arrays named in :attr:`BlockKernel.extras` (a map ``(n_pixels,)`` or a cube
``(n_pixels, m)``) and ``params`` host scalars and small arrays. Each returned array is
``(n_pixels,)`` for a map or ``(n_pixels, m)`` for a per-pixel spectrum.

Examples
--------
>>> def total(block, energy_eV):
...     return {"total": block.sum(axis=-1)}
>>> decl = BlockKernel(total, outputs=(Output("total", units="counts"),))
>>> [o.name for o in decl.outputs_for({})]
['total']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BlockKernel", "Kernel", "Output"]

Kernel = Callable[..., Mapping[str, Any]]


@dataclass(frozen=True)
class Output:
    """One output of a kernel.

    Parameters
    ----------
    name : str
        Variable name in the result Dataset.
    units : str
        Physical unit (goes into the ``units`` attribute).
    long_name : str
        Human-readable name for plots.
    dtype : str
        ``"float"`` (the block's float dtype), ``"float32"``, ``"float64"``, ``"bool"`` or
        ``"int32"``.
    axis : str or None
        ``None`` for a map (one value per pixel); else the dim of a per-pixel spectrum, e.g.
        ``"energy"`` (same length and coordinate as the input's energy axis).
    coord : array, optional
        The coordinate values along ``axis`` when it is not the input's energy axis.
    attrs : dict
        Extra attributes.
    """

    name: str
    units: str = ""
    long_name: str = ""
    dtype: str = "float"
    axis: str | None = None
    coord: Any = None
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def width(self, n_energy: int) -> int:
        """Columns this output takes per pixel: 1 for a map, else the length of its axis."""
        if self.axis is None:
            return 1
        if self.coord is not None:
            return len(self.coord)
        return n_energy


@dataclass(frozen=True)
class BlockKernel:
    """A per-block kernel with what it returns and how it likes to be called.

    Parameters
    ----------
    kernel : callable
        ``kernel(block, energy_eV, **extras, **params) -> dict`` (see the module docstring).
    outputs : sequence of Output, or callable
        What the kernel returns; a callable ``outputs(params) -> sequence of Output`` where the
        outputs depend on the parameters (which cubes KK keeps, a cropped energy axis).
    tile_pixels : int or None
        Spectra per kernel call on a CPU (the engine cuts a block into tiles so that the kernel's
        temporaries stay in cache); ``None``: the engine's default (about 1 MiB of input per
        tile); ``0``: whole blocks. Ignored on a GPU, where blocks go whole.
    extras : tuple of str
        Names of per-pixel arrays (maps or cubes) the kernel takes beside the block.
    name : str
        For messages; default the kernel function's name.
    min_block_pixels : int
        The fewest spectra the engine puts in a block of an image held in memory (256: a block
        of a cheap kernel amortises its scheduling); a kernel that costs tenths of a second per
        spectrum (the film fit) declares fewer, so a small image still runs on every core.
    peak_bytes_per_spectrum : int or None
        The most device memory (bytes) the kernel holds at once per spectrum of 2048 float32
        channels, measured with the counting stand-in (:mod:`eelsgpu.engine.counting`;
        benchmarks/bench_gpu_budget.py prints it). On a GPU the engine sizes its passes and
        bounds the blocks in flight with it (scaled with the channel count); ``None``: the
        engine's measured table, else a conservative default.
    """

    kernel: Kernel
    outputs: Sequence[Output] | Callable[[Mapping[str, Any]], Sequence[Output]]
    tile_pixels: int | None = None
    extras: tuple[str, ...] = ()
    name: str = ""
    peak_bytes_per_spectrum: int | None = None
    min_block_pixels: int = 256

    def outputs_for(self, params: Mapping[str, Any]) -> tuple[Output, ...]:
        """The outputs for these kernel parameters."""
        outs = self.outputs(params) if callable(self.outputs) else self.outputs
        return tuple(outs)

    @property
    def label(self) -> str:
        return self.name or getattr(self.kernel, "__name__", repr(self.kernel))
