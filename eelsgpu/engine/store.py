"""The one store writer: a lazy Dataset computed block by block into a zarr store.

:class:`StoreWriter` builds the store under a hidden name beside the target, writes every pixel
block once (atomically, recorded in a run log) and renames the store into place when it is whole.
It runs in named steps: :meth:`~StoreWriter.prepare` (normalise the Dataset, fingerprint the job),
:meth:`~StoreWriter.start` (set the store up, or find the interrupted run of the same job),
:meth:`~StoreWriter.write` (one task per pixel block, one progress bar) and
:meth:`~StoreWriter.finish` (mark it complete, rename it into place). It never destroys data
(:mod:`.outputs`): the target may not be, contain or lie inside an input, an existing target is
replaced only with ``overwrite`` and only when it is an eelsgpu result store, one writer holds
the output's lock at a time, and the leftovers of killed runs are cleaned up (or resumed) by the
next run on the same output. It has two modes:

* resumable (:func:`run_to_store`: results of pipelines and batch runs): per-pixel variables are
  stored in pixel blocks with every other dim whole, other lazy variables (small: a mean spectrum,
  a scalar) are computed first, the job's fingerprint is in the store's attributes, and a run that
  fails leaves its partial store and run log for the next run of the same job to finish;
* one-shot (:func:`eelsgpu.io.write_store`: any Dataset): each variable is stored with its own
  chunks, lazy variables off the pixel-block grid (and lazy coordinates) are written alongside by
  xarray, more lazy reductions can be computed in the same pass (the value checks of
  :mod:`eelsgpu.io.checks`), and a failure removes the partial store (a killed one's is removed
  by the next run on the same output).

:func:`codecs` gives the compression profiles; :func:`run_attrs` the provenance every result store
carries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from . import device as backend
from .blas import one_blas_thread
from .blocks import _Extract, packed_source
from .outputs import OutputLock, check_output, clean_leftovers, remove_store
from .progress import BlockProgress

__all__ = [
    "CODEC_PROFILES",
    "RunResult",
    "StoreWriter",
    "codecs",
    "is_complete",
    "json_safe",
    "run_attrs",
    "run_to_store",
]

CODEC_PROFILES = ("lz4", "zstd")


def codecs(profile: str = "lz4") -> dict[str, Any]:
    """Zarr v3 compressor settings for a profile.

    ``"lz4"`` (default): Blosc-LZ4 with bit-shuffle, fast both ways on a CPU. ``"zstd"``: a plain
    zstd codec, the profile a GPU can decode (nvCOMP reads zstd frames but not Blosc; a reader
    strips the 4-byte checksum first).

    Both end with zarr v3's ``crc32c`` codec: every chunk carries the CRC-32C of its compressed
    bytes, which :mod:`eelsgpu.io` checks before anything is decompressed, so a truncated or
    damaged chunk is an error naming the store and the chunk instead of a crash inside the
    decompressor (Blosc segfaults on a truncated chunk) or silently wrong numbers.
    """
    from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, ZstdCodec

    if profile == "lz4":
        return {
            "compressors": (
                BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.bitshuffle),
                Crc32cCodec(),
            )
        }
    if profile == "zstd":
        return {"compressors": (ZstdCodec(level=3), Crc32cCodec())}
    raise ValueError(f"codec profile must be one of {CODEC_PROFILES}, not {profile!r}")


def json_safe(value: Any) -> Any:
    """A JSON-serialisable copy of ``value`` (NumPy scalars and arrays, paths, tuples...)."""
    import os

    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, xr.DataArray):
        return f"<DataArray {value.name} {dict(value.sizes)}>"
    return repr(value)


def run_attrs(method: str, parameters: Mapping[str, Any], **more: Any) -> dict[str, Any]:
    """The attributes that say how a result was made: eelsgpu's version, the method, every argument."""
    from .._version import __version__

    return {
        "eelsgpu_version": __version__,
        "eelsgpu_method": method,
        "eelsgpu_parameters": json_safe(dict(parameters)),
        **{f"eelsgpu_{k}": json_safe(v) for k, v in more.items()},
    }


