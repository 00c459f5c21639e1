"""The xarray-facing analyses: parse arguments, pick the kernel declaration, run the engine.

Each public function (``eelsgpu.thickness``, ``eelsgpu.deconvolve``, ...) lives in a module here;
the kernels it runs are in :mod:`eelsgpu.kernels`, the engine that maps them over pixel blocks in
:mod:`eelsgpu.engine`.
"""
