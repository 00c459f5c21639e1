"""to_hyperspy / from_hyperspy: data, calibration and metadata survive the trip both ways.

Truths used: the exact synthetic image (eelsgpu.synthetic) and its known calibration; HyperSpy's
own reading of a real file (a peer) against eelsgpu.open of the same file.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import eelsgpu
from eelsgpu import synthetic
from eelsgpu.errors import InputError
from eelsgpu.model import spectrum_image

hs = pytest.importorskip("hyperspy.api")


@pytest.fixture(scope="module")
def image():
    """A 5 x 4 synthetic Drude image with known calibration and spatial pitch."""
    sim = synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0),
        t_over_lambda=0.6,
        shape=(5, 4),
        n_channels=256,
        dispersion_eV=0.1,
        offset_eV=-3.0,
        beam_energy_keV=200.0,
        collection_angle_mrad=12.0,
        pixel_size_nm=0.5,
    )
    si = sim["signal"]
    si.attrs["convergence_angle_mrad"] = 9.0
    return si


def test_to_hyperspy_calibration_and_metadata(image):
    """Truth: the synthetic image's coordinates and attributes."""
    s = eelsgpu.to_hyperspy(image)
    from exspy.signals import LazyEELSSpectrum

    assert isinstance(s, LazyEELSSpectrum)
    assert s.axes_manager.navigation_shape == (4, 5)  # HyperSpy lists x first
    e = s.axes_manager.signal_axes[0]
    assert (e.units, e.size) == ("eV", 256)
    assert e.offset == pytest.approx(float(image["energy"][0]))
    assert e.scale == pytest.approx(0.1)
    x, y = s.axes_manager.navigation_axes
    assert (x.name, y.name) == ("x", "y")
    assert x.units == image["x"].attrs["units"]
    assert x.scale == pytest.approx(float(image["x"][1] - image["x"][0]))
    tem = s.metadata.Acquisition_instrument.TEM
    assert tem.beam_energy == 200.0 and tem.convergence_angle == 9.0
    assert tem.Detector.EELS.collection_angle == 12.0
    np.testing.assert_array_equal(s.data.compute(), image.values)


def test_round_trip(image):
    """Truth: the original DataArray; eelsgpu -> HyperSpy -> eelsgpu changes nothing."""
    back = eelsgpu.from_hyperspy(eelsgpu.to_hyperspy(image, lazy=False))
    assert back.dims == image.dims
    np.testing.assert_array_equal(back.values, image.values)
    for d in image.dims:
        np.testing.assert_allclose(back[d].values, image[d].values, rtol=1e-12, atol=1e-12)
        assert back[d].attrs.get("units") == image[d].attrs.get("units")
    for k in (
        "beam_energy_keV",
        "collection_angle_mrad",
        "convergence_angle_mrad",
        "dispersion_eV",
    ):
        assert back.attrs[k] == pytest.approx(image.attrs[k])


def test_round_trip_through_hspy_file(image, tmp_path):
    """Truth: the original image; saved by HyperSpy as .hspy and opened by eelsgpu.open."""
    p = tmp_path / "via-hyperspy.hspy"
    eelsgpu.to_hyperspy(image, lazy=False).save(p)
    si = eelsgpu.open(p)
    np.testing.assert_array_equal(si.values, image.values)
    assert si.attrs["collection_angle_mrad"] == 12.0 and si.attrs["beam_energy_keV"] == 200.0


def test_from_hyperspy_matches_open_on_real_file(shared_data):
    """Truth: HyperSpy's reading of the LSMO line scan (80 kV, alpha 27.42, beta 33.19 mrad,
    3.219 nm/px per the README) and eelsgpu.open's reading of the same file."""
    p = shared_data / "exspy_demos/LSMO_linescan_low_loss.hspy"
    si = eelsgpu.from_hyperspy(hs.load(p))
    ref = eelsgpu.open(p)
    assert si.dims == ("x", "energy") == ref.dims
    np.testing.assert_array_equal(si.values, ref.values)
    np.testing.assert_allclose(si["x"].values, ref["x"].values)
    assert si["x"].values[1] == pytest.approx(3.219, rel=1e-3)
    assert si.attrs["beam_energy_keV"] == 80.0
    assert si.attrs["collection_angle_mrad"] == 33.19
    assert si.attrs["convergence_angle_mrad"] == 27.42


