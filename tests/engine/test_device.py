"""Devices: the GPU probe says why a GPU is not usable, and device resolution follows it.

Truth: this machine's GPU status, as the probe reports it.
"""

from __future__ import annotations

import pytest

from eelsgpu.engine import device as backend


def test_gpu_probe_says_why_not_and_gpu_request_fails_clearly():
    """Without a usable GPU the probe gives a reason and device='gpu' raises naming the extra;
    'auto' falls back to the CPU."""
    status = backend.gpu_status()
    if status.usable:
        pytest.skip("a GPU is usable here")
    assert status.reason
    with pytest.raises(backend.DeviceError, match=r"eelsgpu\[gpu\]"):
        backend.resolve_device("gpu")
    assert backend.resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match="device must be one of"):
        backend.resolve_device("tpu")
