"""Every mistake on the command line is one line naming the file or option and the problem, exit
status 2, with nothing written (issue 12, items 1, 7, 8 and 9); ``--debug`` shows the traceback.

Truth: the options and files each case gives; each case checks that no output appeared and that
the input's bytes are unchanged. Exit codes that matter run the command in a subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eelsgpu.cli import main
from eelsgpu.io import write_store
from eelsgpu.model import spectrum_image

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lowloss(tmp_path_factory):
    """A small low-loss store: ZLP at 0 eV (0.5 eV wide), a plasmon at 15 eV, counts."""
    path = tmp_path_factory.mktemp("in") / "scan.zarr"
    e = np.arange(512) * 0.05 - 5.0
    spec = 1e4 * np.exp(-0.5 * (e / 0.2) ** 2) + 300 * np.exp(-0.5 * ((e - 15) / 2) ** 2) + 5
    data = np.broadcast_to(spec, (4, 4, e.size)).astype(np.float32)
    si = spectrum_image(data, e, beam_energy_keV=200.0, collection_angle_mrad=10.0, chunks=(2, 2))
    write_store(si, path)
    return path


def _tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


BAD_OPTIONS = [
    (["thickness", "--density", "-2.7"], "--density: must be a positive number in g/cm3"),
    (["thickness", "--density", "2.7", "--beam-energy", "0"], "--beam-energy: must be a positive"),
    (["thickness", "--zeff", "-13"], "--zeff: must be a number (at least 1"),
    (
        ["thickness", "--mean-free-path", "-100"],
        "--mean-free-path: must be a positive number in nm",
    ),
    (["thickness", "--mean-free-path", "0"], "--mean-free-path: must be a positive"),
    (
        ["thickness", "--collection-angle", "-10"],
        "--collection-angle: must be a positive number in mrad",
    ),
    (["thickness", "--search", "nan", "5"], "--search: must be a number in eV"),
    (["deconvolve", "--fwhm", "0"], "--fwhm: must be a positive number in eV"),
    (["kk", "--metal", "--iterations", "-1"], "--iterations: must be a whole number (at least 0)"),
    (["kk", "--metal", "--collection-angle", "0"], "--collection-angle: must be a positive"),
    (["kk", "--metal", "--low-energy-cutoff", "-1"], "--low-energy-cutoff: must be a number in eV"),
    (["maps", "--window", "a=1:2", "--peak-channels", "1"], "--peak-channels: must be a whole"),
    (["cluster", "-k", "0"], "-k/--clusters: must be a whole number (at least 1)"),
    (["decompose", "-n", "1.5"], "-n/--n-components: must be a whole number (at least 1)"),
    (["thickness", "--dispersion", "abc"], "--dispersion: must be a number in eV, not 'abc'"),
]


@pytest.mark.parametrize("argv, message", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_numbers_are_one_line_before_anything_runs(tmp_path, lowloss, capsys, argv, message):
    """A number out of range (with its unit in the message) is refused while parsing: exit 2,
    one line, no output."""
    before = _tree(lowloss)
    out = tmp_path / "out.zarr"
    with pytest.raises(SystemExit) as stop:
        main([argv[0], str(lowloss), "-o", str(out), *argv[1:]])
    assert stop.value.code == 2
    line = _one_line(capsys)
    assert line.startswith(f"eelsgpu {argv[0]}: error: argument ") and message in line, line
    assert not out.exists() and _tree(lowloss) == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--chunks", "0,0"], "--chunks must be one or two positive whole numbers"),
        (["--chunks", "abc"], "--chunks must be one or two positive whole numbers"),
        (["--device", "gpu"], "device='gpu' was asked for but no GPU is usable"),
        (["--dispersion", "0"], "dispersion_eV must be a non-zero number"),
        (["--png", "{file}/t.png"], "is a file, not a folder"),
    ],
)
def test_runtime_mistakes_are_one_line(tmp_path, lowloss, capsys, extra, message):
    """--chunks, a GPU that is not there, a PNG path that cannot be written: one line, exit 2,
    found before the store is written."""
    from eelsgpu.engine.device import gpu_status

    if "gpu" in extra and gpu_status().usable:
        pytest.skip("a GPU is usable here")
    afile = tmp_path / "afile"
    afile.write_text("x")
    extra = [e.replace("{file}", str(afile)) for e in extra]
    out = tmp_path / "t.zarr"
    rc = main(["thickness", str(lowloss), "-o", str(out), "--mean-free-path", "100", "-q", *extra])
    assert rc == 2
    line = _one_line(capsys)
    assert line.startswith("eelsgpu thickness: error: ") and message in line, line
    assert not out.exists()


def test_output_that_would_destroy_data_is_refused(tmp_path, lowloss, capsys):
    """--overwrite on a folder of other files, the input as output, the folder holding the input
    (from inside it, as `-o ..`) and an output inside the input: refused, all bytes intact."""
    project = tmp_path / "project"
    (project / "run1").mkdir(parents=True)
    src = project / "scan.zarr"
    import shutil

    shutil.copytree(lowloss, src)
    (project / "notes.txt").write_text("precious")
    before = _tree(tmp_path)
    cases = [
        (["thickness", str(src), "-o", str(project / "run1"), "--overwrite"], "not an eelsgpu"),
        (["thickness", str(src), "-o", str(src), "--overwrite"], "is the input"),
        (["thickness", "../scan.zarr", "-o", "..", "--overwrite"], "contains the input"),
        (["thickness", str(src), "-o", str(src / "t.zarr")], "lies inside the input"),
        (["convert", str(src), "-o", str(src), "--overwrite"], "is the input"),
    ]
    cwd = os.getcwd()
    os.chdir(project / "run1")
    try:
        for argv, message in cases:
            assert main([*argv, "-q"]) == 2
            line = _one_line(capsys)
            assert message in line, line
    finally:
        os.chdir(cwd)
    assert _tree(tmp_path) == before


def test_exit_code_and_debug_in_a_subprocess(tmp_path, lowloss):
    """The real exit status: 2 and one line; with --debug the same line after the traceback."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    cmd = [sys.executable, "-m", "eelsgpu", "info", str(tmp_path / "missing.zarr")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 2
    assert (
        res.stderr.strip()
        == f"eelsgpu info: error: {tmp_path / 'missing.zarr'}: no such file or directory"
    )
    res = subprocess.run([*cmd, "--debug"], env=env, capture_output=True, text=True)
    assert res.returncode == 2
    assert "Traceback (most recent call last)" in res.stderr
    assert res.stderr.strip().splitlines()[-1].endswith("no such file or directory")


