"""CUDA C sources of eelsgpu's fused GPU kernels (installed as ``eelsgpu._cuda``).

Each ``.cu`` file here has a NumPy twin in the package; see README.md in this folder.
"""
