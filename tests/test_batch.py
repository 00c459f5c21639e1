"""Batch runs: manifests, resumability after SIGKILL, failing files, job arrays, fault tolerance
on a dask.distributed cluster, and the srun mode (the schedulers themselves:
tests/engine/test_schedulers.py).

The truth in these tests is the same pipeline computed in memory (NumPy, no store, no scheduler):
a batch run must give exactly those numbers, and a run that was killed and resumed must give the
same bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from eelsgpu import batch, engine
from eelsgpu._xp import array_namespace
from eelsgpu.errors import InputError

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
OUTPUTS = [
    engine.Output("total", units="counts"),
    engine.Output("log_first_harmonic", units=""),
    engine.Output("smooth", units="counts", axis="energy"),
]


def _kernel(block, energy_eV, delay_s=0.0, scale=1.0, release_file=None):
    """A stand-in pipeline kernel: rfft, a log and an irfft per spectrum (like Fourier-log).
    ``release_file``: each block waits until that file exists (at most 120 s), so a test can hold
    a run in progress for as long as it needs, whatever the machine's load."""
    xp = array_namespace(block)
    if delay_s:
        time.sleep(delay_s)
    if release_file:
        deadline = time.time() + 120
        while not os.path.exists(release_file) and time.time() < deadline:
            time.sleep(0.02)
    n = block.shape[-1]
    f = xp.fft.rfft(block, axis=-1)
    k = xp.arange(f.shape[-1], dtype=block.dtype)
    damp = xp.exp(-((k / (0.25 * n)) ** 2))
    return {
        "total": xp.sum(block, axis=-1) * scale,
        "log_first_harmonic": xp.log(xp.abs(f[:, 1]) + 1.0),
        "smooth": xp.fft.irfft(f * xp.astype(damp, f.dtype), n=n, axis=-1),
    }


def slow_pipeline(si, device="auto", delay_s=0.0, scale=1.0, release_file=None):
    """Registered as a test pipeline (and loadable as ``test_batch:slow_pipeline``)."""
    kw = {"release_file": release_file} if release_file else {}
    return engine.apply_kernel(
        engine.BlockKernel(_kernel, OUTPUTS), si, device=device, delay_s=delay_s, scale=scale, **kw
    )


def _truth(si, scale=1.0):
    """The same computation on the whole cube with NumPy."""
    out = _kernel(np.asarray(si.values, dtype=np.float32).reshape(-1, si.shape[-1]), None, 0, scale)
    nav = si.shape[:-1]
    return {k: np.asarray(v).reshape(*nav, *np.shape(v)[1:]) for k, v in out.items()}


def _cube(shape, seed):
    rng = np.random.default_rng(seed)
    e = np.arange(shape[-1]) * 0.5 - 5.0
    scale = rng.uniform(0.5, 2.0, shape[:-1])[..., None]
    data = scale * (np.exp(-0.5 * (e / 1.0) ** 2) * 100 + 5 * np.exp(-e.clip(0) / 20))
    return data.astype(np.float32), e


def _write_input(path, shape=(12, 10, 64), seed=0, chunks=(4, 4)):
    from eelsgpu.io import write_store
    from eelsgpu.model import spectrum_image

    data, e = _cube(shape, seed)
    si = spectrum_image(data, e, beam_energy_keV=200.0, collection_angle_mrad=10.0, chunks=chunks)
    write_store(si, path)
    return si


def _manifest(
    tmp_path, inputs, pipeline="test_batch:slow_pipeline", params=None, fmt="yaml", **extra
):
    doc = {"pipeline": pipeline, "inputs": inputs, "parameters": params or {}, "device": "cpu"}
    doc.update(extra)
    if fmt == "toml":
        lines = [f'pipeline = "{pipeline}"', f"inputs = {json.dumps(inputs)}", 'device = "cpu"']
        lines += ["[parameters]"] + [f"{k} = {json.dumps(v)}" for k, v in (params or {}).items()]
        p = tmp_path / "run.toml"
        p.write_text("\n".join(lines) + "\n")
    else:
        import yaml

        p = tmp_path / "run.yaml"
        p.write_text(yaml.safe_dump(doc))
    return p


