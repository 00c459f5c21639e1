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
