"""The data model: dims, dtype, chunking, calibration attributes and axis checks."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from eelsgpu.errors import EnergyAxisError, InputError, MissingParameterError
from eelsgpu.model import energy_axis, pixel_chunks, require_param, spectrum_image


@pytest.mark.parametrize(
    "shape, dims",
    [((50,), ("energy",)), ((7, 50), ("x", "energy")), ((3, 7, 50), ("y", "x", "energy"))],
)
def test_dims_by_rank(shape, dims):
    """Truth: the design's dims for a spectrum, a line scan and an image; float32, lazy."""
    si = spectrum_image(np.zeros(shape), np.arange(50.0))
    assert si.dims == dims
    assert si.dtype == np.float32
    assert isinstance(si.data, da.Array)
    assert si["energy"].attrs["units"] == "eV"


def test_energy_never_split_and_chunk_size():
    """Truth: chunks hold the whole energy axis and are 8 to 64 MiB for a large cube."""
    c = pixel_chunks((1024, 1024, 2048), 4)
    assert c[-1] == 2048
    size = np.prod(c) * 4
    assert 8 * 2**20 <= size <= 64 * 2**20
    si = spectrum_image(da.zeros((20, 20, 64), chunks=(5, 5, 16)), np.arange(64.0))
    assert si.data.chunks[-1] == (64,)


def test_calibration_attributes_and_units():
    """Truth: the given calibration is stored under the design's names; spatial coords in nm."""
    si = spectrum_image(
        np.ones((2, 3, 10)),
        np.linspace(-1, 0.8, 10),
        x=[0, 2.5, 5.0],
        y=[0, 2.5],
        beam_energy_keV=200,
        collection_angle_mrad=10,
        convergence_angle_mrad=20,
        source="a.dm4",
    )
    assert si.attrs["beam_energy_keV"] == 200.0
    assert si.attrs["collection_angle_mrad"] == 10.0
    assert si.attrs["convergence_angle_mrad"] == 20.0
    assert si.attrs["dispersion_eV"] == pytest.approx(0.2)
    assert si.attrs["source"] == "a.dm4"
    assert si["x"].attrs["units"] == "nm"


def test_missing_parameter_is_an_error_naming_file_and_flag():
    """Truth: a needed parameter that is neither given nor in the file is an error, never a default."""
    si = spectrum_image(np.ones(10), np.arange(10.0), source="spec.msa")
    with pytest.raises(MissingParameterError, match=r"beam_energy_keV.*spec\.msa.*--beam-energy"):
        require_param(si, "beam_energy_keV")
    assert require_param(si, "beam_energy_keV", 300) == 300.0


def test_energy_axis_checks():
    """Truth: a reversed, non-uniform, non-finite or one-channel axis is refused with its reason."""
    assert energy_axis(np.arange(5) * 0.5 - 1) == (-1.0, 0.5)
    with pytest.raises(EnergyAxisError, match="wrong way"):
        energy_axis(np.arange(5.0)[::-1], source="x.dm3")
    with pytest.raises(EnergyAxisError, match="not uniform"):
        energy_axis(np.array([0, 1, 2, 4.0]))
    assert energy_axis(np.array([0, 1, 2, 4.0]), require_uniform=False)[1] == pytest.approx(4 / 3)
    with pytest.raises(EnergyAxisError, match="NaN"):
        energy_axis(np.array([0, np.nan, 2.0]))
    with pytest.raises(EnergyAxisError, match="at least 2"):
        energy_axis(np.array([1.0]))


def test_shape_mismatch_errors():
    """Truth: an energy coordinate of the wrong length and a 4-D array are refused."""
    with pytest.raises(EnergyAxisError, match="9 values but the data have 10"):
        spectrum_image(np.ones(10), np.arange(9.0))
    with pytest.raises(InputError, match="4"):
        spectrum_image(np.ones((2, 2, 2, 10)), np.arange(10.0))


# --------------------------------------------------------------------------- issue 12: inputs
def test_rounded_text_axis_counts_as_uniform():
    """Truth: an axis written to a text file with 6 decimals (channel widths 0.049999 to
    0.050001 eV) is the uniform 0.05 eV axis; a grating axis whose channels widen by 10 % over
    the window is not uniform."""
    e = np.round(np.arange(2048) * 0.05 - 4.999999, 6)
    widths = np.diff(e)
    assert widths.min() < 0.05 < widths.max()
    offset, step = energy_axis(e)
    assert step == pytest.approx(0.05, rel=1e-9)
    assert spectrum_image(np.ones((2, e.size)), e).attrs["dispersion_eV"] == pytest.approx(0.05)
    grating = 100 + np.cumsum(0.05 * (1 + 0.1 * np.linspace(0, 1, 500)))
    with pytest.raises(EnergyAxisError, match="not uniform"):
        energy_axis(grating)


def _lowloss_spectrum(e):
    """A ZLP 0.4 eV wide at 0 eV and a plasmon at 15 eV (eV)."""
    return 1e4 * np.exp(-0.5 * (e / 0.17) ** 2) + 300 * np.exp(-0.5 * ((e - 15) / 2) ** 2) + 2


