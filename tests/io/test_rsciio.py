"""eelsgpu.open on files RosettaSciIO reads: formats, calibration, metadata and every kind of bad
input (stores: tests/io/test_store.py; value checks: tests/io/test_checks.py).

Truths used: files written in the test by RosettaSciIO / HyperSpy with known values; the real
files under ../shared/data with the values their README gives (and HyperSpy's own reading of the
same file, a peer); and the exact arrays written in the test.
"""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest

import eelsgpu
from eelsgpu.errors import EnergyAxisError, InputError, MissingParameterError
from eelsgpu.io import open as eopen


def _cube(shape=(4, 5, 64), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 100 + 1).astype(np.float32)


# --------------------------------------------------------------------------- formats made here
def test_msa_written_by_rosettasciio(tmp_path, write_msa):
    """Truth: the spectrum, axis and metadata written by RosettaSciIO's MSA writer."""
    spec = np.linspace(1.0, 2.0, 300) ** 2
    p = write_msa(tmp_path / "s.msa", spec)
    si = eopen(p)
    assert si.dims == ("energy",) and si.dtype == np.float32
    np.testing.assert_allclose(si.values, spec, rtol=1e-6)
    np.testing.assert_allclose(si["energy"].values, -5.0 + 0.05 * np.arange(300), atol=1e-9)
    assert si.attrs["dispersion_eV"] == pytest.approx(0.05)
    assert si.attrs["beam_energy_keV"] == 200.0
    assert si.attrs["collection_angle_mrad"] == 15.0
    assert si.attrs["convergence_angle_mrad"] == 7.5
    assert si.attrs["source"] == str(p)


def test_hspy_written_by_hyperspy(tmp_path, write_hspy):
    """Truth: the cube, calibration (µm -> nm) and metadata saved by HyperSpy."""
    data = _cube()
    p = write_hspy(tmp_path / "c.hspy", data)
    si = eopen(p)
    assert si.dims == ("y", "x", "energy")
    assert hasattr(si.data, "dask")
    np.testing.assert_array_equal(si.values, data)
    np.testing.assert_allclose(si["energy"].values, -5.0 + 0.05 * np.arange(64), atol=1e-9)
    np.testing.assert_allclose(si["x"].values, 2.0 * np.arange(5))  # 0.002 µm = 2 nm
    assert si["x"].attrs["units"] == "nm" and si["y"].attrs["units"] == "nm"
    assert (
        si.attrs["beam_energy_keV"],
        si.attrs["collection_angle_mrad"],
        si.attrs["convergence_angle_mrad"],
    ) == (300.0, 20.0, 12.5)


def test_zspy_and_pixel_axes(tmp_path, write_hspy):
    """Truth: a .zspy saved by HyperSpy with uncalibrated (pixel) navigation axes."""
    data = _cube((3, 4, 32))
    try:
        p = write_hspy(tmp_path / "c.zspy", data, nav_units="", nav_scale=1.0)
    except AttributeError as exc:  # RosettaSciIO 0.15's ZSPY writer predates zarr 3
        pytest.skip(f"HyperSpy cannot write .zspy with this zarr: {exc}")
    si = eopen(p)
    np.testing.assert_array_equal(si.values, data)
    assert si["x"].attrs["units"] == "px"


def test_arguments_override_file_metadata(tmp_path, write_msa):
    """Truth: the values passed; arguments win over the file (and offset alone keeps the file's
    dispersion)."""
    p = write_msa(tmp_path / "s.msa", np.ones(100) + np.arange(100))
    si = eopen(p, beam_energy_keV=60.0, collection_angle_mrad=3.0, offset_eV=1.0)
    assert si.attrs["beam_energy_keV"] == 60.0 and si.attrs["collection_angle_mrad"] == 3.0
    assert si.attrs["convergence_angle_mrad"] == 7.5  # not overridden: from the file
    np.testing.assert_allclose(si["energy"].values, 1.0 + 0.05 * np.arange(100), atol=1e-9)


def test_npy_needs_and_takes_calibration(tmp_path):
    """Truth: the array saved with NumPy and the calibration passed as arguments."""
    data = _cube((2, 3, 50))
    p = tmp_path / "cube.npy"
    np.save(p, data)
    with pytest.raises(MissingParameterError, match=r"cube\.npy.*offset_eV"):
        eopen(p)
    si = eopen(p, offset_eV=-1.0, dispersion_eV=0.1, beam_energy_keV=200.0)
    np.testing.assert_array_equal(si.values, data)
    np.testing.assert_allclose(si["energy"].values, -1.0 + 0.1 * np.arange(50), atol=1e-12)
    assert si.attrs["beam_energy_keV"] == 200.0 and "collection_angle_mrad" not in si.attrs
    e = np.linspace(10.0, 20.0, 50) ** 1.5  # non-uniform axis given whole (SXES)
    assert "dispersion_eV" not in eopen(p, energy_eV=e).attrs


