"""Batch runs: one pipeline over many files, on a laptop, a GPU node or a dask cluster.

A *manifest* (YAML or TOML) says what to run::

    pipeline: thickness            # a name in PIPELINES, or "package.module:function"
    inputs: ["raw/*.zarr", "extra/scan_07.dm4"]   # paths or globs, relative to the manifest
    parameters: {method: log-ratio, beam_energy_keV: 200}
    device: auto
    output: {layout: "{stem}.zarr", codec: lz4}
    scheduler: {kind: slurm, queue: gpu, cores: 8, memory: 32GB, walltime: "01:00:00",
                gpus: 1, jobs: 4, interface: ib0}

The manifest is checked whole before anything starts (keys, pipeline, its parameter names,
device, layout, codec, open options, the inputs and every output path); a mistake is one
:class:`~eelsgpu.errors.InputError` naming it.

Every file goes through :func:`eelsgpu.engine.run_to_store`, so each output block is written
once, atomically, and recorded: a run killed at any point and started again with the same command
finishes the rest and gives the same bytes; a finished output of the same job is skipped; a file
that fails (corrupt, wrong shape, missing calibration) is reported in the summary (printed and
written as ``batch-summary.json`` in the output folder, naming each file) and the other files
finish.

Outputs. Every input gets its own output, inside OUTDIR: the layout's fields are ``{stem}`` (the
file name without its ending), ``{name}`` (the file name), ``{index}`` (its place in the input
list) and ``{parent}`` (the folder holding it); nothing else (no attribute access), no absolute
path, no ``..``. When the layout gives several inputs the same output (``day1/scan.zarr`` and
``day2/scan.zarr`` with the default ``{stem}.zarr``), the names of the folders above each of them
are put in front of its stem and name, as many as it takes (``day1-scan.zarr``,
``day2-scan.zarr``); inputs whose outputs differ keep their plain names. An output may not be,
contain or lie inside an input.

Jobs. Each store records the job that made it (``eelsgpu_job``: pipeline, parameters, input, open
options; and its fingerprint). A rerun with the same job skips a finished store and resumes an
interrupted one; a run with other parameters neither resumes into nor keeps a store of another
job: the file is reported failed, saying what differs, and ``--overwrite`` recomputes it (it
replaces only eelsgpu stores). One batch run uses an OUTDIR at a time (the tasks of a job array
share it, each with its own files); a second one is refused at once.

Trust. ``pipeline: package.module:function`` imports that module and runs that function: a
manifest is as trusted as a Python script. Run only manifests you would run as code.

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


def _kk_parameters() -> set[str]:
    import inspect

    import eelsgpu

    names = set(inspect.signature(eelsgpu.deconvolve).parameters)
    names |= set(inspect.signature(eelsgpu.kramers_kronig).parameters)
    return names - {"si", "ssd", "device"}


def pipeline_parameters(func: Callable[..., Any]) -> set[str] | None:
    """The parameter names a pipeline accepts (besides the image and ``device``); None when it
    takes any (``**kwargs``)."""
    import inspect

    if func is kk_pipeline:
        return _kk_parameters()
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params[1:]} - {"device"}


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
    if (
        not isinstance(inputs, list)
        or not inputs
        or not all(isinstance(i, str) and i for i in inputs)
    ):
        raise InputError(
            f"{source}: 'inputs:' must be a non-empty list of paths or globs, not {inputs!r}"
        )
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


_OUTPUT_KEYS = {"layout", "codec"}


def validate_manifest(manifest: Manifest) -> Callable[..., Any]:
    """Check everything a manifest says before anything runs, and return the pipeline.

    The pipeline loads (``module:function`` imports the module: it runs code), every parameter
    is one the pipeline takes (and ``device`` is the top-level key), the device, the output
    layout and codec, the options of :func:`eelsgpu.open` and ``task_mib`` are valid. A mistake
    is one :class:`InputError` naming the manifest and the key.
    """
    import inspect

    from .engine import CODEC_PROFILES
    from .engine.device import DEVICES

    src = manifest.source
    try:
        pipeline = get_pipeline(manifest.pipeline)
    except InputError as exc:
        raise InputError(f"{src}: {exc}") from None
    if "device" in manifest.parameters:
        raise InputError(f"{src}: give the device as the top-level 'device:', not a parameter")
    accepted = pipeline_parameters(pipeline)
    if accepted is not None:
        unknown = sorted(set(manifest.parameters) - accepted)
        if unknown:
            raise InputError(
                f"{src}: pipeline {manifest.pipeline!r} takes no parameter "
                f"{', '.join(map(repr, unknown))}; it takes {', '.join(sorted(accepted))}"
            )
    if manifest.device not in DEVICES:
        raise InputError(
            f"{src}: device must be one of {', '.join(DEVICES)}, not {manifest.device!r}"
        )
    unknown = sorted(set(manifest.output) - _OUTPUT_KEYS)
    if unknown:
        raise InputError(
            f"{src}: unknown 'output:' key(s) {', '.join(unknown)}; it has layout and codec"
        )
    if manifest.codec not in CODEC_PROFILES:
        raise InputError(
            f"{src}: output codec must be one of {', '.join(CODEC_PROFILES)}, not "
            f"{manifest.codec!r}"
        )
    check_layout(manifest.layout, src)
    from . import io

    open_names = set(inspect.signature(io.open).parameters) - {"path", "progress"}
    unknown = sorted(set(manifest.open) - open_names)
    if unknown:
        raise InputError(
            f"{src}: unknown 'open:' option(s) {', '.join(unknown)}; eelsgpu.open takes "
            f"{', '.join(sorted(open_names))}"
        )
    if manifest.task_mib is not None:
        from .analysis._checks import positive

        try:
            positive("task_mib", manifest.task_mib, "MiB")
        except InputError as exc:
            raise InputError(f"{src}: {exc}") from None
    return pipeline


def job_record(manifest: Manifest, src: Path) -> dict[str, Any]:
    """What makes a result what it is: the pipeline, its parameters, the input (relative to the
    manifest's folder) and how it was opened; not where or how fast it ran (device, scheduler,
    codec)."""
    from .engine import json_safe

    try:
        rel = os.path.relpath(os.path.abspath(src), os.path.abspath(manifest.base))
    except ValueError:  # another drive (Windows)
        rel = os.path.abspath(src)
    return json_safe(
        {
            "pipeline": manifest.pipeline,
            "parameters": dict(sorted(manifest.parameters.items())),
            "input": Path(rel).as_posix(),
            "open": dict(sorted(manifest.open.items())),
        }
    )


def job_fingerprint(job: Mapping[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:16]


def _job_difference(recorded: Any, job: Mapping[str, Any]) -> str:
    """What differs between the job a store records and this one, in words."""
    if not isinstance(recorded, Mapping):
        return "it records no job (made by an older eelsgpu or another program)"
    diffs = []
    for key in job:
        a, b = recorded.get(key), job[key]
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    diffs.append(f"{key}.{k} {a.get(k)!r} there, {b.get(k)!r} here")
        elif a != b:
            diffs.append(f"{key} {a!r} there, {b!r} here")
    return "; ".join(diffs) or "its job fingerprint differs"


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


#: The fields a layout may use.
LAYOUT_FIELDS = ("stem", "name", "index", "parent")
_SUFFIXES = (".zarr", ".zspy", ".hspy", ".dm3", ".dm4", ".msa", ".emsa", ".emd", ".npy")


def check_layout(layout: str, source: str = "<manifest>") -> None:
    """Refuse a layout with a field other than :data:`LAYOUT_FIELDS`, attribute or item access
    (``{stem.__class__}``), a conversion (``!r``), an absolute path or ``..``."""
    import string

    where = f"{source}: output layout {layout!r}"
    try:
        parts = list(string.Formatter().parse(layout))
    except ValueError as exc:
        raise InputError(f"{where} is not a valid template ({exc})") from None
    for _, field_name, spec, conversion in parts:
        if field_name is None:
            continue
        if field_name not in LAYOUT_FIELDS:
            raise InputError(
                f"{where}: unknown field {{{field_name}}}; a layout uses only "
                + ", ".join(f"{{{f}}}" for f in LAYOUT_FIELDS)
            )
        if conversion is not None or (spec and "{" in spec):
            raise InputError(f"{where}: {{{field_name}}} takes no conversion or nested field")
    try:
        sample = layout.format(stem="s", name="s.zarr", index=0, parent="p")
    except (ValueError, TypeError) as exc:
        raise InputError(f"{where} cannot be filled in ({exc})") from None
    _check_relative(sample, where)


def _check_relative(rel: str, where: str) -> None:
    parts = Path(rel).parts
    if not rel.strip() or os.path.isabs(rel) or rel.startswith("~"):
        raise InputError(f"{where}: an output must be a relative path inside OUTDIR, not {rel!r}")
    if ".." in parts or not parts or Path(rel) == Path("."):
        raise InputError(f"{where}: an output must stay inside OUTDIR, not {rel!r}")


def _stem(src: Path) -> str:
    name = src.name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def output_paths(manifest: Manifest, outdir: Path, files: list[Path]) -> list[Path]:
    """Every input's output inside ``outdir``, one per input (see the module docstring: inputs
    the layout maps to one path get the names of the folders above them in front of their stem
    and name, as many as it takes)."""
    check_layout(manifest.layout, manifest.source)
    layout = manifest.layout
    parents = [Path(os.path.abspath(f)).parent.parts[1:] for f in files]
    depth = [0] * len(files)

    def rel(i: int) -> str:
        src = files[i]
        prefix = list(parents[i][len(parents[i]) - depth[i] :]) if depth[i] else []
        stem, name = _stem(src), src.name
        if prefix:
            stem, name = "-".join([*prefix, stem]), "-".join([*prefix, name])
        return layout.format(stem=stem, name=name, index=i, parent=src.parent.name)

    while True:
        rels = [rel(i) for i in range(len(files))]
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(rels):  # case-folded: the same file on macOS and Windows disks
            groups.setdefault(os.path.normpath(r).casefold(), []).append(i)
        clashes = [g for g in groups.values() if len(g) > 1]
        if not clashes:
            break
        moved = False
        for group in clashes:
            for i in group:
                if depth[i] < len(parents[i]):
                    depth[i] += 1
                    moved = True
        if not moved:
            group = clashes[0]
            raise InputError(
                f"{manifest.source}: the output layout {layout!r} gives "
                f"{', '.join(str(files[i]) for i in group)} the same output {rels[group[0]]}; "
                "put {stem} or {index} in it"
            )
    base = Path(os.path.realpath(outdir))
    out = []
    for i, r in enumerate(rels):
        where = f"{manifest.source}: output layout {layout!r} for {files[i]}"
        _check_relative(r, where)
        path = outdir / r
        if (
            not Path(os.path.realpath(path)).is_relative_to(base)
            or Path(os.path.realpath(path)) == base
        ):
            raise InputError(f"{where}: {path} is not inside OUTDIR {outdir}")
        if Path(r).name.startswith("batch-summary") or Path(r).name.startswith(".eelsgpu"):
            raise InputError(f"{where}: {r} is a name eelsgpu's batch run uses itself")
        out.append(path)
    return out


def output_path(manifest: Manifest, outdir: Path, src: Path, index: int) -> Path:
    """The output of one input that has no namesake among the others (see :func:`output_paths`)."""
    check_layout(manifest.layout, manifest.source)
    rel = manifest.layout.format(
        stem=_stem(src), name=src.name, index=index, parent=src.parent.name
    )
    _check_relative(rel, f"{manifest.source}: output layout {manifest.layout!r}")
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
        if size is not None:
            raise InputError("--array-size needs --array-index (or SLURM_ARRAY_TASK_ID)")
        return range(n_files), ""
    size = 1 if size is None else size
    if size < 1:
        raise InputError(f"--array-size must be a whole number >= 1, not {size}")
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
    note: str = ""


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
            if f.note:
                extra += f" ({f.note})"
            lines.append(f"  {f.status:8s} {f.input} -> {f.output}{extra}")
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


def _existing_output(out: Path, job: Mapping[str, Any], fingerprint: str) -> str | None:
    """None when ``out`` may be (re)written; "skip" when it holds this job's finished result;
    else why it must be left alone."""
    from .engine import is_complete
    from .engine.outputs import _group_attrs, is_eelsgpu_store

    if not (out.exists() or out.is_symlink()):
        return None
    if not is_eelsgpu_store(out):
        return (
            f"{out}: exists and is not an eelsgpu result store; eelsgpu replaces only stores it "
            "wrote: remove it yourself or change the output layout"
        )
    attrs = _group_attrs(out) or {}
    if is_complete(out) and attrs.get("eelsgpu_job_fingerprint") == fingerprint:
        return "skip"
    return (
        f"{out}: holds the result of another job ({_job_difference(attrs.get('eelsgpu_job'), job)}"
        "); it is kept: pass --overwrite to recompute it, or use another OUTDIR"
    )


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
    inputs: list[Path] | None = None,
) -> FileResult:
    """Run the pipeline over one file into ``out`` (see :func:`run_batch`)."""
    from . import engine

    t0 = time.perf_counter()
    job = job_record(manifest, src)
    fingerprint = job_fingerprint(job)

    def failed(msg: str) -> FileResult:
        if str(src) not in msg:
            msg = f"{src}: {msg}"
        return FileResult(str(src), str(out), "failed", time.perf_counter() - t0, error=msg)

    try:
        engine.outputs.check_output(out, inputs or [src], overwrite=True)
        state = _existing_output(out, job, fingerprint)
        if state == "skip" and not overwrite:
            return FileResult(str(src), str(out), "skipped")
        if state not in (None, "skip") and not (overwrite and engine.is_eelsgpu_store(out)):
            return failed(state)
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
            job=job,
            job_fingerprint=fingerprint,
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
            inputs=inputs or [src],
        )
    except Exception as exc:  # one bad file must not stop the others: report it
        msg = str(exc) if isinstance(exc, InputError) else None
        return failed(msg or traceback.format_exception_only(type(exc), exc)[-1].strip())
    return FileResult(
        str(src),
        str(out),
        res.status,
        time.perf_counter() - t0,
        blocks=res.blocks_computed,
        spectra=res.spectra,
        note=res.note,
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

    Everything is checked before anything starts (:func:`validate_manifest`, the inputs, every
    output path); a second batch run on the same ``outdir`` is refused while this one runs (job
    array tasks share it, each with its own files). Flags given here override the manifest's
    ``scheduler:`` section. The summary is also written as ``OUTDIR/batch-summary.json``
    (``batch-summary-arrayIofN.json`` for a job-array task).
    """
    from .engine.outputs import OutputLock

    t0 = time.perf_counter()
    outdir = Path(outdir)
    validate_manifest(manifest)
    opts = {k: v for k, v in manifest.scheduler.items() if k != "kind"}
    opts.update({k: v for k, v in (scheduler_options or {}).items() if v is not None})
    kind = scheduler or str(manifest.scheduler.get("kind", "threads"))
    files, unmatched = expand_inputs(manifest)
    if not files:
        raise InputError(
            f"{manifest.source}: no input file ({', '.join(manifest.inputs)} matched nothing)"
        )
    share, suffix = array_share(len(files), array_index, array_size)
    if suffix and kind != "threads":
        raise InputError("a job-array run uses no scheduler: leave --scheduler at threads")
    outputs = output_paths(manifest, outdir, files)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir}: OUTDIR is a file, not a folder")
    for f in files:
        from .engine.outputs import related

        if related(outdir, f) in ("is", "inside"):
            raise InputError(f"{outdir}: OUTDIR is or lies inside the input {f}")
    summary = Summary(manifest.pipeline, str(outdir), kind)
    summary.errors += [f"{p}: matched no file" for p in unmatched]
    outdir.mkdir(parents=True, exist_ok=True)
    with scheduler_context(kind, opts, outdir=outdir, quiet=quiet) as info:
        lock_what = "is running a batch in this folder"
        # one batch run per OUTDIR (exclusive); job-array tasks share it (shared + their own)
        locks = [
            OutputLock(
                outdir,
                shared=bool(suffix),
                what=lock_what,
                lock_file=outdir / ".eelsgpu-batch.lock",
            )
        ]
        try:
            if suffix:
                locks.append(
                    OutputLock(
                        outdir, what=lock_what, lock_file=outdir / f".eelsgpu-batch{suffix}.lock"
                    )
                )
            for i in share:
                src = files[i]
                result = run_file(
                    manifest,
                    src,
                    outputs[i],
                    scheduler=info.scheduler,
                    target_bytes=info.target_bytes,
                    quiet=quiet,
                    overwrite=overwrite,
                    threads=info.threads,
                    inputs=files,
                )
                summary.files.append(result)
                if result.status == "failed" and not quiet:
                    print(f"eelsgpu batch: {result.error}", file=sys.stderr)
        finally:
            for lock in reversed(locks):
                lock.release()
    summary.seconds = time.perf_counter() - t0
    if write_summary:
        path = outdir / f"batch-summary{suffix}.json"
        summary.path = str(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(summary.to_dict(), indent=2))
        os.replace(tmp, path)
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
