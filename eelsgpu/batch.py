"""Batch runs: one pipeline over many files, on a laptop, a GPU node or a dask cluster.

A *manifest* (YAML or TOML) says what to run::

    pipeline: thickness            # a name in PIPELINES, or "package.module:function"
    inputs: ["raw/*.zarr", "extra/scan_07.dm4"]   # paths or globs, relative to the manifest
    parameters: {method: log-ratio, beam_energy_keV: 200}
    device: auto
    output: {layout: "{stem}.zarr", codec: lz4}
    scheduler: {kind: slurm, queue: gpu, cores: 8, memory: 32GB, walltime: "01:00:00",
                gpus: 1, jobs: 4, interface: ib0}

Every file goes through :func:`eelsgpu.engine.run_to_store`, so each output block is written
once, atomically, and recorded: a run killed at any point and started again with the same command
finishes the rest and gives the same bytes; a finished output is skipped; a file that fails
(corrupt, wrong shape, missing calibration) is reported in the summary (printed and written as
``batch-summary.json`` in the output folder) and the other files finish.

Schedulers (``--scheduler`` or ``scheduler.kind``): ``threads`` (default), ``processes`` (a
dask.distributed LocalCluster), ``local-cuda`` (dask-cuda, one worker per GPU), ``tcp://host:port``
(an existing scheduler), ``slurm`` / ``pbs`` (dask-jobqueue; under ``srun`` with 3 or more tasks,
dask-jobqueue's SLURMRunner instead). A plain SLURM job array needs no scheduler at all: with
``--array-index/--array-size`` (or ``SLURM_ARRAY_TASK_ID``) each array task runs its share of the
files on its own threads.

Security: every scheduler and dashboard eelsgpu starts listens on 127.0.0.1 only, unless an
interface (``--interface``) or address (``--host``, ``--dashboard-address``) is named. Batch jobs
on other nodes (``slurm``/``pbs`` across nodes) must therefore be told the interface they reach the
scheduler on.
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine.schedulers import SchedulerInfo, scheduler_context
from .errors import InputError

__all__ = [
    "PIPELINES",
    "Manifest",
    "get_pipeline",
    "load_manifest",
    "register_pipeline",
    "run_batch",
    "scheduler_context",
]

#: Pipeline name -> "module:function", imported on first use. The analyses are named by eelsgpu's
#: public (lazy) names, ``eelsgpu:thickness``, so they resolve whatever module defines them.
PIPELINES: dict[str, str | Callable[..., Any]] = {
    "thickness": "eelsgpu:thickness",
    "deconvolve": "eelsgpu:deconvolve",
    "kk": "eelsgpu.batch:kk_pipeline",
    "maps": "eelsgpu:window_maps",
}

_MANIFEST_KEYS = {
    "pipeline",
    "inputs",
    "parameters",
    "device",
    "output",
    "scheduler",
    "open",
    "task_mib",
}


def kk_pipeline(si: Any, device: str = "auto", **params: Any) -> Any:
    """Kramers-Kronig from a raw low-loss image: Fourier-log deconvolution, then KK analysis.

    Parameters named in :func:`eelsgpu.deconvolve`'s signature (``zlp``, ``extrapolation``...)
    go there, the rest to :func:`eelsgpu.kramers_kronig` (``refractive_index``, ``metal``...).
    Both steps are lazy, so the pair is one dask graph from the input store to the output store.
    """
    import inspect

    import eelsgpu

    deconvolve, kramers_kronig = eelsgpu.deconvolve, eelsgpu.kramers_kronig
    names = set(inspect.signature(deconvolve).parameters) - {"si", "device"}
    dec = {k: v for k, v in params.items() if k in names}
    rest = {k: v for k, v in params.items() if k not in names}
    ssd = deconvolve(si, device=device, **dec)
    return kramers_kronig(ssd, device=device, **rest)


def register_pipeline(name: str, func: Callable[..., Any] | str) -> None:
    """Add a pipeline ``func(si, **parameters) -> lazy xarray.Dataset`` under ``name``."""
    PIPELINES[name] = func


def get_pipeline(name: str) -> Callable[..., Any]:
    """The pipeline callable for a registered name or a ``"module:function"`` reference."""
    ref = PIPELINES.get(name, name)
    if callable(ref):
        return ref
    if ":" not in ref:
        raise InputError(
            f"unknown pipeline {name!r}: use one of {', '.join(sorted(PIPELINES))} or "
            "'package.module:function'"
        )
    module, _, attr = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"pipeline {name!r} ({ref}) cannot be loaded: {exc}") from exc


# --------------------------------------------------------------------------- manifest
@dataclass
class Manifest:
    """What a batch run does (see the module docstring for the file format)."""

    pipeline: str
    inputs: list[str]
    parameters: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    output: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    open: dict[str, Any] = field(default_factory=dict)
    task_mib: float | None = None
    base: Path = Path(".")
    source: str = "<manifest>"

    @property
    def layout(self) -> str:
        return str(self.output.get("layout", "{stem}.zarr"))

    @property
    def codec(self) -> str:
        return str(self.output.get("codec", "lz4"))


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) manifest."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such manifest")
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            doc = tomllib.loads(p.read_text())
        else:
            import yaml

            doc = yaml.safe_load(p.read_text())
    except Exception as exc:
        raise InputError(f"{p}: not a readable manifest ({type(exc).__name__}: {exc})") from exc
    return manifest_from_dict(doc, base=p.parent, source=str(p))


def manifest_from_dict(doc: Any, base: Path = Path("."), source: str = "<manifest>") -> Manifest:
    if not isinstance(doc, Mapping):
        raise InputError(f"{source}: a manifest is a mapping (pipeline:, inputs:, ...)")
    unknown = set(doc) - _MANIFEST_KEYS
    if unknown:
        raise InputError(
            f"{source}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"a manifest has {', '.join(sorted(_MANIFEST_KEYS))}"
        )
    for key in ("pipeline", "inputs"):
        if key not in doc:
            raise InputError(f"{source}: the manifest needs '{key}:'")
    inputs = doc["inputs"]
    if isinstance(inputs, str):
        inputs = [inputs]
    for key in ("parameters", "output", "scheduler", "open"):
        if not isinstance(doc.get(key, {}) or {}, Mapping):
            raise InputError(f"{source}: '{key}:' must be a mapping")
    return Manifest(
        pipeline=str(doc["pipeline"]),
        inputs=[str(i) for i in inputs],
        parameters=dict(doc.get("parameters") or {}),
        device=str(doc.get("device", "auto")),
        output=dict(doc.get("output") or {}),
        scheduler=dict(doc.get("scheduler") or {}),
        open=dict(doc.get("open") or {}),
        task_mib=doc.get("task_mib"),
        base=Path(base),
        source=source,
    )


def expand_inputs(manifest: Manifest) -> tuple[list[Path], list[str]]:
    """The input files in a stable order, and the patterns that matched nothing."""
    files: list[Path] = []
    unmatched = []
    for pattern in manifest.inputs:
        full = pattern if os.path.isabs(pattern) else str(manifest.base / pattern)
        if glob.has_magic(full):
            hits = sorted(glob.glob(full))
            if not hits:
                unmatched.append(pattern)
            files += [Path(h) for h in hits]
        else:
            files.append(Path(full))
    seen: set[Path] = set()
    unique = [f for f in files if not (f in seen or seen.add(f))]
    return unique, unmatched


def output_path(manifest: Manifest, outdir: Path, src: Path, index: int) -> Path:
    stem = src.name
    for suffix in (".zarr", ".zspy", ".hspy", ".dm3", ".dm4", ".msa", ".emsa", ".emd", ".npy"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    rel = manifest.layout.format(stem=stem, name=src.name, index=index, parent=src.parent.name)
    return outdir / rel


def array_share(
    n_files: int, index: int | None = None, size: int | None = None
) -> tuple[range | list[int], str]:
    """Which files this task of a job array takes (every ``size``-th from ``index``).

    ``index``/``size`` default to SLURM's ``SLURM_ARRAY_TASK_ID`` and the array's task count
    (``SLURM_ARRAY_TASK_COUNT``, else ``MAX - MIN + 1``); the IDs are taken relative to
    ``SLURM_ARRAY_TASK_MIN``. Without either, every file.
    """
    env = os.environ
    if index is None and "SLURM_ARRAY_TASK_ID" in env:
        lo = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        index = int(env["SLURM_ARRAY_TASK_ID"]) - lo
        if size is None:
            if "SLURM_ARRAY_TASK_COUNT" in env:
                size = int(env["SLURM_ARRAY_TASK_COUNT"])
            else:
                size = int(env.get("SLURM_ARRAY_TASK_MAX", lo)) - lo + 1
    if index is None:
        return range(n_files), ""
    size = size or 1
    if not 0 <= index < size:
        raise InputError(f"array index {index} is outside an array of {size} tasks")
    return range(index, n_files, size), f"-array{index}of{size}"


# --------------------------------------------------------------------------- the run
@dataclass
class FileResult:
    input: str
    output: str
    status: str  # written | resumed | skipped | failed
    seconds: float = 0.0
    blocks: int = 0
    spectra: int = 0
    error: str | None = None


@dataclass
class Summary:
    pipeline: str
    outdir: str
    scheduler: str
    files: list[FileResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    path: str | None = None

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.errors

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        d["counts"] = {
            s: sum(f.status == s for f in self.files)
            for s in ("written", "resumed", "skipped", "failed")
        }
        return d

    def text(self) -> str:
        lines = [f"eelsgpu batch: {self.pipeline} over {len(self.files)} file(s) -> {self.outdir}"]
        for f in self.files:
            extra = f"  ERROR {f.error}" if f.error else f"  {f.blocks} blocks, {f.seconds:.1f} s"
            lines.append(f"  {f.status:8s} {f.input}{extra}")
        lines += [f"  error    {e}" for e in self.errors]
        counts = self.to_dict()["counts"]
        lines.append(
            "  "
            + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
            + f" in {self.seconds:.1f} s"
        )
        return "\n".join(lines)


def open_input(path: Path, options: Mapping[str, Any] | None = None) -> Any:
    """Open one input as a spectrum image (any format :func:`eelsgpu.open` reads)."""
    from . import io

    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    si = io.open(path, **dict(options or {}))
    if si.ndim not in (1, 2, 3) or si.dims[-1] != "energy":
        raise InputError(f"{path}: not a spectrum image (dims {si.dims})")
    return si


def run_file(
    manifest: Manifest,
    src: Path,
    out: Path,
    *,
    scheduler: Any,
    target_bytes: int,
    quiet: bool,
    overwrite: bool = False,
    threads: int = 1,
) -> FileResult:
    """Run the pipeline over one file into ``out`` (see :func:`run_batch`)."""
    from . import engine

    t0 = time.perf_counter()
    if out.exists() and engine.is_complete(out) and not overwrite:
        return FileResult(str(src), str(out), "skipped")
    try:
        pipeline = get_pipeline(manifest.pipeline)
        si = open_input(src, manifest.open)
        if manifest.task_mib:
            target_bytes = int(float(manifest.task_mib) * 2**20)
        si = engine.align_tasks(si, target_bytes, min_tasks=2 * threads)
        params = {"device": manifest.device, **manifest.parameters}
        ds = pipeline(si, **params)
        attrs = engine.run_attrs(
            manifest.pipeline,
            params,
            input=str(src),
            open_options=manifest.open,
        )
        res = engine.run_to_store(
            ds,
            out,
            attrs=attrs,
            codec=manifest.codec,
            scheduler=scheduler,
            quiet=quiet,
            overwrite=overwrite,
            description=src.name,
        )
    except Exception as exc:  # one bad file must not stop the others: report it
        msg = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return FileResult(str(src), str(out), "failed", time.perf_counter() - t0, error=msg)
    return FileResult(
        str(src),
        str(out),
        res.status,
        time.perf_counter() - t0,
        blocks=res.blocks_computed,
        spectra=res.spectra,
    )


def run_batch(
    manifest: Manifest,
    outdir: str | os.PathLike,
    *,
    scheduler: str | None = None,
    scheduler_options: Mapping[str, Any] | None = None,
    array_index: int | None = None,
    array_size: int | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    write_summary: bool = True,
) -> Summary:
    """Run ``manifest``'s pipeline over its inputs into ``outdir`` and return the summary.

    Flags given here override the manifest's ``scheduler:`` section. The summary is also written
    as ``OUTDIR/batch-summary.json`` (``batch-summary-arrayIofN.json`` for a job-array task).
    """
    t0 = time.perf_counter()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    opts = {k: v for k, v in manifest.scheduler.items() if k != "kind"}
    opts.update({k: v for k, v in (scheduler_options or {}).items() if v is not None})
    kind = scheduler or str(manifest.scheduler.get("kind", "threads"))
    files, unmatched = expand_inputs(manifest)
    share, suffix = array_share(len(files), array_index, array_size)
    if suffix and kind != "threads":
        raise InputError("a job-array run uses no scheduler: leave --scheduler at threads")
    summary = Summary(manifest.pipeline, str(outdir), kind)
    summary.errors += [f"{p}: matched no file" for p in unmatched]
    with scheduler_context(kind, opts, outdir=outdir, quiet=quiet) as info:
        for i in share:
            src = files[i]
            out = output_path(manifest, outdir, src, i)
            result = run_file(
                manifest,
                src,
                out,
                scheduler=info.scheduler,
                target_bytes=info.target_bytes,
                quiet=quiet,
                overwrite=overwrite,
                threads=info.threads,
            )
            summary.files.append(result)
            if result.status == "failed" and not quiet:
                print(f"eelsgpu batch: {src}: {result.error}", file=sys.stderr)
    summary.seconds = time.perf_counter() - t0
    if write_summary:
        path = outdir / f"batch-summary{suffix}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(summary.to_dict(), indent=2))
        os.replace(tmp, path)
        summary.path = str(path)
    return summary


def run_pipeline(
    name: str, si: Any, path: str | os.PathLike, *, scheduler: Any = None, **params: Any
) -> Any:
    """Python shortcut: run one registered pipeline over ``si`` straight into a store."""
    from . import engine

    ds = get_pipeline(name)(si, **params)
    return engine.run_to_store(
        ds, path, attrs=engine.run_attrs(name, params), scheduler=scheduler, quiet=True
    )


__all__ += ["Summary", "FileResult", "SchedulerInfo", "run_file", "run_pipeline"]
