"""eelsgpu.open and the zarr store: formats, calibration, metadata and every kind of bad input.

Truths used: files written in the test by RosettaSciIO / HyperSpy with known values; the real
files under ../shared/data with the values their README gives (and HyperSpy's own reading of the
same file, a peer); and the exact arrays written in the test.
"""

from __future__ import annotations

import json
import shutil
import zipfile

import dask.array as da
import numpy as np
import pytest

import eelsgpu
from eelsgpu.errors import EnergyAxisError, InputError, MissingParameterError
from eelsgpu.io import open as eopen
from eelsgpu.io import write_store
from eelsgpu.model import spectrum_image

hs = pytest.importorskip("hyperspy.api")


# --------------------------------------------------------------------------- helpers
def _cube(shape=(4, 5, 64), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 100 + 1).astype(np.float32)


def _write_hspy(
    path,
    data,
    *,
    offset=-5.0,
    scale=0.05,
    nav_units="µm",
    nav_scale=0.002,
    energy_units="eV",
    md=True,
):
    s = hs.signals.Signal1D(data)
    ax = s.axes_manager.signal_axes[0]
    ax.offset, ax.scale, ax.units, ax.name = offset, scale, energy_units, "Energy loss"
    for a in s.axes_manager.navigation_axes:
        a.scale, a.units = nav_scale, nav_units
    if md:
        s.metadata.set_item("Acquisition_instrument.TEM.beam_energy", 300.0)
        s.metadata.set_item("Acquisition_instrument.TEM.convergence_angle", 12.5)
        s.metadata.set_item("Acquisition_instrument.TEM.Detector.EELS.collection_angle", 20.0)
    s.save(path, overwrite=True)
    return path


def _write_msa(path, spectrum, offset=-5.0, scale=0.05):
    from rsciio.msa import file_writer

    file_writer(
        str(path),
        {
            "data": np.asarray(spectrum, dtype=np.float64),
            "axes": [
                {
                    "name": "Energy loss",
                    "size": len(spectrum),
                    "offset": offset,
                    "scale": scale,
                    "units": "eV",
                    "navigate": False,
                }
            ],
            "metadata": {
                "General": {"title": "test spectrum"},
                "Signal": {"signal_type": "EELS"},
                "Acquisition_instrument": {
                    "TEM": {
                        "beam_energy": 200.0,
                        "convergence_angle": 7.5,
                        "Detector": {"EELS": {"collection_angle": 15.0}},
                    }
                },
            },
            "original_metadata": {},
        },
    )
    return path


# --------------------------------------------------------------------------- formats made here
def test_msa_written_by_rosettasciio(tmp_path):
    """Truth: the spectrum, axis and metadata written by RosettaSciIO's MSA writer."""
    spec = np.linspace(1.0, 2.0, 300) ** 2
    p = _write_msa(tmp_path / "s.msa", spec)
    si = eopen(p)
    assert si.dims == ("energy",) and si.dtype == np.float32
    np.testing.assert_allclose(si.values, spec, rtol=1e-6)
    np.testing.assert_allclose(si["energy"].values, -5.0 + 0.05 * np.arange(300), atol=1e-9)
    assert si.attrs["dispersion_eV"] == pytest.approx(0.05)
    assert si.attrs["beam_energy_keV"] == 200.0
    assert si.attrs["collection_angle_mrad"] == 15.0
    assert si.attrs["convergence_angle_mrad"] == 7.5
    assert si.attrs["source"] == str(p)


def test_hspy_written_by_hyperspy(tmp_path):
    """Truth: the cube, calibration (µm -> nm) and metadata saved by HyperSpy."""
    data = _cube()
    p = _write_hspy(tmp_path / "c.hspy", data)
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


def test_zspy_and_pixel_axes(tmp_path):
    """Truth: a .zspy saved by HyperSpy with uncalibrated (pixel) navigation axes."""
    data = _cube((3, 4, 32))
    try:
        p = _write_hspy(tmp_path / "c.zspy", data, nav_units="", nav_scale=1.0)
    except AttributeError as exc:  # RosettaSciIO 0.15's ZSPY writer predates zarr 3
        pytest.skip(f"HyperSpy cannot write .zspy with this zarr: {exc}")
    si = eopen(p)
    np.testing.assert_array_equal(si.values, data)
    assert si["x"].attrs["units"] == "px"


def test_arguments_override_file_metadata(tmp_path):
    """Truth: the values passed; arguments win over the file (and offset alone keeps the file's
    dispersion)."""
    p = _write_msa(tmp_path / "s.msa", np.ones(100) + np.arange(100))
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


