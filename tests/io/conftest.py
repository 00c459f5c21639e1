"""Files written in the io tests by HyperSpy and RosettaSciIO with known values."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def hs():
    """hyperspy.api (the tests that need it are skipped without it)."""
    return pytest.importorskip("hyperspy.api")


@pytest.fixture
def write_hspy(hs):
    """``write_hspy(path, data, ...)``: a cube saved by HyperSpy with a known calibration."""

    def write(
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

    return write


@pytest.fixture
def write_msa():
    """``write_msa(path, spectrum, offset, scale)``: a spectrum saved by RosettaSciIO's MSA writer."""

    def write(path, spectrum, offset=-5.0, scale=0.05):
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

    return write
