"""The one store writer: a lazy result Dataset computed block by block into a zarr store.

:func:`run_to_store` builds the store under a hidden name beside the target, writes every pixel
block once (atomically, recorded in a run log), resumes an interrupted run of the same job and
renames the store into place when it is whole; :func:`codecs` gives the compression profiles;
:func:`run_attrs` the provenance every result store carries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from . import device as backend
from .blocks import _PACKED, _Extract

__all__ = [
    "CODEC_PROFILES",
    "RunResult",
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
    zstd codec, the profile a GPU can decode (nvCOMP reads zstd frames but not Blosc).
    """
    from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

    if profile == "lz4":
        return {
            "compressors": (BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.bitshuffle),)
        }
    if profile == "zstd":
        return {"compressors": (ZstdCodec(level=3),)}
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
    from .. import __version__

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


def _state_paths(target: Any) -> tuple[Any, Any]:
    from pathlib import Path

    target = Path(target)
    return (
        target.with_name(f".{target.name}.partial"),
        target.with_name(f".{target.name}.eelsgpu-run"),
    )


def is_complete(path: Any) -> bool:
    """True when ``path`` is a store that :func:`run_to_store` (or io.write_store) finished."""
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


def _zarr_array(store: str, name: str, token: str) -> Any:
    key = (store, name, token)
    arr = _ZARR_ARRAYS.get(key)
    if arr is None:
        import zarr

        # every chunk written (see io.write_store: the empty-chunk check costs a full pass)
        arr = _ZARR_ARRAYS[key] = zarr.open_array(
            store, path=name, mode="r+", config={"write_empty_chunks": True}
        )
    return arr


