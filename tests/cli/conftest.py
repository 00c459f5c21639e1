"""Files the command-line tests convert and describe, made with known values."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture()
def hspy_file(tmp_path):
    """A 6 x 5 x 80 cube saved by HyperSpy: -2 eV + 0.1 eV/ch, 1.5 nm pixels, 300 kV, beta 20."""
    hs = pytest.importorskip("hyperspy.api")
    rng = np.random.default_rng(3)
    data = (rng.random((6, 5, 80)) * 50 + 1).astype(np.float32)
    s = hs.signals.Signal1D(data)
    e = s.axes_manager.signal_axes[0]
    e.units, e.offset, e.scale = "eV", -2.0, 0.1
    for a in s.axes_manager.navigation_axes:
        a.units, a.scale = "nm", 1.5
    s.metadata.set_item("Acquisition_instrument.TEM.beam_energy", 300.0)
    s.metadata.set_item("Acquisition_instrument.TEM.Detector.EELS.collection_angle", 20.0)
    p = tmp_path / "cube.hspy"
    s.save(p)
    return p, data