@pytest.mark.parametrize("codec, expected", [("lz4", "blosc"), ("zstd", "zstd")])
def test_zarr_round_trip_both_codecs(tmp_path, codec, expected):
    """Truth: the array and attributes written; the codec named in the store's own metadata."""
    data = _cube((6, 5, 40))
    si = spectrum_image(
        data,
        np.arange(40) * 0.2 - 1.0,
        x=np.arange(5) * 1.5,
        y=np.arange(6) * 1.5,
        beam_energy_keV=300.0,
        collection_angle_mrad=10.0,
        source="made-in-test",
        chunks=(3, 5),
    )
    out = write_store(si, tmp_path / "s.zarr", codec=codec)
    meta = json.loads((out / "signal" / "zarr.json").read_text())
    names = [c["name"] for c in meta["codecs"]]
    assert expected in names
    if codec == "lz4":
        blosc = next(c for c in meta["codecs"] if c["name"] == "blosc")
        assert blosc["configuration"]["cname"] == "lz4"
        assert blosc["configuration"]["shuffle"] == "bitshuffle"
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [3, 5, 40]
    back = eopen(out)
    np.testing.assert_array_equal(back.values, data)
    np.testing.assert_array_equal(back["x"].values, si["x"].values)
    assert back["x"].attrs["units"] == "nm"
    assert back.attrs["beam_energy_keV"] == 300.0 and back.attrs["dispersion_eV"] == 0.2
    assert back.attrs["converted_from"] == "made-in-test" and back.attrs["source"] == str(out)
    assert back.data.chunksize == (3, 5, 40)


def test_store_override_energy_and_calibration(tmp_path):
    """Truth: arguments given when opening a store replace what it holds."""
    si = spectrum_image(_cube((2, 2, 10)), np.arange(10.0), beam_energy_keV=300.0)
    out = write_store(si, tmp_path / "s.zarr")
    back = eopen(out, beam_energy_keV=100.0, dispersion_eV=0.5)
    assert back.attrs["beam_energy_keV"] == 100.0
    np.testing.assert_allclose(back["energy"].values, 0.5 * np.arange(10))


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
def test_real_files(shared_data, rel, shape, offset, disp, e0, beta, alpha, pitch):
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


def test_cuzn_int16_becomes_float32(shared_data):
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
def test_truncated_or_corrupt_file(tmp_path, kind, request):
    """Truth: a valid file (made here, or a copy of a real one in tmp_path) cut short or
    overwritten with junk."""
    if kind == "hspy-truncated":
        p = _write_hspy(tmp_path / "cut.hspy", _cube())
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif kind == "msa-garbled":
        p = _write_msa(tmp_path / "cut.msa", np.arange(100.0) + 1)
        p.write_bytes(bytes(range(256)) * 8)
    else:
        shared = request.getfixturevalue("shared_data")
        p = tmp_path / "cut.dm3"
        p.write_bytes((shared / "gduscher/6-SiO2.dm3").read_bytes()[:20_000])
    with pytest.raises(InputError, match=rf"{p.name}: .*(truncated or corrupt)"):
        eopen(p)


def test_corrupt_store(tmp_path):
    """Truth: a valid store whose metadata is garbled, one whose chunk is deleted, and one left
    flagged incomplete (as a killed conversion leaves its partial store)."""
    si = spectrum_image(_cube((4, 4, 20)), np.arange(20.0), chunks=(2, 2))
    a = write_store(si, tmp_path / "a.zarr")
    (a / "signal" / "zarr.json").write_text("{ not json")
    with pytest.raises(InputError, match=r"a\.zarr: not a readable zarr store"):
        eopen(a)
    b = write_store(si, tmp_path / "b.zarr")
    chunk = next(f for f in (b / "signal" / "c").rglob("*") if f.is_file())
    chunk.unlink()
    with pytest.raises(InputError, match=r"b\.zarr: 1 of 4 chunks of 'signal' are missing"):
        eopen(b)
    c = write_store(si, tmp_path / "c.zarr")
    import zarr

    zarr.open_group(c, mode="r+").attrs["eelsgpu_complete"] = False
    with pytest.raises(InputError, match=r"c\.zarr: the store was not completely written"):
        eopen(c)