@dataclass
class RunResult:
    """What :func:`run_to_store` did."""

    path: Any
    status: str  # "written", "resumed" or "skipped"
    blocks_total: int = 0
    blocks_computed: int = 0
    spectra: int = 0
    seconds: float = 0.0
    note: str = ""  # e.g. an interrupted run of other parameters that was discarded


def _state_paths(target: Any) -> tuple[Any, Any]:
    """The partial store and the run log beside ``target`` (one of each: the output's lock
    allows one writer at a time)."""
    target = Path(target)
    return (
        target.with_name(f".{target.name}.partial"),
        target.with_name(f".{target.name}.eelsgpu-run"),
    )


#: The fingerprint a one-shot run records: never resumed.
_ONE_SHOT = "one-shot"


def is_complete(path: Any) -> bool:
    """True when ``path`` is a store that :class:`StoreWriter` finished (or one written before
    eelsgpu marked its stores)."""
    import json
    from pathlib import Path

    meta = Path(path) / "zarr.json"
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False
    return attrs.get("eelsgpu_complete", True) is not False


def _set_group_attrs(store: Any, updates: Mapping[str, Any]) -> None:
    """Update the group attributes of a zarr v3 store atomically (write aside, then rename)."""
    import json
    import os
    from pathlib import Path

    meta = Path(store) / "zarr.json"
    doc = json.loads(meta.read_text())
    doc.setdefault("attributes", {}).update(json_safe(dict(updates)))
    tmp = meta.with_name(f".zarr.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, meta)


_ZARR_ARRAYS: dict[tuple[str, str, str], Any] = {}


def _zarr_array(store: str, name: str, token: str, empty_chunks: bool) -> Any:
    """The open zarr array ``name`` of ``store``, cached per process (each worker opens it once).

    ``empty_chunks``: write chunks equal to the fill value too. The one-shot mode does (as xarray
    does with ``write_empty_chunks=True``: zarr's check for such chunks is a full comparison pass
    per chunk, 40-60 ms per 32 MiB chunk, more than the lz4 compression, and a chunk left out
    reads back as "no data"). The resumable mode does not: ``zarr.open_array`` ignores a
    ``config`` for an existing array, so its stores have always left such chunks out; kept so
    that their bytes do not change.
    """
    key = (store, name, token)
    arr = _ZARR_ARRAYS.get(key)
    if arr is None:
        import zarr

        arr = zarr.open_array(store, path=name, mode="r+")
        if empty_chunks:
            arr = arr.with_config({"write_empty_chunks": True})
        _ZARR_ARRAYS[key] = arr
    return arr


def _forget_arrays(store: str) -> None:
    """Drop this process's cached handles on ``store`` (the run is over)."""
    for key in [k for k in _ZARR_ARRAYS if k[0] == store]:
        _ZARR_ARRAYS.pop(key, None)


def _write_block(
    store: str,
    token: str,
    empty_chunks: bool,
    marker: str,
    names: Sequence[str],
    regions: Sequence[tuple[slice, ...]],
    extracts: Sequence[_Extract | None],
    source_of: Sequence[int],
    n_spectra: int,
    *sources: Any,
) -> int:
    """Write one block's results into their regions of the store, then record the block as done.

    ``sources`` are the block's computed arrays; variable ``i`` is ``extracts[i](sources[j])``
    (or ``sources[j]`` itself) with ``j = source_of[i]``. The marker is created only after every
    chunk of the block is on disk (zarr writes each chunk file atomically), so a block whose
    marker exists is complete, and one without is rewritten whole on the next run, with the same
    bytes.
    """
    import os

    for name, region, extract, j in zip(names, regions, extracts, source_of, strict=True):
        value = backend.to_host(sources[j])
        if extract is not None:
            value = extract(value)
        _zarr_array(store, name, token, empty_chunks)[region] = value
    tmp = f"{marker}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        fh.write(str(n_spectra))
    os.replace(tmp, marker)
    return n_spectra


def _fingerprint(ds: xr.Dataset) -> str:
    import hashlib
    import json

    desc = {
        "vars": {
            str(k): [list(v.dims), list(v.shape), str(v.dtype), json_safe(v.chunks)]
            for k, v in ds.data_vars.items()
        },
        "coords": {
            str(k): hashlib.sha256(np.ascontiguousarray(v.values).tobytes()).hexdigest()
            for k, v in ds.coords.items()
        },
        "attrs": json_safe(dict(ds.attrs)),
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def _regular(ds: xr.Dataset, nav_dims: Sequence[str]) -> xr.Dataset:
    """Chunks regular along the pixel dims (zarr's grid) and whole along every other dim."""
    out = {}
    for name, var in ds.data_vars.items():
        if not isinstance(var.data, da.Array):
            continue
        spec = {}
        for d, c in zip(var.dims, var.data.chunks, strict=True):
            if d in nav_dims:
                spec[d] = c[0]
            else:
                spec[d] = -1
        out[name] = var.chunk(spec)
    return ds.assign(out)


# --------------------------------------------------------------------------- the writer
@dataclass
class _Plan:
    """What :meth:`StoreWriter.prepare` decided about a Dataset."""

    ds: xr.Dataset
    pixel_vars: list[str]  # written block by block, in pixel blocks of the common grid
    nav_dims: list[str]
    encoding: dict[str, dict[str, Any]]
    token: str
    rest: list[str] = field(default_factory=list)  # one-shot: other lazy variables and coords


class StoreWriter:
    """The one store writer (see the module docstring); :func:`run_to_store` and
    :func:`eelsgpu.io.write_store` are its two uses.

    Parameters
    ----------
    path : path
        The store to create.
    overwrite : bool
        Replace an existing eelsgpu result store (it stays in place until the new one is
        complete); anything else is refused (:func:`~eelsgpu.engine.outputs.check_output`).
    codec : {"lz4", "zstd"}
        Compression profile (:func:`codecs`).
    resumable : bool
        The resumable mode (default) or the one-shot mode (see the module docstring).
    scheduler : str or distributed.Client, optional
        ``"threads"``, ``"processes"``, ``"synchronous"`` or a Client; default: dask's current one.
    quiet : bool
        No progress bar.
    description : str, optional
        The progress bar's label (default: the store's name).
    inputs : sequence of paths
        What the data come from: the store may not be, contain or lie inside one of them.

    The writer holds the output's lock from its creation to :meth:`finish`, :meth:`discard` or
    :meth:`close` (use it as a context manager).
    """

    def __init__(
        self,
        path: Any,
        *,
        overwrite: bool = False,
        codec: str = "lz4",
        resumable: bool = True,
        scheduler: Any = None,
        quiet: bool = True,
        description: str | None = None,
        inputs: Sequence[Any] = (),
    ) -> None:
        from pathlib import Path

        self.target = Path(path)
        self.inputs = [i for i in inputs if i is not None]
        self.overwrite = overwrite
        check_output(self.target, self.inputs, overwrite=overwrite)
        codecs(codec)  # an unknown profile is refused before anything is made
        self.codec = codec
        self.resumable = resumable
        self.scheduler = scheduler
        self.quiet = quiet
        self.description = description or self.target.name
        self.partial, self.state = _state_paths(self.target)
        self.fresh = True
        self.note = ""
        self.n_blocks = 0
        self.blocks_computed = 0
        self.spectra = 0
        self.target.parent.mkdir(parents=True, exist_ok=True)
        # one writer per output: a second run on the same target is refused until this one ends
        # (a killed run's lock goes with its process)
        self.lock: OutputLock | None = OutputLock(self.target)

    def close(self) -> None:
        """Release the output's lock (a writer that is done, or that failed)."""
        _forget_arrays(str(self.partial))
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ step 1: normalise
    def prepare(
        self,
        ds: xr.Dataset,
        *,
        attrs: Mapping[str, Any] | None = None,
        encoding: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> _Plan:
        """Normalise ``ds`` for the store: attributes (``attrs`` added, made JSON-safe), which
        variables are written block by block, their storage chunks and encoding, the fingerprint.

        ``encoding``: more zarr encoding per variable (one-shot mode; e.g. other chunks).
        """
        if attrs:
            ds = ds.assign_attrs({**ds.attrs, **attrs})
        ds = ds.assign_attrs(json_safe(dict(ds.attrs)))
        sources = dataset_sources(ds)
        if sources:  # the data's own file: never the output (nor its folder)
            check_output(self.target, sources, overwrite=True)
        if self.resumable:
            return self._prepare_resumable(ds)
        return self._prepare_one_shot(ds, encoding or {})

    def _prepare_resumable(self, ds: xr.Dataset) -> _Plan:
        lazy_vars = [k for k, v in ds.data_vars.items() if isinstance(v.data, da.Array)]
        if not lazy_vars:
            ds = ds.chunk()
            lazy_vars = list(ds.data_vars)
        nav_dims = _nav_dims(ds[lazy_vars[0]])
        # Per-pixel variables (pixel dims first) are written block by block; anything else that
        # is lazy (a mean spectrum, a scalar) is small: computed now and written with the metadata.
        small = [k for k in lazy_vars if tuple(ds[k].dims[: len(nav_dims)]) != tuple(nav_dims)]
        if small:
            ds = ds.assign({k: ds[k].compute(scheduler=self.scheduler) for k in small})
            lazy_vars = [k for k in lazy_vars if k not in small]
        if not lazy_vars:
            raise ValueError("run_to_store needs at least one per-pixel variable (dims y, x, ...)")
        ds = _regular(ds, nav_dims)
        token = _fingerprint(ds)
        enc: dict[str, dict[str, Any]] = {}
        for name in ds.data_vars:
            enc[name] = dict(codecs(self.codec))
            if name in lazy_vars:
                enc[name]["chunks"] = tuple(c[0] for c in ds[name].data.chunks)
        return _Plan(ds, lazy_vars, nav_dims, enc, token)

    def _prepare_one_shot(self, ds: xr.Dataset, encoding: Mapping[str, Mapping[str, Any]]) -> _Plan:
        enc: dict[str, dict[str, Any]] = {}
        for name, var in ds.data_vars.items():
            enc[name] = dict(codecs(self.codec))
            if isinstance(var.data, da.Array):
                enc[name]["chunks"] = tuple(c[0] for c in var.data.chunks)
        for name, extra in encoding.items():
            enc.setdefault(name, {}).update(extra)
        # a lazy variable is computed in its storage chunks (a no-op where it already is)
        ds = ds.assign(
            {
                k: v.copy(data=v.data.rechunk(enc[k]["chunks"]))
                for k, v in ds.data_vars.items()
                if isinstance(v.data, da.Array) and "chunks" in enc[k]
            }
        )
        lazy_vars = [k for k, v in ds.data_vars.items() if isinstance(v.data, da.Array)]
        # the pixel dims: of the first lazy variable with y/x dims (a spectrum image, a map)
        imaged = [k for k in lazy_vars if {"y", "x"} & set(ds[k].dims)] or lazy_vars
        nav_dims = _nav_dims(ds[imaged[0]]) if imaged else []
        grid = None
        pixel_vars = []
        for k in lazy_vars:
            var = ds[k]
            if tuple(var.dims[: len(nav_dims)]) != tuple(nav_dims):
                continue
            nav_chunks = var.data.chunks[: len(nav_dims)]
            if not all(_regular_chunks(c) for c in nav_chunks):
                continue
            grid = nav_chunks if grid is None else grid
            if nav_chunks == grid:
                pixel_vars.append(k)
        rest = [k for k in lazy_vars if k not in pixel_vars]
        rest += [k for k, c in ds.coords.items() if isinstance(c.data, da.Array)]
        return _Plan(ds, pixel_vars, nav_dims, enc, _ONE_SHOT, rest)

    # ------------------------------------------------------------------ step 2: set up or resume
    def start(self, plan: _Plan, *, resume: bool = True) -> bool:
        """Set the store up (metadata, small variables) under its hidden name, or, with
        ``resume`` and a partial store of the same job (fingerprint), keep it and its run log.
        Leftovers of earlier killed runs on the same output are removed (this writer holds the
        output's lock, so no other run is using them). Returns True when the store was set up
        afresh."""
        import json
        import os
        import shutil

        run_file = self.state / "run.json"
        fresh = True
        if self.resumable and self.partial.is_dir() and run_file.is_file():
            try:
                recorded = json.loads(run_file.read_text()).get("fingerprint")
            except ValueError:
                recorded = None
            fresh = not resume or recorded != plan.token
            if fresh and recorded not in (None, _ONE_SHOT) and resume:
                self.note = "an interrupted run with other parameters was discarded"
        clean_leftovers(self.target, keep=() if fresh else (self.partial, self.state))
        if fresh:
            shutil.rmtree(self.partial, ignore_errors=True)
            shutil.rmtree(self.state, ignore_errors=True)
            (self.state / "done").mkdir(parents=True)
            flags: dict[str, Any] = {"eelsgpu_complete": False, "eelsgpu_writer": _writer()}
            if self.resumable:
                flags["eelsgpu_fingerprint"] = plan.token
            plan.ds.assign_attrs(**flags).to_zarr(
                self.partial,
                mode="w",
                compute=False,
                encoding=plan.encoding,
                consolidated=False,
                zarr_format=3,
                write_empty_chunks=True,
            )
            tmp = self.state / "run.json.tmp"
            tmp.write_text(json.dumps({"fingerprint": plan.token, "target": str(self.target)}))
            os.replace(tmp, run_file)  # written last: a store without it is started afresh
        self.fresh = fresh
        return fresh

    # ------------------------------------------------------------------ step 3: the block tasks
    def write(self, plan: _Plan, *, also: Sequence[Any] = ()) -> list[Any]:
        """Compute every pixel block not yet recorded and write it, with one progress bar.

        ``also``: more lazy dask collections (reductions over the same data, such as value
        checks) computed in the same pass, sharing its reads; their results are returned.
        """
        import dask

        sources, source_of, extracts = _sources(plan)
        n_src = len(sources)
        optimized = dask.optimize(*sources, *also)
        tasks, spectra_per_block, total_spectra = self._block_tasks(
            plan, list(optimized[:n_src]), source_of, extracts
        )
        # Delayed (no second optimisation), so the reads they share with the blocks stay shared
        others = [dask.delayed(a) for a in optimized[n_src:]]
        if plan.rest:
            others.append(
                plan.ds[[k for k in plan.rest if k in plan.ds.data_vars]]
                .assign_coords({k: plan.ds.coords[k] for k in plan.rest if k in plan.ds.coords})
                .to_zarr(
                    self.partial,
                    mode="r+",
                    compute=False,
                    consolidated=False,
                    zarr_format=3,
                    write_empty_chunks=True,
                )
            )
        self.blocks_computed = len(tasks)
        self.spectra = int(sum(spectra_per_block))
        progress = BlockProgress(
            self.description,
            n_blocks=self.n_blocks,
            n_done=self.n_blocks - len(tasks),
            total_spectra=total_spectra,
            done_spectra=total_spectra - self.spectra,
            quiet=self.quiet or not tasks,
        )
        try:
            results = _compute(
                tasks,
                others,
                prefix=_task_prefix(plan),
                scheduler=self.scheduler,
                progress=progress,
            )
        finally:
            progress.close()
        return results[: len(also)]

    def _block_tasks(
        self,
        plan: _Plan,
        sources: list[da.Array],
        source_of: list[int],
        extracts: list[_Extract | None],
    ) -> tuple[list[Any], list[int], int]:
        """One write task per pixel block not recorded as done."""
        import os

        import dask

        ds, nav_dims = plan.ds, plan.nav_dims
        if not plan.pixel_vars:
            return [], [], 0
        delayed = [a.to_delayed(optimize_graph=False) for a in sources]
        first = ds[plan.pixel_vars[0]]
        nav_chunks = {d: first.data.chunks[first.dims.index(d)] for d in nav_dims}
        grid = [len(nav_chunks[d]) for d in nav_dims]
        starts = {d: np.concatenate([[0], np.cumsum(c)]) for d, c in nav_chunks.items()}
        done_dir = self.state / "done"
        done = set(os.listdir(done_dir)) if done_dir.is_dir() else set()
        prefix = _task_prefix(plan)
        tasks = []
        spectra_per_block = []
        self.n_blocks = int(np.prod(grid))
        for b in np.ndindex(*grid):
            # (a result with no pixel dims, one spectrum's, is one block with an empty index:
            # its marker must still be a file inside done/, not done/ itself)
            label = "_".join(map(str, b)) or "0"
            if label in done:
                continue
            region = {
                d: slice(int(starts[d][i]), int(starts[d][i + 1]))
                for d, i in zip(nav_dims, b, strict=True)
            }
            n_spec = int(np.prod([s.stop - s.start for s in region.values()]))
            regions = [
                tuple(region.get(d, slice(None)) for d in ds[k].dims) for k in plan.pixel_vars
            ]
            # sources have the pixel dims first and one chunk along every other dim
            values = [dl[tuple(b) + (0,) * (dl.ndim - len(b))] for dl in delayed]
            tasks.append(
                dask.delayed(_write_block, pure=True)(
                    str(self.partial),
                    plan.token,
                    not self.resumable,
                    str(done_dir / label),
                    plan.pixel_vars,
                    regions,
                    extracts,
                    source_of,
                    n_spec,
                    *values,
                    dask_key_name=f"{prefix}-{label}",
                )
            )
            spectra_per_block.append(n_spec)
        total_spectra = int(np.prod([ds.sizes[d] for d in nav_dims]))
        return tasks, spectra_per_block, total_spectra

    # ------------------------------------------------------------------ step 4: finish
    def finish(self, plan: _Plan) -> RunResult:
        """Check that every block is recorded, mark the store complete and move it into place.

        An existing target (allowed only with ``overwrite``, and only an eelsgpu store) is
        checked again, moved aside, replaced and only then deleted; the lock is released."""
        import os
        import shutil
        import uuid

        done = self.state / "done"
        missing = self.n_blocks - (len(os.listdir(done)) if done.is_dir() else 0)
        if missing > 0:
            raise RuntimeError(
                f"{self.target}: {missing} blocks were not written; run again to finish"
            )
        _forget_arrays(str(self.partial))
        _set_group_attrs(self.partial, {"eelsgpu_complete": True})
        old = None
        if self.target.exists() or self.target.is_symlink():
            check_output(self.target, self.inputs, overwrite=self.overwrite)
            old = self.target.with_name(f".{self.target.name}.replaced-{uuid.uuid4().hex[:8]}")
            os.replace(self.target, old)
        os.replace(self.partial, self.target)
        shutil.rmtree(self.state, ignore_errors=True)
        if old is not None:
            remove_store(old)
        self.close()
        return RunResult(
            path=self.target,
            status="written" if self.fresh or self.blocks_computed == self.n_blocks else "resumed",
            blocks_total=self.n_blocks,
            blocks_computed=self.blocks_computed,
            spectra=self.spectra,
            note=self.note,
        )

    def discard(self) -> None:
        """Remove the partial store and its run log (a one-shot run that failed); release the
        lock."""
        import shutil

        _forget_arrays(str(self.partial))
        shutil.rmtree(self.partial, ignore_errors=True)
        shutil.rmtree(self.state, ignore_errors=True)
        self.close()


def dataset_sources(ds: xr.Dataset | xr.DataArray) -> list[str]:
    """The existing files a Dataset (or its variables) says it comes from (attributes ``source``,
    ``eelsgpu_input``)."""
    keys = ("source", "eelsgpu_input")
    values = [ds.attrs.get(k) for k in keys]
    if isinstance(ds, xr.Dataset):
        values += [v.attrs.get(k) for v in ds.data_vars.values() for k in keys]
    found = [v for v in values if isinstance(v, str) and v and Path(v).exists()]
    return list(dict.fromkeys(found))


def _writer() -> str:
    """The marker of a store eelsgpu wrote (see :mod:`eelsgpu.engine.outputs`)."""
    from .._version import __version__

    return f"eelsgpu {__version__}"


def _nav_dims(var: xr.DataArray) -> list[str]:
    """The pixel dims of a variable: ``y``/``x`` where it has them, else its first dim."""
    return [d for d in var.dims if d in ("y", "x")] or list(var.dims[:1])


def _regular_chunks(chunks: tuple[int, ...]) -> bool:
    """Chunks a zarr grid can hold: all equal but the last, which may be smaller."""
    return all(c == chunks[0] for c in chunks[:-1]) and chunks[-1] <= chunks[0]


def _task_prefix(plan: _Plan) -> str:
    return f"eelsgpu-write-{plan.token}"


def _sources(plan: _Plan) -> tuple[list[da.Array], list[int], list[_Extract | None]]:
    """The arrays the write tasks depend on, and how each variable is cut from them.

    A variable comes from the packed per-block array of :func:`~eelsgpu.engine.apply_kernel`
    when it is one of its outputs as it was made (the write task then cuts it out itself; the
    link travels in the variable's encoding, see :class:`~eelsgpu.engine.blocks.PackedSource`),
    else from its own dask array, whole along every dim but the pixel dims.
    """
    n_nav = len(plan.nav_dims)
    sources: list[da.Array] = []
    names: list[str] = []
    source_of: list[int] = []
    extracts: list[_Extract | None] = []
    for k in plan.pixel_vars:
        var = plan.ds[k]
        link = packed_source(var.variable)
        if link is not None:
            src, extract = link
        else:
            src, extract = var.data, None
            if any(len(c) > 1 for c in src.chunks[n_nav:]):
                src = src.rechunk({i: -1 for i in range(n_nav, src.ndim)})
        if src.name not in names:
            sources.append(src)
            names.append(src.name)
        source_of.append(names.index(src.name))
        extracts.append(extract)
    return sources, source_of, extracts


def run_to_store(
    ds: xr.Dataset,
    path: Any,
    *,
    overwrite: bool = False,
    resume: bool = True,
    codec: str = "lz4",
    attrs: Mapping[str, Any] | None = None,
    scheduler: Any = None,
    quiet: bool = True,
    description: str | None = None,
    inputs: Sequence[Any] = (),
) -> RunResult:
    """Compute a lazy result Dataset block by block straight into a zarr store, resumably.

    The whole run is one dask graph from the input store to the output store: each task reads one
    pixel block, runs the pipeline's kernels on it, writes every result variable's region of that
    block and records the block as done. Nothing else is held, so peak memory is set by the block
    size and the number of workers, not by the size of the image.

    The store is built under a hidden name beside ``path`` (``.NAME.partial``, with a run log
    ``.NAME.eelsgpu-run/`` of finished blocks) and renamed to ``path`` when every block is done. A
    run killed at any point and started again with the same arguments computes only the blocks
    not yet recorded and gives the same bytes as an uninterrupted run; a run with different
    arguments (another fingerprint) starts afresh.

    Parameters
    ----------
    ds : xarray.Dataset
        Lazy result (e.g. from :func:`apply_kernel`); its dask variables share their pixel chunks.
    path : path
        The store to create.
    overwrite : bool
        Replace an existing eelsgpu result store (it stays in place until the new one is
        complete); anything else at ``path`` is never replaced (:mod:`eelsgpu.engine.outputs`).
    resume : bool
        Continue an interrupted run of the same job (default); False starts afresh.
    codec : {"lz4", "zstd"}
        Compression profile (:func:`codecs`).
    attrs : mapping, optional
        More attributes for the store (e.g. :func:`run_attrs`); the dataset's own are kept.
    scheduler : str or distributed.Client, optional
        ``"threads"``, ``"processes"``, ``"synchronous"`` or a Client; default: dask's current one.
    quiet : bool
        No progress bar.
    inputs : sequence of paths
        The files the result comes from: ``path`` may not be, contain or lie inside one of them
        (the Dataset's ``source`` attribute is checked too).

    Returns
    -------
    RunResult

    Notes
    -----
    Only one run writes to ``path`` at a time: a second one is refused while the first holds
    the output's lock (:class:`~eelsgpu.engine.outputs.OutputLock`), which a killed run does not
    leave behind.
    """
    import time

    t0 = time.perf_counter()
    with StoreWriter(
        path,
        overwrite=overwrite,
        codec=codec,
        scheduler=scheduler,
        quiet=quiet,
        description=description,
        inputs=[*inputs, *dataset_sources(ds)],
    ) as writer:
        plan = writer.prepare(ds, attrs=attrs)
        writer.start(plan, resume=resume)
        writer.write(plan)
        result = writer.finish(plan)
    result.seconds = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------- running the tasks
def _compute(
    tasks: Sequence[Any],
    others: Sequence[Any],
    *,
    prefix: str,
    scheduler: Any,
    progress: BlockProgress,
) -> list[Any]:
    """Run the block tasks (ticking ``progress``) and ``others`` in one pass; ``others``' results."""
    if not tasks and not others:
        return []
    client = _distributed_client(scheduler)
    if client is not None:
        from distributed import as_completed

        futures = client.compute(list(tasks))
        other_futures = client.compute(list(others))
        for fut in as_completed(futures):
            progress.tick(fut.result())
        return list(client.gather(other_futures))
    with progress.callback(prefix):
        results = _local_compute([*tasks, *others], scheduler)
    return list(results[len(tasks) :])


def _local_compute(graphs: Sequence[Any], scheduler: Any) -> tuple[Any, ...]:
    """``dask.compute`` on a local scheduler that, on threads, returns (or raises) only once every
    task has stopped, so that no chunk is still being written after a failure is cleaned up (or
    while the next run of the same job starts)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import dask

    if scheduler is None:
        scheduler = dask.config.get("scheduler", None)
    if scheduler not in (None, "threads", "threading"):
        return dask.compute(*graphs, scheduler=scheduler)
    workers = dask.config.get("num_workers", None) or os.cpu_count() or 1
    # BLAS held to one thread while a chunk runs per core (eelsgpu.engine.blas), set from this
    # (the calling) thread: OpenBLAS ignores the limit set from one of the pool's threads
    with one_blas_thread(workers > 1), ThreadPoolExecutor(workers) as pool:
        # leaving the block waits for running tasks
        return dask.compute(*graphs, scheduler="threads", pool=pool)


def _distributed_client(scheduler: Any) -> Any:
    """The distributed Client to run on, if any (given, or the current default one)."""
    if scheduler is not None and not isinstance(scheduler, str):
        return scheduler  # a Client
    if scheduler is None:
        try:
            from distributed import default_client

            return default_client()
        except (ImportError, ValueError):
            return None
    return None
