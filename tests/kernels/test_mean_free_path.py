"""Inelastic mean free paths (eelsgpu.kernels.mean_free_path) against the table of
shared/data/README.md section 4.2.
"""

from __future__ import annotations

import pytest

from eelsgpu.kernels.mean_free_path import (
    effective_atomic_number,
    iakoubovskii_angular_correction,
    mean_free_path_iakoubovskii_nm,
    mean_free_path_malis_nm,
)

README_IAK = {  # README 4.2: Iakoubovskii (large beta) at 200, 100, 300 kV, nm
    "Al": (2.70, 143.5, 97.1, 172.4),
    "Si": (2.33, 148.8, 100.7, 178.9),
    "SiO2": (2.20, 151.0, 102.1, 181.5),
    "SrTiO3": (5.12, 122.5, 83.2, 147.0),
    "SiC": (3.21, 137.5, 93.1, 165.1),
}


README_MALIS = {  # README 4.2: Malis at 200 kV, beta = 100 and 33 mrad, nm
    "Al": ({"Al": 1}, 89.5, 104.7),
    "SiO2": ({"Si": 1, "O": 2}, 96.5, 112.6),
    "SrTiO3": ({"Sr": 1, "Ti": 1, "O": 3}, 79.2, 92.9),
    "SiC": ({"Si": 1, "C": 1}, 95.7, 111.7),
}


@pytest.mark.parametrize("name", sorted(README_IAK))
def test_mean_free_path_iakoubovskii_table(name):
    """Truth: README 4.2 table (to its 0.1 nm rounding) and exspy's iMFP_Iakoubovskii and
    iMFP_angular_correction (to 1e-6)."""
    rho, *expect = README_IAK[name]
    for e0, lam in zip((200.0, 100.0, 300.0), expect, strict=True):
        assert abs(mean_free_path_iakoubovskii_nm(rho, e0) - lam) < 0.051 + 1e-4 * lam
    eels = pytest.importorskip("exspy.utils.eels")
    assert (
        abs(mean_free_path_iakoubovskii_nm(rho, 200.0) / eels.iMFP_Iakoubovskii(rho, 200.0) - 1)
        < 1e-6
    )
    got = iakoubovskii_angular_correction(rho, 200.0, 20.0, 10.0)
    assert abs(got / eels.iMFP_angular_correction(rho, 200.0, 10.0, 20.0) - 1) < 1e-6
    with_angle = mean_free_path_iakoubovskii_nm(rho, 200.0, 20.0, 10.0)
    assert abs(with_angle / (got * mean_free_path_iakoubovskii_nm(rho, 200.0)) - 1) < 1e-12


@pytest.mark.parametrize("name", sorted(README_MALIS))
def test_mean_free_path_malis_table(name):
    """Truth: README 4.2 Malis table (Zeff from the composition, 200 kV, beta 100 and 33)."""
    comp, l100, l33 = README_MALIS[name]
    assert abs(mean_free_path_malis_nm(200.0, 100.0, composition=comp) - l100) < 0.15
    assert abs(mean_free_path_malis_nm(200.0, 33.0, composition=comp) - l33) < 0.15
    assert abs(effective_atomic_number({13: 1}) - 13.0) < 1e-12
