"""Outputs that never destroy data (issue 12, items 1 and 4): what --overwrite may replace, outputs
that are, hold or sit inside an input, one writer per output (a lock a killed run does not leave
stuck), the leftovers of killed runs.

Truth: files and stores the test makes, whose bytes must be exactly as before after every refused
run; a replaced store must hold the new values (the in-memory computation).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from eelsgpu import engine
from eelsgpu.engine.outputs import OutputLock, check_output, is_eelsgpu_store, leftovers
from eelsgpu.errors import InputError
from eelsgpu.io import open_store, write_store
from eelsgpu.model import spectrum_image

ROOT = Path(__file__).resolve().parents[2]


def _si(n=6, channels=64, value=1.0, source=None):
    e = np.arange(channels) * 0.1 - 1.0
    data = np.full((n, n, channels), value, np.float32)
    return spectrum_image(data, e, chunks=(3, 3), source=source)


def _tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def _env():
    return dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )


# --------------------------------------------------------------------------- what may be replaced
def test_overwrite_replaces_only_eelsgpu_stores(tmp_path):
    """--overwrite (overwrite=True) replaces a store eelsgpu wrote, with the new values; a folder
    of other files, a file, a zarr store another program wrote and an eelsgpu store holding a
    foreign file are refused, byte for byte intact."""
    store = write_store(_si(value=1.0), tmp_path / "r.zarr")
    assert is_eelsgpu_store(store)
    write_store(_si(value=2.0), store, overwrite=True)
    assert float(open_store(store)["signal"].max()) == 2.0

    folder = tmp_path / "myresults"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    afile = tmp_path / "scan.dm4"
    afile.write_bytes(b"DM4 bytes")
    foreign = tmp_path / "other.zarr"
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_zarr(foreign, zarr_format=3, consolidated=False)
    mixed = write_store(_si(), tmp_path / "mixed.zarr")
    (mixed / "README.txt").write_text("mine")
    cases = {
        folder: "no zarr.json",
        afile: "not a folder",
        foreign: "a zarr store that eelsgpu did not write",
        mixed: "it also holds 'README.txt'",
    }
    before = {p: _tree(p) if p.is_dir() else p.read_bytes() for p in cases}
    for path, why in cases.items():
        with pytest.raises(InputError, match=f"not an eelsgpu result store \\({why}"):
            write_store(_si(value=3.0), path, overwrite=True)
        with pytest.raises(InputError, match="already exists"):
            write_store(_si(value=3.0), path)
        assert (_tree(path) if path.is_dir() else path.read_bytes()) == before[path], path


def test_output_that_is_holds_or_sits_inside_an_input_is_refused(tmp_path):
    """The input itself (by name or through its ``source``), the folder holding it and a path
    inside it are refused, with and without overwrite; the input is byte for byte intact."""
    src = write_store(_si(value=5.0), tmp_path / "project" / "scan.zarr")
    before = _tree(tmp_path)
    from eelsgpu.io import open as eopen

    si = eopen(src)  # its source attribute names the store
    for out, how in [
        (src, "is the input"),
        (tmp_path / "project", "contains the input"),
        (tmp_path, "contains the input"),
        (src / "t.zarr", "lies inside the input"),
    ]:
        for overwrite in (False, True):
            with pytest.raises(InputError, match=how):
                write_store(si.copy(data=si.data * 2), out, overwrite=overwrite)
            with pytest.raises(InputError, match=how):
                check_output(out, [src], overwrite=overwrite)
    assert _tree(tmp_path) == before
    with pytest.raises(InputError, match="inside the zarr store"):  # any store, not only inputs
        check_output(src / "signal" / "x.zarr", [])


# --------------------------------------------------------------------------- one writer at a time
def test_second_writer_is_refused_and_a_killed_holder_frees_the_lock(tmp_path):
    """While a writer holds an output, another is refused naming the holder's process; the lock
    of a process killed with SIGKILL is gone at once (the OS drops it), so the next run writes."""
    target = tmp_path / "r.zarr"
    with OutputLock(target):
        with pytest.raises(InputError, match=f"another eelsgpu run \\(process {os.getpid()} on"):
            write_store(_si(), target)
    assert not target.exists()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from eelsgpu.engine.outputs import OutputLock; "
            f"lock = OutputLock({str(target)!r}); print('held', flush=True); time.sleep(60)",
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=f"process {holder.pid} on"):
            write_store(_si(), target)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    write_store(_si(value=4.0), target)
    assert float(open_store(target)["signal"].min()) == 4.0
    assert sorted(os.listdir(tmp_path)) == ["r.zarr"]  # no lock file, no partial left


def test_concurrent_cli_writers_one_wins_the_other_is_refused(tmp_path):
    """A command run while another writes the same output exits 2 with one line, and the store
    in place is the first run's, whole."""
    target = tmp_path / "c.zarr"
    np.save(tmp_path / "a.npy", np.ones((8, 8, 64), np.float32))
    with OutputLock(target):  # as another process writing it would hold it
        res = subprocess.run(
            [sys.executable, "-m", "eelsgpu", "convert", "a.npy", "-o", "c.zarr", "-q"]
            + ["--offset", "-1", "--dispersion", "0.1"],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
        )
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "another eelsgpu run" in res.stderr
    assert not target.exists()