def test_from_hyperspy_overrides_and_checks():
    """Truth: values passed as arguments; a NaN put in one pixel."""
    data = np.ones((2, 3, 20), np.float32)
    s = hs.signals.Signal1D(data)
    ax = s.axes_manager.signal_axes[0]
    ax.units, ax.offset, ax.scale = "eV", -1.0, 0.25
    si = eelsgpu.from_hyperspy(s, beam_energy_keV=120.0)
    assert si.attrs["beam_energy_keV"] == 120.0 and si.attrs["dispersion_eV"] == 0.25
    s.data[1, 1, 3] = np.nan
    with pytest.raises(InputError, match="1 of 6 pixel"):
        eelsgpu.from_hyperspy(s)
    assert not eelsgpu.from_hyperspy(s, mask_invalid=True)["valid"].values[1, 1]


def test_non_uniform_energy_axis_kept():
    """Truth: a non-uniform (SXES-like) axis given in eV."""
    e = np.linspace(5.0, 10.0, 40) ** 2
    si = spectrum_image(np.ones((2, 40)), e)
    back = eelsgpu.from_hyperspy(eelsgpu.to_hyperspy(si, lazy=False))
    np.testing.assert_allclose(back["energy"].values, e)
    assert "dispersion_eV" not in back.attrs


def test_missing_hyperspy_message(monkeypatch, image):
    """Truth: with HyperSpy not importable, the error says how to install it."""
    monkeypatch.setitem(sys.modules, "hyperspy.api", None)
    monkeypatch.setitem(sys.modules, "hyperspy", None)
    with pytest.raises(ImportError, match=r"pip install eelsgpu\[hyperspy\]"):
        eelsgpu.to_hyperspy(image)
    with pytest.raises(ImportError, match=r"pip install eelsgpu\[hyperspy\]"):
        eelsgpu.from_hyperspy(object())


def test_every_analysis_takes_a_hyperspy_signal_as_it_is(image):
    """A HyperSpy (exspy) signal passed to a public analysis is converted in one place
    (eelsgpu.interop.as_input) and gives the results of the DataArray it came from (truth:
    the same analysis on the DataArray); the engine's own check takes it too."""
    s = eelsgpu.to_hyperspy(image, lazy=False)
    for name, kw in [
        ("thickness", {}),
        ("deconvolve", {"zlp": "mirror"}),
        ("align_zlp", {}),
    ]:
        fn = getattr(eelsgpu, name)
        got = fn(s, device="cpu", **kw).compute()
        want = fn(image, device="cpu", **kw).compute()
        key = "t_over_lambda" if name != "align_zlp" else next(iter(want.data_vars))
        np.testing.assert_allclose(got[key].values, want[key].values, rtol=1e-6)
    got = eelsgpu.thickness(si=s, device="cpu").compute()  # by keyword too
    assert got["t_over_lambda"].shape == image.shape[:-1]
    # a signal in memory runs at once (NumPy results: the engine's eager path), a lazy one lazily
    assert isinstance(eelsgpu.thickness(s, device="cpu")["t_over_lambda"].data, np.ndarray)
    lazy = eelsgpu.thickness(eelsgpu.to_hyperspy(image, lazy=True), device="cpu")
    assert lazy["t_over_lambda"].chunks is not None
    from eelsgpu.model import as_spectrum_image

    assert as_spectrum_image(s).dims == image.dims


def test_hspy_files_need_h5py_not_hyperspy(tmp_path):
    """`pip install .` reads .hspy: h5py is one of eelsgpu's own dependencies (RosettaSciIO does
    not require it), and eelsgpu.open reads a .hspy file with HyperSpy made unimportable.
    Truth: the values HyperSpy wrote."""
    import subprocess
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.replace(" ", "").startswith("h5py") for d in deps)
    data = np.arange(3 * 64, dtype=np.float32).reshape(3, 64) + 1.0
    sig = hs.signals.Signal1D(data)
    ax = sig.axes_manager.signal_axes[0]
    ax.offset, ax.scale, ax.units = -1.0, 0.1, "eV"
    path = tmp_path / "line.hspy"
    sig.save(path)
    code = (
        "import sys; sys.modules['hyperspy'] = None; sys.modules['exspy'] = None\n"
        "import eelsgpu, numpy as np\n"
        f"si = eelsgpu.open({str(path)!r})\n"
        "print(float(np.asarray(si.values).sum()), si.shape)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    total, shape = out.stdout.strip().split(" ", 1)
    assert float(total) == float(data.sum()) and shape == "(3, 64)"
