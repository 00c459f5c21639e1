"""``eelsgpu batch MANIFEST -o OUTDIR``: one pipeline over many files, resumable, on any scheduler."""

from __future__ import annotations

import argparse
import sys

from ._common import add_quiet

HELP = """\
Run one pipeline (thickness, deconvolve, kk, maps, or package.module:function) over many files
listed in a YAML or TOML manifest. Each output block is written once and recorded: run the same
command again after an interruption and it finishes the rest (finished files of the same job are
skipped). A file that fails is reported in OUTDIR/batch-summary.json and the others finish.

The manifest is checked whole before anything starts. Every input gets its own output inside
OUTDIR (namesakes get their folder names in front: day1-scan.zarr, day2-scan.zarr). A store made
with other parameters is neither resumed nor kept: the file is reported with what differs, and
--overwrite recomputes it (only stores eelsgpu wrote are ever replaced). One batch run per OUTDIR
at a time (job-array tasks share it).

A manifest is code: `pipeline: package.module:function` imports that module and runs it. Run only
manifests you would run as a Python script.

Every scheduler and dashboard eelsgpu starts listens on 127.0.0.1 only, unless you name an
interface (--interface) or address (--host, --dashboard-address).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "batch",
        help="run a pipeline over many files (resumable; threads, processes, GPUs, SLURM/PBS)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "manifest", metavar="MANIFEST", help="YAML (.yaml/.yml) or TOML (.toml) manifest"
    )
    p.add_argument("-o", "--output", metavar="OUTDIR", required=True, help="folder for the results")
    p.add_argument(
        "--scheduler",
        metavar="KIND",
        help="threads (default), processes, local-cuda, tcp://HOST:PORT, slurm or pbs "
        "(overrides the manifest's scheduler.kind)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), help="overrides the manifest's")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute files whose output exists (finished, or made with other parameters)",
    )
    g = p.add_argument_group("local and distributed schedulers")
    g.add_argument("--workers", type=int, help="worker processes (processes) or jobs' workers")
    g.add_argument("--threads-per-worker", type=int, dest="threads_per_worker")
    g.add_argument("--host", help="address the scheduler listens on (default 127.0.0.1)")
    g.add_argument("--interface", help="network interface the scheduler and workers use (ib0...)")
    g.add_argument(
        "--dashboard-address",
        dest="dashboard_address",
        help="where the dask dashboard listens (default 127.0.0.1:8787)",
    )
    g.add_argument("--task-mib", type=float, dest="task_mib", help="input MiB per dask task")
    j = p.add_argument_group("slurm / pbs (dask-jobqueue)")
    j.add_argument("--queue")
    j.add_argument("--account")
    j.add_argument("--cores", type=int, help="cores per job")
    j.add_argument("--memory", help="memory per job (or per worker for processes), e.g. 32GB")
    j.add_argument("--walltime", help="e.g. 01:00:00")
    j.add_argument("--gpus", type=int, help="GPUs per job (one worker per GPU)")
    j.add_argument("--jobs", type=int, help="number of jobs to submit")
    a = p.add_argument_group("job arrays (no scheduler)")
    a.add_argument(
        "--array-index",
        type=int,
        dest="array_index",
        help="this task's index (default: $SLURM_ARRAY_TASK_ID)",
    )
    a.add_argument(
        "--array-size",
        type=int,
        dest="array_size",
        help="number of tasks in the array (default: from SLURM)",
    )
    add_quiet(p)
    return p


_SCHED_FLAGS = (
    "workers",
    "threads_per_worker",
    "host",
    "interface",
    "dashboard_address",
    "queue",
    "account",
    "cores",
    "memory",
    "walltime",
    "gpus",
    "jobs",
)


def run(args: argparse.Namespace) -> int:
    from ..batch import load_manifest, run_batch

    manifest = load_manifest(args.manifest)
    if args.device:
        manifest.device = args.device
    if args.task_mib:
        manifest.task_mib = args.task_mib
    summary = run_batch(
        manifest,
        args.output,
        scheduler=args.scheduler,
        scheduler_options={k: getattr(args, k) for k in _SCHED_FLAGS},
        array_index=args.array_index,
        array_size=args.array_size,
        overwrite=args.overwrite,
        quiet=args.quiet,
    )
    print(summary.text())
    if summary.path:
        print(f"summary: {summary.path}")
    if not summary.ok:
        print(f"eelsgpu batch: {len(summary.failed)} file(s) failed", file=sys.stderr)
        return 1
    return 0
