"""Dielectric models and synthetic images with known truth shared by the Kramers-Kronig tests."""

from __future__ import annotations

import numpy as np

from eelsgpu import synthetic

E0, BETA = 200.0, 10.0


DRUDE_SHARP = synthetic.Drude(15.0, 0.5)


DRUDE_BROAD = synthetic.Drude(16.7, 3.7)


LORENTZ_5 = synthetic.Lorentz(16.6, 5.07, 3.7)


LORENTZ_9 = synthetic.Lorentz(16.6, 9.0, 3.7)


MODELS = {
    "drude-15-0.5": DRUDE_SHARP,
    "drude-16.7-3.7": DRUDE_BROAD,
    "lorentz-gap5": LORENTZ_5,
    "lorentz-gap9": LORENTZ_9,
}


def norm(model):
    return {"metal": True} if model.is_metal else {"refractive_index": model.refractive_index}


def mfp_nm(model, **kw) -> float:
    sim = synthetic.low_loss_spectrum(
        model, t_over_lambda=0.1, n_channels=256, dispersion_eV=0.1, **kw
    )
    return float(sim["true_mean_free_path_nm"])


def image(model, t_nm, **kw):
    kw.setdefault("beam_energy_keV", E0)
    kw.setdefault("collection_angle_mrad", BETA)
    lam = mfp_nm(
        model,
        beam_energy_keV=kw["beam_energy_keV"],
        collection_angle_mrad=kw["collection_angle_mrad"],
    )
    t_nm = np.asarray(t_nm, dtype=float)
    return synthetic.low_loss_image(
        model, t_over_lambda=t_nm / lam, shape=t_nm.shape, dtype=np.float64, **kw
    )


def eps_error(eps1, eps2, energy, model, lo=3.0, hi=50.0):
    """max |eps - truth| / max |truth| over [lo, hi] eV, per pixel."""
    sel = (energy >= lo) & (energy <= hi)
    true = model.eps(energy[sel])
    got = np.asarray(eps1)[..., sel] + 1j * np.asarray(eps2)[..., sel]
    return np.abs(got - true).max(axis=-1) / np.abs(true).max()
