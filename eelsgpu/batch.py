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

import contextlib
import glob
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

LOCALHOST = "127.0.0.1"

#: Pipeline name -> "module:function" (imported on first use: they live in other modules).
PIPELINES: dict[str, str | Callable[..., Any]] = {
    "thickness": "eelsgpu.thickness:thickness",
    "deconvolve": "eelsgpu.deconvolution:deconvolve",
    "kk": "eelsgpu.batch:kk_pipeline",
    "maps": "eelsgpu.maps:window_maps",
}

SCHEDULERS = ("threads", "processes", "synchronous", "local-cuda", "slurm", "pbs")

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

    from .deconvolution import deconvolve
    from .kramers_kronig import kramers_kronig

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


# --------------------------------------------------------------------------- schedulers
@dataclass
class SchedulerInfo:
    """What :func:`scheduler_context` started: the ``scheduler=`` argument for dask and where the
    scheduler and its dashboard listen (``None`` for the local schedulers)."""

    kind: str
    scheduler: Any
    address: str | None = None
    dashboard: str | None = None
    target_bytes: int = 0
    threads: int = 1


def _bind(options: Mapping[str, Any]) -> dict[str, Any]:
    """Where a scheduler we start listens: the named interface or host, else localhost only."""
    if options.get("interface"):
        return {"interface": options["interface"]}
    return {"host": options.get("host") or LOCALHOST}


def _dashboard(options: Mapping[str, Any]) -> str:
    return str(options.get("dashboard_address") or f"{LOCALHOST}:8787")


def _jobqueue_cluster(kind: str, opts: Mapping[str, Any]) -> Any:
    import dask_jobqueue

    if not (opts.get("interface") or opts.get("host")):
        raise InputError(
            f"--scheduler {kind}: the workers run on other nodes and must reach the scheduler, "
            "which eelsgpu binds to 127.0.0.1 unless told otherwise; name the network interface "
            "they reach it on with --interface (e.g. ib0 or eth0) or an address with --host"
        )
    gpus = int(opts.get("gpus") or 0)
    cores = int(opts.get("cores") or 1)
    kw: dict[str, Any] = {
        "cores": cores,
        "processes": int(opts.get("processes") or gpus or 1),  # one worker per GPU
        "memory": str(opts.get("memory") or "8GB"),
        "walltime": str(opts.get("walltime") or "01:00:00"),
        "scheduler_options": {**_bind(opts), "dashboard_address": _dashboard(opts)},
    }
    if opts.get("interface"):
        kw["interface"] = opts["interface"]  # the workers' side
    if opts.get("queue"):
        kw["queue"] = str(opts["queue"])
    if opts.get("account"):
        kw["account"] = str(opts["account"])
    if kind == "slurm":
        extra = [f"--gres=gpu:{gpus}"] if gpus else []
        return dask_jobqueue.SLURMCluster(job_extra_directives=extra, **kw)
    if gpus:
        kw["resource_spec"] = f"select=1:ncpus={cores}:ngpus={gpus}:mem={kw['memory']}"
    return dask_jobqueue.PBSCluster(**kw)


def _slurm_runner(opts: Mapping[str, Any], outdir: Path) -> Any:
    from dask_jobqueue.slurm import SLURMRunner

    multi_node = int(os.environ.get("SLURM_NNODES", "1")) > 1
    if multi_node and not (opts.get("interface") or opts.get("host")):
        raise InputError(
            "srun over several nodes: name the interface the tasks reach each other on with "
            "--interface (eelsgpu binds its scheduler to 127.0.0.1 unless told otherwise)"
        )
    scheduler_options = {**_bind(opts), "dashboard_address": _dashboard(opts)}
    worker_options: dict[str, Any] = {}
    if opts.get("interface"):
        worker_options["interface"] = opts["interface"]
    elif not multi_node:
        worker_options["host"] = LOCALHOST
    if int(opts.get("gpus") or 0) and "SLURM_LOCALID" in os.environ:
        # one worker per GPU: each srun task sees the GPU of its local rank
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", os.environ["SLURM_LOCALID"])
    return SLURMRunner(
        scheduler_file=str(outdir / ".dask-scheduler-{job_id}.json"),
        scheduler_options=scheduler_options,
        worker_options=worker_options,
    )