@pytest.mark.parametrize("unit, factor, fix", [("meV", 1000.0, 0.001), ("keV", 0.001, 1000.0)])
def test_axis_in_mev_or_kev_labelled_ev_is_refused_with_the_fix(tmp_path, unit, factor, fix):
    """Truth: the same spectrum on an axis in meV (or keV) stored as eV: its ZLP reads 400 eV
    (0.0004 eV) wide and the plasmon 15000 eV (0.015 eV) away. eelsgpu.open refuses it, naming the
    file, and the --offset/--dispersion it gives put the axis back in eV (then it opens)."""
    from eelsgpu import io

    e = np.arange(2048) * 0.05 - 5.0
    data = np.broadcast_to(_lowloss_spectrum(e), (3, 3, e.size)).astype(np.float32)
    path = io.write_store(spectrum_image(data, e * factor), tmp_path / "wrong.zarr")
    with pytest.raises(
        EnergyAxisError, match=rf"wrong\.zarr: .*looks like {unit} labelled eV"
    ) as err:
        io.open(path)
    import re

    offset, dispersion = (
        float(v) for v in re.findall(r"--offset (\S+) --dispersion (\S+)", str(err.value))[0]
    )
    assert offset == pytest.approx(-5.0) and dispersion == pytest.approx(0.05)
    si = io.open(path, offset_eV=offset, dispersion_eV=dispersion)
    np.testing.assert_allclose(si["energy"].values, e, atol=1e-9)


def test_axis_check_has_no_false_alarm_on_real_spectra(shared_data):
    """Truth: real low-loss spectra in eV (README: Al film with a 0.18 eV ZLP and its 15 eV
    plasmon; SrTiO3 with a 30.9 eV peak) and a core-loss image with no ZLP open without a word."""
    from eelsgpu import io
    from eelsgpu.model import energy_scale_problem

    for rel in ("pytemlib/AL-DFoffset0.00.dm3", "pyeelsmodel/ll.msa", "rsciio/EELS_SI.dm4"):
        si = io.open(shared_data / rel)
        spec = np.asarray(si.values, float).reshape(-1, si.sizes["energy"]).mean(0)
        assert energy_scale_problem(spec, si["energy"].values) is None, rel
    al = io.open(shared_data / "pytemlib/AL-DFoffset0.00.dm3")
    assert "meV labelled eV" in energy_scale_problem(al.values, al["energy"].values * 1000)


def test_complex_empty_and_plain_arrays_are_refused_with_a_hint():
    """Truth: complex counts, an empty image and a bare NumPy array are not spectrum images; each
    is an InputError saying what to do (before: the imaginary part silently dropped,
    ZeroDivisionError, IndexError)."""
    from eelsgpu import window_maps
    from eelsgpu.model import as_spectrum_image

    e = np.arange(16.0)
    with pytest.raises(InputError, match=r"complex \(complex128\).*data\.real"):
        spectrum_image(np.ones((2, 16)) * (1 + 1j), e)
    si = spectrum_image(np.ones((2, 16)), e)
    with pytest.raises(InputError, match="complex"):
        window_maps(si.copy(data=si.data * (1 + 1j)), {"a": (2.0, 5.0)}, device="cpu")
    with pytest.raises(InputError, match=r"empty \(shape \(0, 16\)\)"):
        spectrum_image(np.ones((0, 16)), e)
    with pytest.raises(InputError, match=r"needs a spectrum image.*numpy\.ndarray.*spectrum_image"):
        window_maps(np.ones((2, 16)), {"a": (2.0, 5.0)}, device="cpu")
    with pytest.raises(EnergyAxisError, match=r"needs a dim named 'energy'.*\('a', 'b'\)"):
        as_spectrum_image(si.rename({"x": "a", "energy": "b"}))


def test_energy_axis_anywhere_is_found_by_name(tmp_path):
    """Truth: a store whose signal has dims (energy, y, x) holds the same spectra as the cube
    with energy last; eelsgpu.open and the analyses read it so (before: "no energy axis")."""
    import xarray as xr

    from eelsgpu import io, window_maps

    e = np.arange(64) * 0.5
    cube = np.random.default_rng(0).random((3, 4, 64)).astype(np.float32)
    si = spectrum_image(cube, e)
    moved = si.transpose("energy", "y", "x")
    moved.to_dataset(name="signal").assign_attrs(eelsgpu_complete=True).to_zarr(
        tmp_path / "t.zarr", zarr_format=3, consolidated=False
    )
    opened = io.open(tmp_path / "t.zarr")
    assert opened.dims == ("y", "x", "energy")
    np.testing.assert_array_equal(opened.values, cube)
    a = window_maps(moved, {"w": (5.0, 20.0)}, device="cpu")["w"].values
    b = window_maps(si, {"w": (5.0, 20.0)}, device="cpu")["w"].values
    np.testing.assert_array_equal(a, b)
    assert isinstance(opened, xr.DataArray)