def _write_block(
    store: str,
    token: str,
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
        _zarr_array(store, name, token)[region] = value
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
        Replace an existing finished store (it stays in place until the new one is complete).
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

    Returns
    -------
    RunResult
    """
    import os
    import shutil
    import time
    from pathlib import Path

    from ..errors import InputError

    t0 = time.perf_counter()
    target = Path(path)
    if target.exists() and not overwrite:
        raise InputError(f"{target}: already exists (pass overwrite=True or --overwrite)")
    partial, state = _state_paths(target)
    if attrs:
        ds = ds.assign_attrs({**ds.attrs, **attrs})
    ds = ds.assign_attrs(json_safe(dict(ds.attrs)))
    lazy_vars = [k for k, v in ds.data_vars.items() if isinstance(v.data, da.Array)]
    if not lazy_vars:
        ds = ds.chunk()
        lazy_vars = list(ds.data_vars)
    nav_dims = [d for d in ds[lazy_vars[0]].dims if d in ("y", "x")] or list(
        ds[lazy_vars[0]].dims[:1]
    )
    # Per-pixel variables (pixel dims first) are written block by block; anything else that is
    # lazy (a mean spectrum, a scalar) is small: computed now and written with the metadata.
    small = [k for k in lazy_vars if tuple(ds[k].dims[: len(nav_dims)]) != tuple(nav_dims)]
    if small:
        ds = ds.assign({k: ds[k].compute(scheduler=scheduler) for k in small})
        lazy_vars = [k for k in lazy_vars if k not in small]
    if not lazy_vars:
        raise ValueError("run_to_store needs at least one per-pixel variable (dims y, x, ...)")
    ds = _regular(ds, nav_dims)
    token = _fingerprint(ds)

    # ------------------------------------------------------------------ start or resume
    run_file = state / "run.json"
    fresh = True
    if resume and partial.is_dir() and run_file.is_file():
        import json

        try:
            fresh = json.loads(run_file.read_text()).get("fingerprint") != token
        except ValueError:
            fresh = True
    if fresh:
        import json

        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
        (state / "done").mkdir(parents=True)
        enc: dict[str, Any] = {}
        for name in ds.data_vars:
            enc[name] = dict(codecs(codec))
            if name in lazy_vars:
                enc[name]["chunks"] = tuple(c[0] for c in ds[name].data.chunks)
        init = ds.assign_attrs(eelsgpu_complete=False, eelsgpu_fingerprint=token)
        init.to_zarr(
            partial,
            mode="w",
            compute=False,
            encoding=enc,
            consolidated=False,
            zarr_format=3,
            write_empty_chunks=True,
        )
        tmp = state / "run.json.tmp"
        tmp.write_text(json.dumps({"fingerprint": token, "target": str(target)}))
        os.replace(tmp, run_file)  # written last: a store without it is started afresh

    # ------------------------------------------------------------------ one task per block
    import dask

    # Each variable comes from a "source" array: the packed per-block array of apply_kernel when
    # the variable is one of its outputs as it was made (the write task then cuts it out itself),
    # else the variable's own dask array.
    sources: list[da.Array] = []
    source_of: list[int] = []
    extracts: list[_Extract | None] = []
    for k in lazy_vars:
        arr = ds[k].data
        packed = _PACKED.get(arr.name)
        if packed is not None and packed[0].chunks[:-1] == arr.chunks[: packed[0].ndim - 1]:
            src, extract = packed
        else:
            src, extract = arr, None
        names_ = [a.name for a in sources]
        if src.name not in names_:
            sources.append(src)
            names_.append(src.name)
        source_of.append(names_.index(src.name))
        extracts.append(extract)
    sources = list(dask.optimize(*sources))
    delayed = [a.to_delayed(optimize_graph=False) for a in sources]
    first = ds[lazy_vars[0]]
    grid = [len(first.data.chunks[first.dims.index(d)]) for d in nav_dims]
    nav_chunks = {d: first.data.chunks[first.dims.index(d)] for d in nav_dims}
    starts = {d: np.concatenate([[0], np.cumsum(c)]) for d, c in nav_chunks.items()}
    done_dir = state / "done"
    done = set(os.listdir(done_dir)) if done_dir.is_dir() else set()
    prefix = f"eelsgpu-write-{token}"
    tasks = []
    n_blocks = int(np.prod(grid))
    spectra_per_block = []
    for b in np.ndindex(*grid):
        label = "_".join(map(str, b))
        if label in done:
            continue
        region = {
            d: slice(int(starts[d][i]), int(starts[d][i + 1]))
            for d, i in zip(nav_dims, b, strict=True)
        }
        n_spec = int(np.prod([s.stop - s.start for s in region.values()]))
        regions = [tuple(region.get(d, slice(None)) for d in ds[k].dims) for k in lazy_vars]
        values = []
        for dl in delayed:
            # sources have the pixel dims first (apply_kernel's packed array and the maps/cubes
            # it makes), one chunk along every other dim
            values.append(dl[tuple(b) + (0,) * (dl.ndim - len(b))])
        tasks.append(
            dask.delayed(_write_block, pure=True)(
                str(partial),
                token,
                str(done_dir / label),
                lazy_vars,
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
    _compute_blocks(
        tasks,
        prefix,
        scheduler=scheduler,
        quiet=quiet,
        description=description or target.name,
        n_blocks=n_blocks,
        n_done=n_blocks - len(tasks),
        total_spectra=total_spectra,
        done_spectra=total_spectra - int(sum(spectra_per_block)),
    )

    # ------------------------------------------------------------------ finish
    missing = n_blocks - len(os.listdir(done_dir))
    if missing:
        raise RuntimeError(f"{target}: {missing} blocks were not written; run again to finish")
    _set_group_attrs(partial, {"eelsgpu_complete": True})
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    os.replace(partial, target)
    shutil.rmtree(state, ignore_errors=True)
    return RunResult(
        path=target,
        status="written" if fresh or len(tasks) == n_blocks else "resumed",
        blocks_total=n_blocks,
        blocks_computed=len(tasks),
        spectra=int(sum(spectra_per_block)),
        seconds=time.perf_counter() - t0,
    )


def _compute_blocks(
    tasks: Sequence[Any],
    prefix: str,
    *,
    scheduler: Any,
    quiet: bool,
    description: str,
    n_blocks: int,
    n_done: int,
    total_spectra: int,
    done_spectra: int,
) -> None:
    """Run the block tasks with a progress bar (blocks done, spectra/s, time left)."""
    import dask

    if not tasks:
        return
    client = _distributed_client(scheduler)
    bar = None
    if not quiet:
        import sys

        from tqdm.auto import tqdm

        bar = tqdm(
            total=total_spectra,
            initial=done_spectra,
            desc=description,
            unit="spectra",
            unit_scale=True,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        bar.set_postfix_str(f"{n_done}/{n_blocks} blocks")
    state = {"blocks": n_done}

    def tick(n_spectra: int) -> None:
        state["blocks"] += 1
        if bar is not None:
            bar.set_postfix_str(f"{state['blocks']}/{n_blocks} blocks", refresh=False)
            bar.update(n_spectra)

    try:
        if client is not None:
            from distributed import as_completed

            futures = client.compute(list(tasks))
            for fut in as_completed(futures):
                tick(fut.result())
        else:
            from dask.callbacks import Callback

            class _Tick(Callback):
                def _posttask(self, key, result, dsk, state_, worker_id):  # noqa: ANN001
                    name = key if isinstance(key, str) else str(key[0] if key else "")
                    if name.startswith(prefix):
                        tick(int(result))

            with _Tick():
                dask.compute(*tasks, scheduler=scheduler)
    finally:
        if bar is not None:
            bar.close()


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