@contextlib.contextmanager
def scheduler_context(
    kind: str = "threads",
    options: Mapping[str, Any] | None = None,
    *,
    outdir: Path | None = None,
    quiet: bool = False,
) -> Iterator[SchedulerInfo]:
    """Start (and stop) the scheduler a batch run uses.

    ``options`` (from the manifest's ``scheduler:`` and the command-line flags): ``workers``,
    ``threads_per_worker``, ``memory`` (per worker or job), ``host``, ``interface``,
    ``dashboard_address``; for ``slurm``/``pbs``: ``queue``, ``account``, ``cores``, ``walltime``,
    ``gpus``, ``jobs``.
    """
    from .engine import TASK_BYTES

    opts = dict(options or {})
    local = TASK_BYTES["local"]
    dist = TASK_BYTES["distributed"]
    if kind in ("threads", "synchronous"):
        threads = 1 if kind == "synchronous" else (os.cpu_count() or 1)
        yield SchedulerInfo(kind, kind, target_bytes=local, threads=threads)
        return
    if kind == "processes":
        from distributed import Client, LocalCluster

        n_workers = int(opts.get("workers") or max(1, (os.cpu_count() or 2)))
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=int(opts.get("threads_per_worker") or 1),
            processes=True,
            memory_limit=opts.get("memory") or "auto",
            dashboard_address=_dashboard(opts),
            **_bind(opts),
        )
        with cluster, Client(cluster) as client:
            yield _announce(SchedulerInfo(kind, client, target_bytes=dist), client, quiet)
        return
    if kind == "local-cuda":
        from distributed import Client

        from .engine.transfer import local_cuda_cluster

        bind = _bind(opts)
        cluster = local_cuda_cluster(dashboard_address=_dashboard(opts), **bind)
        with cluster, Client(cluster) as client:
            yield _announce(SchedulerInfo(kind, client, target_bytes=dist), client, quiet)
        return
    if kind.startswith(("tcp://", "tls://", "ucx://")):
        from distributed import Client

        with Client(kind) as client:
            yield _announce(SchedulerInfo("address", client, target_bytes=dist), client, quiet)
        return
    if (
        kind == "slurm"
        and int(os.environ.get("SLURM_NTASKS", "1")) >= 3
        and ("SLURM_PROCID" in os.environ)
    ):
        from dask_jobqueue.runner import Role
        from distributed import Client

        runner = _slurm_runner(opts, outdir or Path("."))
        try:
            runner.__enter__()  # rank 0 runs the scheduler here, ranks 2+ a worker, until the end
        except KeyboardInterrupt:
            # the runner ends the scheduler and worker ranks with SIGINT once the client is done
            if runner.role in (Role.scheduler, Role.worker):
                raise SystemExit(0) from None
            raise
        try:
            with Client(runner) as client:  # only rank 1, the client, runs the batch
                client.wait_for_workers(runner.n_workers)
                yield _announce(
                    SchedulerInfo("slurm-runner", client, target_bytes=dist), client, quiet
                )
        finally:
            runner.__exit__(None, None, None)
        return
    if kind in ("slurm", "pbs"):
        from distributed import Client

        cluster = _jobqueue_cluster(kind, opts)
        cluster.scale(jobs=int(opts.get("jobs") or 1))
        with cluster, Client(cluster) as client:
            yield _announce(SchedulerInfo(kind, client, target_bytes=dist), client, quiet)
        return
    raise InputError(
        f"unknown scheduler {kind!r}: use threads, processes, local-cuda, tcp://host:port, "
        "slurm or pbs"
    )


def _announce(info: SchedulerInfo, client: Any, quiet: bool) -> SchedulerInfo:
    info.address = client.scheduler.address
    with contextlib.suppress(Exception):
        workers = client.scheduler_info()["workers"].values()
        info.threads = max(1, sum(int(w.get("nthreads", 1)) for w in workers))
    import importlib.util

    info.dashboard = None
    if importlib.util.find_spec("bokeh") is not None:  # distributed serves it only with bokeh
        with contextlib.suppress(Exception):
            info.dashboard = client.dashboard_link
    if not quiet:
        dash = info.dashboard or "not served (install bokeh for the dask dashboard)"
        print(f"dask scheduler: {info.address}   dashboard: {dash}", file=sys.stderr)
    return info


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
