"""The measured low-loss spectra of ../shared/data (its README, section 1) as the Kramers-Kronig and
band-gap tests and ``benchmarks/real_data.py`` use them: one table of files with what is known
about each, a loader, and the documented chain deconvolve -> kramers_kronig.

What each row holds and where it comes from:

* ``e0_keV``, ``beta_mrad``, ``alpha_mrad``: from the file, or the README where the file has
  none (alpha, the convergence semi-angle, enters the mean free path's angular correction);
* ``norm``: the Kramers-Kronig normalisation (eq. 28): ``metal`` for Al, Cr and the LSMO film at
  80 kV, else the static refractive index n (SiO2 1.46, SiC 2.65, h-BN 2.0, SrTiO3 2.4, MnOx 2.2,
  LSMO/STO 2.4; handbook values, as in the research notes of issue 11);
* ``density``: g/cm3, for the Iakoubovskii mean free path of the log-ratio thickness;
* ``peak_eV``: the main loss peak of the README (its "checks" column; a range for the line
  scans); ``on_axis``: False for the q-resolved (off-axis) Al series, whose plasmon disperses.

Nothing here is copied from the shared folder: files are read where they lie.
"""

from __future__ import annotations

import glob
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

#: ZLP models every spectrum is run with.
ZLP_MODELS = ("threshold", "mirror", "fit")


@dataclass(frozen=True)
class RealFile:
    name: str
    path: str
    signal_index: int | None
    e0_keV: float
    beta_mrad: float
    norm: dict[str, Any]
    density: float
    peak_eV: tuple[float, float]
    alpha_mrad: float = 0.0
    on_axis: bool = True
    tags: tuple[str, ...] = field(default_factory=tuple)


_AL = dict(norm={"metal": True}, density=2.70, e0_keV=200.0, beta_mrad=100.0)
FILES: tuple[RealFile, ...] = (
    RealFile("Al film 0.00", "pytemlib/AL-DFoffset0.00.dm3", None, peak_eV=(15.04, 15.04), **_AL),
    RealFile("Al 0.16[0]", "gduscher/AL-DFoffset0.16.dm3", 0, peak_eV=(15.07, 15.07),
             on_axis=False, **_AL),
    RealFile("Al 0.19[0]", "gduscher/AL-DFoffset0.19.dm3", 0, peak_eV=(15.12, 15.12),
             on_axis=False, **_AL),
    RealFile("Al 0.22[0]", "gduscher/AL-DFoffset0.22.dm3", 0, peak_eV=(15.15, 15.15),
             on_axis=False, **_AL),
    RealFile("Al 0.25[0]", "gduscher/AL-DFoffset0.25.dm3", 0, peak_eV=(15.17, 15.17),
             on_axis=False, **_AL),
    RealFile("Al 0.30[0]", "gduscher/AL-DFoffset0.30.dm3", 0, peak_eV=(15.24, 15.24),
             on_axis=False, **_AL),
    RealFile("Al 0.16[1] on-axis", "gduscher/AL-DFoffset0.16.dm3", 1, peak_eV=(15.04, 15.04),
             **_AL),
    RealFile("SiO2", "gduscher/6-SiO2.dm3", None, 100.0, 50.0, {"refractive_index": 1.46}, 2.2,
             (22.0, 22.0), alpha_mrad=30.0),
    RealFile("SiC", "gduscher/6-SiC.dm3", None, 100.0, 50.0, {"refractive_index": 2.65}, 3.21,
             (22.5, 22.5), alpha_mrad=30.0),
    RealFile("h-BN", "gduscher/1EELS Acquire (low-loss).dm3", None, 200.0, 33.0,
             {"refractive_index": 2.0}, 2.1, (6.75, 6.75), alpha_mrad=30.0),
    RealFile("SrTiO3", "pyeelsmodel/ll.msa", None, 300.0, 2.675, {"refractive_index": 2.4},
             5.12, (30.9, 30.9), alpha_mrad=0.9),
    RealFile("MnOx", "exspy/lowloss_spectrum.msa", None, 300.0, 13.6, {"refractive_index": 2.2},
             5.0, (31.2, 31.2), alpha_mrad=24.6),
    RealFile("Cr", "exspy/Cr_L_ll.hspy", None, 200.0, 50.0, {"metal": True}, 7.19, (24.1, 24.1),
             alpha_mrad=21.0),
    RealFile("LSMO/STO", "exspy_demos/LSMO_STO_linescan_low_loss.hspy", None, 200.0, 33.1,
             {"refractive_index": 2.4}, 5.8, (30.0, 31.0), alpha_mrad=27.1),
    RealFile("LSMO 80kV", "exspy_demos/LSMO_linescan_low_loss.hspy", None, 80.0, 33.19,
             {"metal": True}, 6.5, (27.5, 30.5), alpha_mrad=27.42),
)  # fmt: skip