def test_an_unexpected_error_is_one_line_too(tmp_path, lowloss, capsys, monkeypatch):
    """An error that is not eelsgpu's own (a bug, a library's failure) still ends in one line that
    names the input and says --debug shows where."""
    import eelsgpu.analysis.thickness as thickness_module

    def broken(*args, **kwargs):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(thickness_module, "thickness", broken)
    rc = main(["thickness", str(lowloss), "-o", str(tmp_path / "t.zarr"), "-q"])
    assert rc == 2
    line = _one_line(capsys)
    assert (
        f"{lowloss}: ZeroDivisionError: float division by zero (unexpected: run again with --debug"
        in line
    )


@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf"])
def test_kk_thickness_number_out_of_range(tmp_path, lowloss, capsys, value):
    """`eelsgpu kk --thickness -5` (0, nan, inf) used to write an all-NaN store with exit 0: now
    one line naming --thickness and nm, exit 2, before the input is read; nothing written."""
    before = _tree(lowloss)
    out = tmp_path / "k.zarr"
    rc = main(["kk", str(lowloss), "-o", str(out), f"--thickness={value}", "-q"])
    assert rc == 2
    line = _one_line(capsys)
    assert "--thickness must be a" in line and "in nm" in line, line
    assert not out.exists() and _tree(lowloss) == before


@pytest.mark.parametrize(
    "pixel, message", [("9,1", "y index 9 outside 0..3"), ("3:1,0", "holds no pixel")]
)
def test_kk_pixel_checked_before_anything_is_written(tmp_path, lowloss, capsys, pixel, message):
    """An out-of-range --pixel (or an empty region) is one line before the store is written (it
    used to say 'not integers' after writing it)."""
    out = tmp_path / "k.zarr"
    argv = ["kk", str(lowloss), "-o", str(out), "--metal", "--pixel", pixel]
    rc = main([*argv, "--png", str(tmp_path / "k.png"), "-q"])
    assert rc == 2
    line = _one_line(capsys)
    assert message in line, line
    assert not out.exists() and not (tmp_path / "k.png").exists()


@pytest.mark.parametrize("command", ["thickness", "deconvolve", "kk", "bandgap"])
def test_negative_baseline_is_one_line_and_writes_nothing(tmp_path, capsys, command):
    """Issue 12 item 9: spectra 100 counts below zero (a dark reference subtracted twice) give one
    line that says 'negative counts' with the baseline, exit 2, and no store (they used to leave
    a complete all-NaN store, or maps of nonsense); the .npy is unchanged."""
    e = np.arange(512) * 0.05 - 5.0
    spec = 1e4 * np.exp(-0.5 * (e / 0.2) ** 2) + 300 * np.exp(-0.5 * ((e - 15) / 2) ** 2) + 5
    path = tmp_path / "dark.npy"
    np.save(path, np.broadcast_to(spec - 100.0, (3, 3, e.size)))
    before = path.read_bytes()
    out = tmp_path / "o.zarr"
    argv = [command, str(path), "-o", str(out), "--offset", "-5", "--dispersion", "0.05", "-q"]
    if command == "kk":
        argv += ["--metal", "--beam-energy", "200", "--collection-angle", "10"]
    assert main(argv) == 2
    line = _one_line(capsys)
    assert "dark.npy: the spectra have negative counts" in line, line
    assert re.search(r"a baseline of about -\d+(\.\d+)? counts per channel", line), line
    assert not out.exists() and path.read_bytes() == before


def test_search_is_spelled_the_same_everywhere(tmp_path, lowloss, capsys):
    """`--search LO HI` and `--search LO:HI` mean the same for every command that looks for a
    ZLP (thickness, deconvolve, kk and bandgap used to take one form each): the same t/lambda;
    HI <= LO is one line."""
    from eelsgpu import io

    outs = []
    for i, form in enumerate((["--search", "-1", "1"], ["--search=-1:1"])):
        out = tmp_path / f"t{i}.zarr"
        assert main(["thickness", str(lowloss), "-o", str(out), *form, "-q"]) == 0
        outs.append(io.open_store(out)["t_over_lambda"].values)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert main(["kk", str(lowloss), "-o", str(tmp_path / "k.zarr"), "--metal", "--search=-1:1",
                 "-q"]) == 0  # fmt: skip
    capsys.readouterr()
    rc = main(["deconvolve", str(lowloss), "-o", str(tmp_path / "d.zarr"), "--search", "1", "-1"])
    assert rc == 2
    assert "HI must be above LO" in _one_line(capsys)
    assert not (tmp_path / "d.zarr").exists()
