"""The loss grid of the Kramers-Kronig analysis (eelsgpu.kernels.loss_grid)."""

from __future__ import annotations

import numpy as np
import pytest

from eelsgpu.errors import EnergyAxisError
from eelsgpu.kernels.loss_grid import loss_grid


def test_loss_grid_origin_and_limits():
    """Truth: the axis itself. A channel at 0 eV is used as is; an axis between channels is
    interpolated by the right fraction; a window starting 2 channels above 0 is padded; a window
    ending below 1 eV of loss is an EnergyAxisError."""
    g = loss_grid(np.arange(-100, 1948) * 0.05)
    assert (g.start, g.frac, g.n, g.pad) == (100, 0.0, 1948, 0)
    g = loss_grid(np.arange(-100, 1948) * 0.05 - 0.01)  # 0 eV sits 0.2 channel above channel 100
    assert g.start == 100 and g.frac == pytest.approx(0.2) and g.n == 1947
    g = loss_grid(0.1 + np.arange(1000) * 0.05)
    assert g.pad == 2 and g.start == 0 and g.frac == 0.0
    with pytest.raises(EnergyAxisError, match="1 eV"):
        loss_grid(np.linspace(-5.0, 0.9, 200))
