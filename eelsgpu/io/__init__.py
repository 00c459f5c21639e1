"""Files: open any EELS spectrum-image file as a lazy DataArray; eelsgpu's own zarr stores.

:func:`open` reads eelsgpu's zarr stores (the variable ``signal``) and, through RosettaSciIO, Gatan
``.dm3``/``.dm4``, ``.msa``/``.emsa``, HyperSpy ``.hspy``/``.zspy``, Velox ``.emd`` and NumPy
``.npy`` (whose calibration comes from the arguments). It returns the spectrum image of
:func:`eelsgpu.model.spectrum_image`: dims ``(y, x, energy)``, float32, dask-backed, energy in eV,
``y``/``x`` in nm when the file says so (else pixels), and the attributes ``beam_energy_keV``,
``collection_angle_mrad``, ``convergence_angle_mrad``, ``dispersion_eV`` and ``source``.

What counts as bad input, and what happens to it:

* a missing, truncated or corrupt file: :class:`~eelsgpu.errors.InputError` naming the file;
* no energy axis (no axis in eV, as in an image or a ``.npy`` file) and no calibration given:
  :class:`~eelsgpu.errors.EnergyAxisError` (``.npy``: :class:`~eelsgpu.errors.MissingParameterError`);
  a decreasing or non-monotonic axis: :class:`~eelsgpu.errors.EnergyAxisError`;
* NaN or infinite values: refused with an :class:`~eelsgpu.errors.InputError` that says how many
  pixels are hit, unless ``mask_invalid=True``: then every spectrum with a non-finite value is set
  to NaN as a whole and a boolean coordinate ``valid`` (dims ``y, x``, False for those pixels) is
  added, so analyses give NaN there and the run finishes;
* a spectrum image that is zero everywhere: :class:`~eelsgpu.errors.InputError`.

The value checks run block by block through dask (never the whole cube in memory), once, when the
file is opened. :func:`write_store` records their result in the store it writes (in the same pass
over the data), so opening an eelsgpu store later costs no pass at all.

A store is a zarr v3 group written by :meth:`xarray.Dataset.to_zarr`; the spectrum image is the
variable ``signal`` (dims ``y, x, energy``), chunked in pixel blocks with the energy axis whole,
compressed with Blosc-LZ4 + bit-shuffle by default. Results of analyses go into stores of the same
kind as named variables. Writes are atomic: a store is written under a temporary name beside the
target, marked complete, and renamed into place only then, so an interrupted write never leaves a
store that opens as if whole.

The package follows xarray's ``backends``: one module per kind of file.

=====================  ========================================================================
:mod:`.api`            :func:`open` and :func:`list_signals`: dispatch on the kind of file
:mod:`.store`          eelsgpu's zarr stores: :func:`open_store`, :func:`write_store`, :func:`is_store`
:mod:`.rsciio`         files RosettaSciIO reads (.dm3/.dm4, .msa, .hspy/.zspy, Velox .emd, .npy)
:mod:`.checks`         value checks: non-finite pixels (refused or masked), all-zero images
:mod:`.calibration`    the energy axis the arguments give
:mod:`.sxes`           JEOL SXES (XES300N) ``.plzip`` point spectra: :func:`read_sxes`
=====================  ========================================================================

Examples
--------
>>> import eelsgpu
>>> si = eelsgpu.open("spectrum_image.dm4")                      # doctest: +SKIP
>>> si = eelsgpu.open("cube.npy", offset_eV=-5.0, dispersion_eV=0.05,
...                   beam_energy_keV=200.0)                      # doctest: +SKIP
>>> eelsgpu.write_store(si, "cube.zarr")                          # doctest: +SKIP
"""

from __future__ import annotations

from ..engine.store import CODEC_PROFILES, codecs
from .api import list_signals, open
from .checks import check_values
from .rsciio import format_signal, from_signal_dict
from .store import CHECK_ATTR, is_store, open_store, write_store
from .sxes import read_sxes

__all__ = [
    "CHECK_ATTR",
    "CODEC_PROFILES",
    "check_values",
    "codecs",
    "format_signal",
    "from_signal_dict",
    "is_store",
    "list_signals",
    "open",
    "open_store",
    "read_sxes",
    "write_store",
]