def open_real(root: Path, f: RealFile) -> xr.DataArray:
    """The file as eelsgpu opens it (float64), with E0 and beta set from the table."""
    import eelsgpu

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        si = eelsgpu.open(
            root / f.path,
            signal_index=f.signal_index,
            beam_energy_keV=f.e0_keV,
            collection_angle_mrad=f.beta_mrad,
            convergence_angle_mrad=f.alpha_mrad,
        )
    si = si.astype(np.float64).compute()
    si.attrs["source"] = f.name
    return si


def band_limited(si: xr.DataArray, zlp: str, search_eV=(-5.0, 5.0), **kw) -> xr.Dataset:
    """``deconvolve(si, zlp=..., output="band-limited")``: the SSD band-limited by a Gaussian of
    each pixel's measured ZLP FWHM, zero loss at 0 eV, with ``zlp_fwhm_eV`` and ``quality``."""
    import eelsgpu

    return eelsgpu.deconvolve(
        si, zlp=zlp, output="band-limited", search_eV=search_eV, device="cpu", **kw
    )


def kk_chain(si: xr.DataArray, f: RealFile, zlp: str, **kw) -> tuple[xr.Dataset, xr.Dataset]:
    """The documented chain: band-limited deconvolution, then Kramers-Kronig with the file's
    normalisation and its density (for the log-ratio thickness to compare with); the cubes
    eps1, eps2 and the loss function (the tests look at all three; the default keeps eps only)
    unless ``variables`` or ``cubes`` say otherwise."""
    import eelsgpu

    if "variables" not in kw:
        kw.setdefault("cubes", ("eps1", "eps2", "loss_function"))
    dec = band_limited(si, zlp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kk = eelsgpu.kramers_kronig(
            dec, density_g_cm3=f.density, device="cpu", **f.norm, **kw
        ).compute()
    return dec, kk


# --------------------------------------------------------------------------- WS2 (EELSfitter)
def ws2_spectra(root: Path, specimen: str = "Specimen_3") -> dict[str, Any]:
    """The EELSfitter WS2 spectra of one specimen: ``energy`` (bin centres from the file names,
    EELSfitter's load_data rule), ``specimen`` (n, n_E) counts, ``vacuum`` (m, n_E), ``names``."""
    files = sorted(glob.glob(str(root / "eelsfitter" / specimen / "*.txt")))
    if not files:
        return {}
    base = os.path.basename(files[0])
    m = re.search(r"m(\d+)d(\d+)eV[-_to]*?(\d+)d(\d+)eV", base)
    lo = -float(f"{m.group(1)}.{m.group(2)}")
    hi = float(f"{m.group(3)}.{m.group(4)}")
    spectra = [np.loadtxt(p).astype(np.float64) for p in files]
    n = spectra[0].size
    energy = lo + (hi - lo) * (np.arange(n) + 0.5) / n
    vac = [s for p, s in zip(files, spectra, strict=True) if "Vacuum" in p]
    spec = [s for p, s in zip(files, spectra, strict=True) if "Vacuum" not in p]
    names = [os.path.basename(p).split("_")[0] for p in files if "Vacuum" not in p]
    return {"energy": energy, "specimen": np.array(spec), "vacuum": np.array(vac), "names": names}