def _arrays(store):
    """Every variable's bytes, for byte-identity checks."""
    ds = xr.open_zarr(store, consolidated=False)
    return {k: np.asarray(ds[k].values).tobytes() for k in ds.data_vars}


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(autouse=True)
def _registered():
    batch.register_pipeline("slow-test", slow_pipeline)
    yield
    batch.PIPELINES.pop("slow-test", None)


# --------------------------------------------------------------------------- manifests
@pytest.mark.parametrize("fmt", ["yaml", "toml"])
def test_manifest_formats_and_results_match_in_memory_truth(tmp_path, fmt):
    """YAML and TOML manifests give the same run; outputs equal the in-memory NumPy computation
    (truth), carry the input's coordinates and attributes and every run parameter."""
    si = _write_input(tmp_path / "in" / "a.zarr")
    m = batch.load_manifest(_manifest(tmp_path, ["in/*.zarr"], "slow-test", {"scale": 2.0}, fmt))
    assert m.parameters == {"scale": 2.0} and m.pipeline == "slow-test"
    summary = batch.run_batch(m, tmp_path / "out", quiet=True)
    assert summary.ok, summary.text()
    out = xr.open_zarr(tmp_path / "out" / "a.zarr", consolidated=False)
    truth = _truth(si, scale=2.0)
    for k, v in truth.items():
        np.testing.assert_allclose(out[k].values, v, rtol=1e-5, atol=1e-3)
    assert out.attrs["eelsgpu_method"] == "slow-test"
    assert out.attrs["eelsgpu_parameters"] == {"device": "cpu", "scale": 2.0}
    assert out.attrs["eelsgpu_input"].endswith("a.zarr")
    assert out.attrs["beam_energy_keV"] == 200.0
    np.testing.assert_array_equal(out["energy"].values, si["energy"].values)
    assert out["total"].attrs["units"] == "counts"
    saved = json.loads((tmp_path / "out" / "batch-summary.json").read_text())
    assert saved["counts"]["written"] == 1
    # a finished file is skipped on the next run
    again = batch.run_batch(m, tmp_path / "out", quiet=True)
    assert [f.status for f in again.files] == ["skipped"]


def test_manifest_errors_name_the_problem(tmp_path):
    """A manifest with an unknown key or no inputs is refused with the key named."""
    p = tmp_path / "bad.yaml"
    p.write_text("pipeline: thickness\ninputs: [a.zarr]\nparamters: {}\n")
    with pytest.raises(InputError, match="paramters"):
        batch.load_manifest(p)
    p.write_text("pipeline: thickness\n")
    with pytest.raises(InputError, match="inputs"):
        batch.load_manifest(p)
    with pytest.raises(InputError, match="unknown pipeline"):
        batch.get_pipeline("no-such-pipeline")


def test_failing_files_are_reported_and_the_others_finish(tmp_path):
    """A corrupt store, a cube without an energy axis and a glob matching nothing are reported
    with their errors in the summary (printed and JSON); the good file is written."""
    _write_input(tmp_path / "in" / "good.zarr")
    bad = tmp_path / "in" / "corrupt.zarr"
    bad.mkdir(parents=True)
    (bad / "zarr.json").write_text("{not json")
    shape = tmp_path / "in" / "shape.zarr"
    xr.Dataset({"signal": (("a", "b"), np.ones((3, 4), np.float32))}).to_zarr(
        shape, zarr_format=3, consolidated=False
    )
    mpath = _manifest(tmp_path, ["in/*.zarr", "missing/*.dm4"], "slow-test")
    from eelsgpu.cli import main

    rc = main(["batch", str(mpath), "-o", str(tmp_path / "out"), "--quiet"])
    assert rc == 1
    saved = json.loads((tmp_path / "out" / "batch-summary.json").read_text())
    by_name = {Path(f["input"]).name: f for f in saved["files"]}
    assert by_name["good.zarr"]["status"] == "written"
    assert by_name["corrupt.zarr"]["status"] == "failed"
    assert "corrupt.zarr" in by_name["corrupt.zarr"]["error"]
    assert by_name["shape.zarr"]["status"] == "failed" and by_name["shape.zarr"]["error"]
    assert any("missing/*.dm4" in e for e in saved["errors"])
    assert (tmp_path / "out" / "good.zarr").is_dir()


