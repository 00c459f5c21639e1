"""Synthetic cases with known truth shared by the Fourier-log tests (kernels, engine, analysis, cli).

The synthetic spectra are generated on a window twice as long and cut to 2048 channels: the
generator's own transform is periodic, and for thick insulators its plural scattering wraps round
to the start of a window cut at its full length (about 1e-5 of the peak at -5 eV), which is not
in ``true_ssd``. Cutting a longer window gives data with no such wrap.
"""

from __future__ import annotations

import numpy as np

from eelsgpu import synthetic

N_E = 2048


TAIL_EV = 3.0  # the last eV of the raw SSD depend on the extrapolated tail (see _inside)


MATERIALS = {
    "drude": synthetic.Drude(15.0, 1.0),
    "lorentz": synthetic.Lorentz(16.6, 5.07, 3.7),
}


def case(material: str, t_over_lambda: float, **kw):
    """A noise-free spectrum, its true ZLP (N0 R) and true SSD, cut from a 2x longer window."""
    kw.setdefault("dispersion_eV", 0.05)
    kw.setdefault("offset_eV", -5.0)
    sim = synthetic.low_loss_spectrum(
        MATERIALS[material],
        t_over_lambda=t_over_lambda,
        beam_energy_keV=300.0,
        collection_angle_mrad=10.0,
        n_channels=2 * N_E,
        dtype=np.float64,
        **kw,
    )
    cut = slice(0, N_E)
    e = sim["energy"].values[cut]
    zlp = (sim["true_zlp_shape"] * sim["true_zlp_intensity"]).values[cut]
    return e, sim["signal"].values[cut], zlp, sim["true_ssd"].values[cut]


def inside(e: np.ndarray) -> np.ndarray:
    """The channels compared for the raw SSD: all but the last TAIL_EV eV of the window."""
    return e <= e[-1] - TAIL_EV


def err(got: np.ndarray, true: np.ndarray, where: np.ndarray | None = None) -> float:
    d = np.abs(np.asarray(got) - true)
    if where is not None:
        d = d[where]
    return float(d.max() / np.abs(true).max())


def image(chunks=None, **kw):
    tl = synthetic.thickness_map((3, 4), "gradient", (0.2, 3.0))
    return synthetic.low_loss_image(
        MATERIALS["drude"],
        t_over_lambda=tl,
        shape=(3, 4),
        n_channels=1024,
        dispersion_eV=0.1,
        dtype=np.float64,
        chunks=chunks,
        **kw,
    )