# --------------------------------------------------------------------------- real files
REAL = [
    # path, shape, offset eV, dispersion eV, beam keV, beta mrad, alpha mrad, spatial nm/px
    ("gduscher/6-SiO2.dm3", (1340,), -30.0, 0.5, 100.0, 50.0, 30.0, None),
    ("pytemlib/AL-DFoffset0.00.dm3", (2048,), -3.609, 0.020126, 200.0, 100.0, 0.0, None),
    ("rsciio/EELS_SI.dm4", (2, 2, 2048), 300.0, 1.0, 200.0, 62.0, 21.0, 1.992),
    ("exspy_demos/LSMO_linescan_low_loss.hspy", (40, 1024), -50.0, 0.5, 80.0, 33.19, 27.42, 3.219),
    (
        "exspy_demos/CuZn_EELS_mapping_tutorial.hspy",
        (50, 40, 162),
        700.0,
        8.0,
        200.0,
        36.0,
        29.0,
        0.9214,
    ),
]


@pytest.mark.parametrize(
    "rel, shape, offset, disp, e0, beta, alpha, pitch",
    REAL,
    ids=[r[0].split("/")[-1] for r in REAL],
)
def test_real_files(shared_data, rel, shape, offset, disp, e0, beta, alpha, pitch, hs):
    """Truth: the calibration and metadata in shared/data/README.md (what DM / HyperSpy wrote),
    and the data as HyperSpy itself reads them (a peer)."""
    p = shared_data / rel
    si = eopen(p)
    assert si.shape == shape and si.dtype == np.float32
    assert si.dims[-1] == "energy"
    e = si["energy"].values
    assert e[0] == pytest.approx(offset, abs=1e-3)
    assert si.attrs["dispersion_eV"] == pytest.approx(disp, rel=1e-4)
    assert si.attrs["beam_energy_keV"] == pytest.approx(e0, rel=1e-3)
    assert si.attrs["collection_angle_mrad"] == pytest.approx(beta)
    assert si.attrs["convergence_angle_mrad"] == pytest.approx(alpha)
    if pitch is not None:
        x = si["x"].values
        assert si["x"].attrs["units"] == "nm"
        assert x[1] - x[0] == pytest.approx(pitch, rel=1e-3)
    peer = hs.load(p)
    np.testing.assert_array_equal(si.values, peer.data.astype(np.float32))


def test_cuzn_int16_becomes_float32(shared_data, hs):
    """Truth: the int16 counts of the CuZn file, unchanged as float32."""
    si = eopen(shared_data / "exspy_demos/CuZn_EELS_mapping_tutorial.hspy")
    assert si.attrs["original_dtype"] == "int16"
    raw = hs.load(shared_data / "exspy_demos/CuZn_EELS_mapping_tutorial.hspy").data
    assert raw.dtype == np.int16
    np.testing.assert_array_equal(si.values, raw.astype(np.float32))


def test_dm3_with_two_spectra(shared_data):
    """Truth: README - AL-DFoffset0.16.dm3 holds 2 spectra, [0] from -3.609 eV, [1] -3.46 eV."""
    p = shared_data / "gduscher/AL-DFoffset0.16.dm3"
    with pytest.raises(InputError, match=r"AL-DFoffset0\.16\.dm3: holds 2 signals") as err:
        eopen(p)
    assert "signal_index" in str(err.value) and "[1]" in str(err.value)
    assert eopen(p, signal_index=0)["energy"].values[0] == pytest.approx(-3.609, abs=1e-3)
    one = eopen(p, signal_index=1)
    assert one["energy"].values[0] == pytest.approx(-3.46, abs=1e-3)
    assert one.attrs["signal_index"] == 1
    with pytest.raises(InputError, match="signal_index=5"):
        eopen(p, signal_index=5)