def test_job_array_tasks_split_the_files(tmp_path, monkeypatch):
    """Two array tasks (one by flag, one by SLURM_ARRAY_TASK_ID) take disjoint halves of the
    files and together write all of them, each with its own summary."""
    for i in range(3):
        _write_input(tmp_path / "in" / f"f{i}.zarr", shape=(4, 4, 32), seed=i)
    m = batch.load_manifest(_manifest(tmp_path, ["in/*.zarr"], "slow-test"))
    s0 = batch.run_batch(m, tmp_path / "out", array_index=0, array_size=2, quiet=True)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    s1 = batch.run_batch(m, tmp_path / "out", quiet=True)
    names0 = {Path(f.input).name for f in s0.files}
    names1 = {Path(f.input).name for f in s1.files}
    assert names0 == {"f0.zarr", "f2.zarr"} and names1 == {"f1.zarr"}
    assert (tmp_path / "out" / "batch-summary-array0of2.json").is_file()
    assert (tmp_path / "out" / "batch-summary-array1of2.json").is_file()
    assert all((tmp_path / "out" / f"f{i}.zarr").is_dir() for i in range(3))


# --------------------------------------------------------------------------- resumability
def test_sigkill_mid_run_then_rerun_gives_identical_bytes(tmp_path):
    """A batch run killed with SIGKILL mid-run and started again with the same command finishes
    the rest; its arrays are byte-identical to those of an uninterrupted run (truth)."""
    _write_input(tmp_path / "in" / "a.zarr", shape=(24, 24, 64), chunks=(4, 4))  # 36 blocks
    # task_mib: one storage chunk per task here, so the run has 36 blocks to be killed among
    mpath = _manifest(tmp_path, ["in/a.zarr"], params={"delay_s": 0.15}, task_mib=0.01)
    cmd = [sys.executable, "-m", "eelsgpu", "batch", str(mpath), "--quiet"]
    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["-o", str(out)], env=_env(), cwd=tmp_path)
    done_dir = out / ".a.zarr.eelsgpu-run" / "done"
    deadline = time.time() + 60
    while time.time() < deadline:
        if done_dir.is_dir() and len(os.listdir(done_dir)) >= 6:
            break
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed (rc {proc.returncode})")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_done = len(os.listdir(done_dir))
    assert 6 <= n_done < 36, n_done
    assert not (out / "a.zarr").exists()  # nothing that opens as if whole
    rerun = subprocess.run(cmd + ["-o", str(out)], env=_env(), cwd=tmp_path, capture_output=True)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    assert "resumed" in rerun.stdout.decode()
    clean = tmp_path / "clean"
    m = batch.load_manifest(mpath)
    m.parameters = {"delay_s": 0.0}  # the delay only slows the kernel; same numbers
    batch.run_batch(m, clean, quiet=True)
    a, b = _arrays(out / "a.zarr"), _arrays(clean / "a.zarr")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == b[k], k


def test_worker_killed_on_local_cluster_results_complete_and_identical(tmp_path, monkeypatch):
    """On a dask.distributed LocalCluster with 2 worker processes, one worker is killed mid-run;
    the run completes and its arrays equal (bytes) those of a clean threaded run (truth)."""
    distributed = pytest.importorskip("distributed")
    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])  # workers import this module
    from eelsgpu.io import open_store

    src = tmp_path / "a.zarr"
    _write_input(src, shape=(16, 16, 64), chunks=(4, 4))  # 16 blocks
    si = open_store(src)["signal"]
    clean = engine.run_to_store(slow_pipeline(si, device="cpu"), tmp_path / "clean.zarr")
    assert clean.blocks_total == 16
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            memory_limit="1GiB",
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        ds = slow_pipeline(si, device="cpu", delay_s=0.2)
        done_dir = tmp_path / ".faulty.zarr.eelsgpu-run" / "done"

        def killer():
            deadline = time.time() + 30
            while time.time() < deadline:
                if done_dir.is_dir() and len(os.listdir(done_dir)) >= 3:
                    os.kill(victim, signal.SIGKILL)
                    return
                time.sleep(0.01)

        import threading

        t = threading.Thread(target=killer)
        t.start()
        res = engine.run_to_store(ds, tmp_path / "faulty.zarr", scheduler=client)
        t.join()
        assert res.blocks_computed == 16
        assert victim not in client.run(os.getpid).values()  # it really died
    a, b = _arrays(tmp_path / "faulty.zarr"), _arrays(tmp_path / "clean.zarr")
    for k in a:
        assert a[k] == b[k], k


