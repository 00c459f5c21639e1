"""Per-equation kernels: pure functions of arrays and floats, written once against the array API.

Nothing here imports dask, xarray, zarr or file I/O; a kernel module imports only
:mod:`eelsgpu._xp` (shared numerics), :mod:`eelsgpu.physics` (constants and kinematics),
:mod:`eelsgpu.errors`, :mod:`.declare` and lower kernel modules. The same code runs on NumPy, CuPy
and array-api-strict.

Layers of eelsgpu (imports point down only; ``tests/test_layers.py`` checks it):

1. ``eelsgpu.cli``
2. ``eelsgpu.batch``, ``eelsgpu.report``, ``eelsgpu.plotting``
3. ``eelsgpu.analysis`` (the xarray-facing functions), ``eelsgpu.synthetic``, ``eelsgpu.interop``
4. ``eelsgpu.io``
5. ``eelsgpu.engine``
6. ``eelsgpu.model``
7. ``eelsgpu.kernels``
8. ``eelsgpu._xp``, ``eelsgpu.physics``, ``eelsgpu.errors``
"""