# --------------------------------------------------------------------------- killed runs
def _start_convert(tmp_path: Path, out: str) -> subprocess.Popen:
    np.save(tmp_path / "big.npy", np.random.default_rng(0).random((96, 96, 1024), np.float32))
    cmd = [sys.executable, "-m", "eelsgpu", "convert", "big.npy", "-o", out, "-q"]
    cmd += ["--offset", "-5", "--dispersion", "0.05", "--chunks", "8,8"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stderr=subprocess.PIPE, text=True)
    partial = tmp_path / f".{out}.partial" / "signal" / "c"
    deadline = time.time() + 60
    while not partial.is_dir():
        if proc.poll() is not None or time.time() > deadline:
            pytest.fail(f"convert ended before it could be stopped: {proc.stderr.read()[-500:]}")
        time.sleep(0.01)
    return proc


def test_sigkilled_convert_leftovers_are_cleaned_by_the_next_run(tmp_path):
    """SIGKILL mid-write leaves the hidden partial store (no process can clean up after
    SIGKILL); the next run on the same output removes it and writes a whole store, equal to the
    input; nothing hidden is left beside it."""
    proc = _start_convert(tmp_path, "big.zarr")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert leftovers(tmp_path / "big.zarr") and not (tmp_path / "big.zarr").exists()
    res = subprocess.run(
        [sys.executable, "-m", "eelsgpu", "convert", "big.npy", "-o", "big.zarr", "-q"]
        + ["--offset", "-5", "--dispersion", "0.05"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert leftovers(tmp_path / "big.zarr") == []
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith(".")) == []
    np.testing.assert_array_equal(
        open_store(tmp_path / "big.zarr")["signal"].values, np.load(tmp_path / "big.npy")
    )


def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    """SIGTERM (a batch system's time limit) ends the command with exit 130 and one line, and
    the partial store is removed by the command itself."""
    proc = _start_convert(tmp_path, "t.zarr")
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "eelsgpu convert: interrupted"
    assert leftovers(tmp_path / "t.zarr") == [] and not (tmp_path / "t.zarr").exists()
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith(".")) == []


def test_resumable_run_replaces_only_after_it_is_whole(tmp_path, stand_in):
    """run_to_store with overwrite: the old store stays whole until the new one is complete (a
    failing run leaves it as it was), then holds the new values."""
    si = stand_in.image(chunks=(4, 6))
    engine.run_to_store(engine.apply_kernel(stand_in.decl, si, device="cpu"), tmp_path / "r.zarr")
    before = _tree(tmp_path / "r.zarr")
    poison = float(si.values[9, 0, 0])
    failing = engine.apply_kernel(stand_in.decl, si, device="cpu", fail_on=poison, scale=2.0)
    with pytest.raises(RuntimeError, match="injected"):
        engine.run_to_store(failing, tmp_path / "r.zarr", overwrite=True, scheduler="synchronous")
    assert _tree(tmp_path / "r.zarr") == before
    new = engine.apply_kernel(stand_in.decl, si, device="cpu", scale=2.0)
    engine.run_to_store(new, tmp_path / "r.zarr", overwrite=True)
    np.testing.assert_allclose(
        open_store(tmp_path / "r.zarr")["total"].values,
        stand_in.truth(si, scale=2.0)["total"],
        rtol=1e-5,
    )
