"""The dielectric function from the SSD (eelsgpu.kernels.dielectric, eqs. 31-34) and the loss
probabilities of eqs. 31 and 36 (eelsgpu.kernels.dielectric, eelsgpu.kernels.surface).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import asarray, to_numpy

from eelsgpu import physics
from eelsgpu.kernels.dielectric import bulk_loss_per_eV_nm, re_inverse_eps
from eelsgpu.kernels.surface import surface_loss_per_eV


def test_hilbert_transform_drude(xp):
    """Truth: the analytic Drude Re[1/eps] (Ep 15, width 1). Our FFT Hilbert transform (linear
    convolution, tail A/E^3 added analytically) is within 1e-4 from 1 to 90 eV; a circular
    transform of the same data with period only 2x the window (what exspy does) is off by the
    wrap-around offset pi^2 Ep^2 / (3 P^2) (~0.02), 200 times more."""
    e = np.arange(2000) * 0.05
    with np.errstate(all="ignore"):
        eps = 1 - 15.0**2 / (e**2 + 1j * e * 1.0)
        loss = np.where(e > 0, np.imag(-1 / eps), 0.0)[None, :]
    re = to_numpy(
        re_inverse_eps(asarray(xp, loss), 0.05, tail_coefficient=asarray(xp, np.array([225.0])))
    )[0]
    sel = (e >= 1) & (e <= 90)
    err = np.abs(re[sel] - np.real(1 / eps[sel])).max()
    assert err < 1e-4
    # the wrap-around of a circular transform with period P = 2 x 100 eV (numpy, for contrast)
    odd = np.concatenate([loss[0], -loss[0][:0:-1]])
    spec = np.fft.fft(odd)
    h = np.real(np.fft.ifft(spec * (-1j) * np.sign(np.fft.fftfreq(odd.size))))[: e.size]
    wrapped = np.median((1 + h)[sel] - np.real(1 / eps[sel]))
    assert abs(wrapped) > 200 * err
    assert wrapped == pytest.approx(math.pi**2 * 15.0**2 / (3 * (2 * 100.0) ** 2), rel=0.15)


def test_loss_probabilities_zero_below_zero_loss(xp):
    """Truth: no loss probability at E <= 0 (bulk eq. 31 and surface eq. 36), on any namespace."""
    from conftest import asarray, to_numpy

    e = asarray(xp, np.array([-1.0, 0.0, 5.0, 15.0]))
    lf = asarray(xp, np.array([0.2, 0.2, 0.1, 1.0]))
    bulk = to_numpy(bulk_loss_per_eV_nm(lf, e, 200.0, 10.0))
    assert bulk[0] == 0 and bulk[1] == 0 and bulk[3] > bulk[2] > 0
    eps1 = asarray(xp, np.array([1.0, 1.0, -2.0, 0.0]))
    eps2 = asarray(xp, np.array([1.0, 1.0, 1.0, 1.0]))
    surf = to_numpy(surface_loss_per_eV(eps1, eps2, e, 200.0, 10.0))
    assert surf[0] == 0 and surf[1] == 0 and np.all(np.isfinite(surf))
    # the surface plasmon (eps1 = -1) of a Drude metal dominates over the bulk one at eps1 = 0
    assert surf[2] > 0


def test_bulk_loss_angular_factor():
    """Truth: eq. 31's angular factor ln(1 + beta^2/theta_E^2): doubling beta at beta >> theta_E
    adds ln(4) to the factor."""
    e = np.array([10.0])
    lf = np.array([1.0])
    p1 = bulk_loss_per_eV_nm(lf, e, 200.0, 10.0)[0]
    p2 = bulk_loss_per_eV_nm(lf, e, 200.0, 20.0)[0]
    theta = physics.characteristic_angle_mrad(10.0, 200.0)
    ratio = math.log(1 + (20 / theta) ** 2) / math.log(1 + (10 / theta) ** 2)
    assert p2 / p1 == pytest.approx(ratio, rel=1e-12)