def test_srun_mode_runs_through_slurm_runner_on_localhost(tmp_path):
    """`srun -n 3 eelsgpu batch ... --scheduler slurm` without SLURM itself: three processes with
    srun's environment become scheduler, client and worker (dask-jobqueue's SLURMRunner), all
    exit 0, the scheduler listens on 127.0.0.1 (one node), and the results equal the in-memory
    truth."""
    pytest.importorskip("dask_jobqueue")
    si = _write_input(tmp_path / "in" / "a.zarr", shape=(8, 8, 32))
    mpath = _manifest(tmp_path, ["in/a.zarr"])
    out = tmp_path / "out"
    procs = []
    for rank in range(3):
        env = _env()
        env.update(SLURM_PROCID=str(rank), SLURM_NTASKS="3", SLURM_JOB_ID="42", SLURM_NNODES="1")
        cmd = [sys.executable, "-m", "eelsgpu", "batch", str(mpath), "-o", str(out)]
        procs.append(
            subprocess.Popen(
                cmd + ["--scheduler", "slurm", "--quiet"],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    logs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], logs
    assert "Scheduler at:     tcp://127.0.0.1:" in logs[0], logs[0][-2000:]
    assert "1 written" in logs[1]
    res = xr.open_zarr(out / "a.zarr", consolidated=False)
    np.testing.assert_allclose(res["total"].values, _truth(si)["total"], rtol=1e-5)


# --------------------------------------------------------------------------- issue 12: no mixing
def test_same_stems_get_their_own_outputs(tmp_path):
    """Truth: day1/scan.zarr and day2/scan.zarr hold different cubes; each gets its own output
    (day1-scan.zarr, day2-scan.zarr), equal to its own in-memory result (before: the second was
    'skipped' and never computed)."""
    a = _write_input(tmp_path / "day1" / "scan.zarr", seed=1)
    b = _write_input(tmp_path / "day2" / "scan.zarr", seed=2)
    _write_input(tmp_path / "day2" / "other.zarr", seed=3)
    m = batch.load_manifest(_manifest(tmp_path, ["day*/*.zarr"], "slow-test"))
    summary = batch.run_batch(m, tmp_path / "out", quiet=True)
    assert summary.ok and [f.status for f in summary.files] == ["written"] * 3
    assert sorted(os.listdir(tmp_path / "out")) == [
        "batch-summary.json",
        "day1-scan.zarr",
        "day2-scan.zarr",
        "other.zarr",
    ]
    for si, name in ((a, "day1-scan.zarr"), (b, "day2-scan.zarr")):
        out = xr.open_zarr(tmp_path / "out" / name, consolidated=False)
        np.testing.assert_allclose(out["total"].values, _truth(si)["total"], rtol=1e-5)
    saved = json.loads((tmp_path / "out" / "batch-summary.json").read_text())
    assert saved["path"] == str(tmp_path / "out" / "batch-summary.json")
    assert sorted(Path(f["output"]).name for f in saved["files"]) == [
        "day1-scan.zarr",
        "day2-scan.zarr",
        "other.zarr",
    ]


def test_other_parameters_neither_resume_nor_keep_a_store(tmp_path):
    """Truth: a store made with scale 2 must stay scale 2 until --overwrite recomputes it with
    scale 3 (before: a rerun with changed parameters silently kept the old results); the refusal
    says what differs; a partial store of another job is discarded, not mixed in."""
    si = _write_input(tmp_path / "in" / "a.zarr")
    m2 = batch.load_manifest(_manifest(tmp_path, ["in/a.zarr"], "slow-test", {"scale": 2.0}))
    assert batch.run_batch(m2, tmp_path / "out", quiet=True).ok
    store = tmp_path / "out" / "a.zarr"
    before = _arrays(store)
    m3 = batch.load_manifest(_manifest(tmp_path, ["in/a.zarr"], "slow-test", {"scale": 3.0}))
    s = batch.run_batch(m3, tmp_path / "out", quiet=True)
    (f,) = s.files
    assert f.status == "failed" and "parameters.scale 2.0 there, 3.0 here" in f.error
    assert "--overwrite" in f.error and _arrays(store) == before
    s = batch.run_batch(m3, tmp_path / "out", quiet=True, overwrite=True)
    assert s.files[0].status == "written"
    out = xr.open_zarr(store, consolidated=False)
    np.testing.assert_allclose(out["total"].values, _truth(si, 3.0)["total"], rtol=1e-5)
    assert out.attrs["eelsgpu_job"]["parameters"] == {"scale": 3.0}
    # the same job again: skipped
    assert batch.run_batch(m3, tmp_path / "out", quiet=True).files[0].status == "skipped"


@pytest.mark.parametrize(
    "layout, message",
    [
        ("../victim", "must stay inside OUTDIR"),
        ("/tmp/victim.zarr", "relative path inside OUTDIR"),
        ("{stem.__class__.__mro__}.zarr", r"unknown field \{stem\.__class__\.__mro__\}"),
        ("{stem!r}.zarr", "takes no conversion"),
        ("{user}.zarr", r"unknown field \{user\}"),
        ("result.zarr", r"the same output result\.zarr; put \{stem\} or \{index\} in it"),
    ],
)
def test_bad_layouts_are_refused_before_anything_runs(tmp_path, layout, message):
    """Truth: a folder outside OUTDIR with a file in it must be intact and OUTDIR not made
    (before: `../victim` with --overwrite deleted it; attribute access was evaluated)."""
    _write_input(tmp_path / "in" / "a.zarr", shape=(4, 4, 32))
    _write_input(tmp_path / "in2" / "a.zarr", shape=(4, 4, 32))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    m = batch.load_manifest(
        _manifest(tmp_path, ["in/a.zarr", "in2/a.zarr"], "slow-test", output={"layout": layout})
    )
    with pytest.raises(InputError, match=message):
        batch.run_batch(m, tmp_path / "out", quiet=True, overwrite=True)
    assert (victim / "keep.txt").read_text() == "precious"
    assert not (tmp_path / "out").exists()


def test_an_input_inside_outdir_is_never_its_own_output(tmp_path):
    """Truth: an input whose output would be itself is reported failed and stays intact, with and
    without --overwrite (before: skipped, and deleted with --overwrite)."""
    _write_input(tmp_path / "out" / "a.zarr", shape=(4, 4, 32))
    before = _arrays(tmp_path / "out" / "a.zarr")
    m = batch.load_manifest(_manifest(tmp_path, ["out/a.zarr"], "slow-test"))
    for overwrite in (False, True):
        (f,) = batch.run_batch(m, tmp_path / "out", quiet=True, overwrite=overwrite).files
        assert f.status == "failed" and "is the input" in f.error
    assert _arrays(tmp_path / "out" / "a.zarr") == before


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"pipeline": "thicknes"}, "unknown pipeline 'thicknes'"),
        (
            {"parameters": {"scael": 2.0}},
            "takes no parameter 'scael'; it takes delay_s, release_file, scale",
        ),
        ({"parameters": {"device": "cpu"}}, "top-level 'device:'"),
        ({"inputs": []}, "'inputs:' must be a non-empty list"),
        ({"inputs": ["nothing/*.zarr"]}, "no input file"),
        ({"device": "tpu"}, "device must be one of auto, cpu, gpu"),
        ({"output": {"codec": "gzip"}}, "codec must be one of lz4, zstd"),
        ({"output": {"layuot": "x"}}, "unknown 'output:' key"),
        ({"open": {"offset": 1}}, "unknown 'open:' option"),
        ({"task_mib": 0}, "task_mib must be a positive number in MiB"),
    ],
)
def test_manifest_mistakes_are_found_before_anything_starts(tmp_path, doc, message):
    """Truth: each mistake in the manifest; the run stops with it before OUTDIR is made (before:
    found once per file after start-up, or never)."""
    import yaml

    _write_input(tmp_path / "in" / "a.zarr", shape=(4, 4, 32))
    full = {"pipeline": "test_batch:slow_pipeline", "inputs": ["in/a.zarr"], "device": "cpu"}
    full.update(doc)
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(full))
    with pytest.raises(InputError, match=message):
        batch.run_batch(batch.load_manifest(p), tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="--array-size must be a whole number >= 1"):
        batch.array_share(3, 0, 0)