def test_velox_emd_eels_cubes(shared_data, tmp_path):
    """Truth: README - the Velox EMD holds 3 EELS cubes of 20 x 16 x 2048 at 0.1692 eV/ch, one
    from -21.5 eV; 300 kV."""
    with zipfile.ZipFile(shared_data / "rsciio/velox_EELS_EDS.zip") as z:
        z.extractall(tmp_path)
    p = next(tmp_path.glob("*.emd"))
    with pytest.raises(InputError, match=r"\.emd: holds 3 signals, 3 of them EELS") as err:
        eopen(p)
    assert "-21.5026 to" in str(err.value)
    si = eopen(p, signal_index=2)
    assert si.shape == (16, 20, 2048)
    assert si["energy"].values[0] == pytest.approx(-21.5026)
    assert si.attrs["dispersion_eV"] == pytest.approx(0.1692)
    assert si.attrs["beam_energy_keV"] == pytest.approx(300.0)
    assert si["x"].attrs["units"] == "nm"


# --------------------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    """Truth: the file is not there."""
    with pytest.raises(InputError, match=r"nothere\.dm4: no such file"):
        eopen(tmp_path / "nothere.dm4")


@pytest.mark.parametrize("kind", ["hspy-truncated", "msa-garbled", "dm3-truncated"])
def test_truncated_or_corrupt_file(tmp_path, kind, request, write_hspy, write_msa):
    """Truth: a valid file (made here, or a copy of a real one in tmp_path) cut short or
    overwritten with junk."""
    if kind == "hspy-truncated":
        p = write_hspy(tmp_path / "cut.hspy", _cube())
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif kind == "msa-garbled":
        p = write_msa(tmp_path / "cut.msa", np.arange(100.0) + 1)
        p.write_bytes(bytes(range(256)) * 8)
    else:
        shared = request.getfixturevalue("shared_data")
        p = tmp_path / "cut.dm3"
        p.write_bytes((shared / "gduscher/6-SiO2.dm3").read_bytes()[:20_000])
    with pytest.raises(InputError, match=rf"{p.name}: .*(truncated or corrupt)"):
        eopen(p)


def test_no_energy_axis(tmp_path, write_hspy, hs):
    """Truth: a HyperSpy image (axes in nm only) and a spectrum whose signal axis is in nm."""
    img = hs.signals.Signal2D(_cube((8, 9)))
    for a in img.axes_manager.signal_axes:
        a.units = "nm"
    img.save(tmp_path / "image.hspy")
    with pytest.raises(EnergyAxisError, match=r"image\.hspy: no energy axis .*nm"):
        eopen(tmp_path / "image.hspy")
    p = write_hspy(tmp_path / "wavelength.hspy", _cube((2, 2, 30)), energy_units="nm")
    with pytest.raises(EnergyAxisError, match=r"wavelength\.hspy: no energy axis"):
        eopen(p)
    # giving the calibration names the signal axis energy
    assert eopen(p, offset_eV=0.0, dispersion_eV=1.0).sizes["energy"] == 30


def test_reversed_energy_axis(tmp_path, write_hspy):
    """Truth: a file whose energy axis decreases (negative dispersion) holds the same spectra as
    the cube reversed along energy; it opens the right way round (data with it), flagged; an
    in-memory array with such an axis is refused with the fix."""
    cube = _cube((2, 2, 30))
    p = write_hspy(tmp_path / "rev.hspy", cube, offset=10.0, scale=-0.5)
    si = eopen(p)
    np.testing.assert_allclose(si["energy"].values, 10.0 - 0.5 * np.arange(30)[::-1])
    np.testing.assert_array_equal(si.values, cube[..., ::-1])
    assert si.attrs["energy_reversed"] is True and si.attrs["dispersion_eV"] == 0.5
    from eelsgpu.model import spectrum_image

    with pytest.raises(EnergyAxisError, match=r"wrong way.*sortby"):
        spectrum_image(cube, 10.0 - 0.5 * np.arange(30))


def test_list_signals(shared_data):
    """Truth: README - EELS_SI.dm4 is one (2, 2, 2048) cube from 300 eV."""
    (d,) = eelsgpu.io.list_signals(shared_data / "rsciio/EELS_SI.dm4")
    assert d["energy_range_eV"][0] == pytest.approx(300.0)
    assert sorted(d["shape"]) == [2, 2, 2048]


def test_unknown_format(tmp_path):
    """Truth: a text file with an ending no reader claims."""
    p = tmp_path / "notes.xyz123"
    p.write_text("hello")
    with pytest.raises(InputError, match=r"notes\.xyz123: eelsgpu cannot read"):
        eopen(p)


def test_shared_copy_is_untouched(shared_data, tmp_path):
    """Truth: opening never writes beside the input (the real files stay read-only)."""
    before = sorted(x.name for x in (shared_data / "rsciio").iterdir())
    eopen(shared_data / "rsciio/EELS_SI.dm4")
    assert sorted(x.name for x in (shared_data / "rsciio").iterdir()) == before
    shutil.rmtree(tmp_path, ignore_errors=True)