def test_interrupted_write_leaves_nothing(tmp_path):
    """Truth: a dask graph whose one block raises; the target must not exist afterwards and no
    partial store may be left beside it."""
    good = da.ones((16, 16, 64), chunks=(2, 2, 64), dtype=np.float32)

    def boom(block, block_info=None):
        if block_info[0]["chunk-location"][:2] == (3, 3):
            raise RuntimeError("disk full (simulated)")
        return block

    bad = good.map_blocks(boom, dtype=np.float32)
    si = spectrum_image(bad, np.arange(64.0), chunks=(2, 2))
    with pytest.raises(RuntimeError, match="simulated"):
        write_store(si, tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()
    assert list(tmp_path.iterdir()) == []


def test_no_energy_axis(tmp_path):
    """Truth: a HyperSpy image (axes in nm only) and a spectrum whose signal axis is in nm."""
    img = hs.signals.Signal2D(_cube((8, 9)))
    for a in img.axes_manager.signal_axes:
        a.units = "nm"
    img.save(tmp_path / "image.hspy")
    with pytest.raises(EnergyAxisError, match=r"image\.hspy: no energy axis .*nm"):
        eopen(tmp_path / "image.hspy")
    p = _write_hspy(tmp_path / "wavelength.hspy", _cube((2, 2, 30)), energy_units="nm")
    with pytest.raises(EnergyAxisError, match=r"wavelength\.hspy: no energy axis"):
        eopen(p)
    # giving the calibration names the signal axis energy
    assert eopen(p, offset_eV=0.0, dispersion_eV=1.0).sizes["energy"] == 30


def test_reversed_energy_axis(tmp_path):
    """Truth: a file whose energy axis decreases (negative dispersion)."""
    p = _write_hspy(tmp_path / "rev.hspy", _cube((2, 2, 30)), offset=10.0, scale=-0.5)
    with pytest.raises(EnergyAxisError, match=r"rev\.hspy.*wrong way"):
        eopen(p)


def test_nan_refused_or_masked(tmp_path):
    """Truth: three pixels given NaN / inf values in the test."""
    data = _cube((5, 6, 40))
    data[1, 2, 5] = np.nan
    data[3, 0, :] = np.inf
    data[4, 5, 39] = -np.inf
    p = _write_hspy(tmp_path / "holes.hspy", data)
    with pytest.raises(
        InputError, match=r"holes\.hspy: 3 of 30 pixel\(s\) have NaN or infinite"
    ) as err:
        eopen(p)
    assert "mask_invalid=True" in str(err.value) and "{'y': 1, 'x': 2}" in str(err.value)
    si = eopen(p, mask_invalid=True)
    valid = si["valid"].values
    assert si["valid"].dims == ("y", "x") and valid.sum() == 27
    assert not valid[1, 2] and not valid[3, 0] and not valid[4, 5]
    values = si.values
    assert np.isnan(values[~valid]).all()
    np.testing.assert_array_equal(values[valid], data[valid])


def test_masked_store_opens_without_mask_again(tmp_path):
    """Truth: a store written from a masked image knows which pixels are flagged, so opening it
    needs no mask_invalid; the check is read from the store (recorded when written)."""
    data = _cube((3, 3, 12))
    data[0, 0, 0] = np.nan
    masked = eelsgpu.io.check_values(spectrum_image(data, np.arange(12.0)), mask_invalid=True)
    out = write_store(masked, tmp_path / "m.zarr")
    rec = json.loads((out / "signal" / "zarr.json").read_text())["attributes"]
    assert rec["eelsgpu_value_check"]["nonfinite_pixels"] == 1
    assert rec["eelsgpu_value_check"]["unflagged_nonfinite_pixels"] == 0
    back = eopen(out)
    assert not back["valid"].values[0, 0] and back["valid"].values.sum() == 8
    raw = write_store(spectrum_image(data, np.arange(12.0)), tmp_path / "raw.zarr")
    with pytest.raises(InputError, match=r"raw\.zarr: 1 of 9 pixel"):
        eopen(raw)


def test_all_zero_refused(tmp_path):
    """Truth: an array of zeros."""
    p = tmp_path / "zeros.npy"
    np.save(p, np.zeros((3, 3, 20), np.float32))
    with pytest.raises(InputError, match=r"zeros\.npy: every value .* is zero"):
        eopen(p, offset_eV=0.0, dispersion_eV=1.0)


def test_value_check_runs_block_by_block(tmp_path):
    """Truth: the check is a dask reduction: opening a 4-chunk store without a recorded check
    reads the chunks (counted through a dask callback) one task each, never one whole array."""
    from dask.callbacks import Callback

    si = spectrum_image(_cube((4, 4, 16)), np.arange(16.0), chunks=(2, 2))
    out = write_store(si, tmp_path / "s.zarr")
    import zarr

    del zarr.open_group(out, mode="r+")["signal"].attrs["eelsgpu_value_check"]
    shapes = []

    class Spy(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            if isinstance(result, np.ndarray) and result.ndim == 3:
                shapes.append(result.shape)

    with Spy():
        eopen(out)
    assert shapes and max(s[0] * s[1] for s in shapes) == 4  # 2 x 2 pixel blocks only


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