def test_concurrent_runs_on_one_outdir_are_refused(tmp_path):
    """Truth: a second batch run on an OUTDIR that a run is using stops at once with one line and
    exit 2; the first finishes and its stores equal the in-memory results (before: both reported
    every file failed and left orphan partial stores). Job-array tasks share an OUTDIR."""
    si = _write_input(tmp_path / "in" / "a.zarr", shape=(16, 16, 64), chunks=(4, 4))
    # the first run's blocks wait for a file the test writes once the second has been refused
    # (before: a fixed delay, which a loaded machine could outlast before the second started)
    release = tmp_path / "release"
    params = {"release_file": str(release)}
    mpath = _manifest(tmp_path, ["in/a.zarr"], params=params, task_mib=0.01)
    cmd = [sys.executable, "-m", "eelsgpu", "batch", str(mpath), "-o", "out", "--quiet"]
    first = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "out" / ".a.zarr.eelsgpu-run"
    deadline = time.time() + 60
    while not run_dir.is_dir():
        assert first.poll() is None and time.time() < deadline, first.stderr.read()
        time.sleep(0.02)
    try:
        second = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True)
    finally:
        release.touch()
    assert second.returncode == 2
    assert second.stderr.strip().startswith("eelsgpu batch: error: out: another eelsgpu run")
    assert first.wait(timeout=120) == 0, first.stderr.read()
    out = xr.open_zarr(tmp_path / "out" / "a.zarr", consolidated=False)
    np.testing.assert_allclose(out["total"].values, _truth(si)["total"], rtol=1e-5)
    assert [p for p in os.listdir(tmp_path / "out") if p.startswith(".")] == []
    m = batch.load_manifest(mpath)
    m.parameters = {}
    from eelsgpu.engine.outputs import OutputLock

    with OutputLock(
        tmp_path / "o2", shared=True, lock_file=tmp_path / "o2" / ".eelsgpu-batch.lock"
    ):
        s = batch.run_batch(m, tmp_path / "o2", array_index=0, array_size=2, quiet=True)
        assert s.ok  # another array task holds the folder too: both go on
        with pytest.raises(InputError, match="another eelsgpu run"):
            batch.run_batch(m, tmp_path / "o2", quiet=True)


def test_a_damaged_chunk_fails_its_file_and_the_batch_goes_on(tmp_path):
    """Truth: a chunk file of one input cut in half (before: a segfault could kill the whole
    batch, no summary); the file is reported with the chunk named, the others are written."""
    _write_input(tmp_path / "in" / "a.zarr", shape=(8, 8, 64))
    b = _write_input(tmp_path / "in" / "b.zarr", shape=(8, 8, 64), seed=4)
    chunk = tmp_path / "in" / "a.zarr" / "signal" / "c" / "1" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:100])
    m = batch.load_manifest(_manifest(tmp_path, ["in/*.zarr"], "slow-test"))
    s = batch.run_batch(m, tmp_path / "out", quiet=True)
    by = {Path(f.input).name: f for f in s.files}
    assert by["a.zarr"].status == "failed"
    assert "a.zarr: chunk signal/c/1/0/0 is damaged" in by["a.zarr"].error
    assert by["b.zarr"].status == "written"
    out = xr.open_zarr(tmp_path / "out" / "b.zarr", consolidated=False)
    np.testing.assert_allclose(out["total"].values, _truth(b)["total"], rtol=1e-5)
