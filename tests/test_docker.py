"""docker/: no Docker engine runs here, so the Dockerfiles are checked as text against
pyproject.toml (the truth for what the package declares): the CPU and CUDA images install the
package with extras pyproject declares (the CUDA one with ``gpu``, whose CuPy and dask-cuda it
needs), copy what the build needs, and run the ``eelsgpu batch`` command as their entry point.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, argument) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, arg = line.partition(" ")
        out.append((op.upper(), arg.strip()))
    return out


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _installed_extras(instrs) -> set[str]:
    extras = set()
    for op, arg in instrs:
        if op != "RUN":
            continue
        for m in re.finditer(r"""pip install[^&;]*?["']?\.\[([a-z0-9_,\- ]+)\]""", arg):
            extras |= {e.strip() for e in m.group(1).split(",")}
    return extras


@pytest.mark.parametrize(
    ("name", "needed"), [("Dockerfile.cpu", set()), ("Dockerfile.gpu", {"gpu"})]
)
def test_dockerfile_installs_declared_extras_and_runs_the_cli(name, needed):
    """Each image pip-installs the package with extras pyproject declares, and its ENTRYPOINT is
    the eelsgpu batch command (exec form)."""
    path = DOCKER / name
    assert path.is_file(), f"{path} missing"
    instrs = _instructions(path)
    ops = [op for op, _ in instrs]
    assert ops[0] == "FROM"
    declared = set(_pyproject()["project"]["optional-dependencies"])
    extras = _installed_extras(instrs)
    assert extras, f"{name} does not pip install the package with extras"
    assert extras <= declared, f"{name} installs undeclared extras {extras - declared}"
    assert needed <= extras
    entry = [arg for op, arg in instrs if op == "ENTRYPOINT"]
    assert len(entry) == 1
    argv = json.loads(entry[0])  # exec form: signals reach eelsgpu (resumable on SIGTERM/KILL)
    script = _pyproject()["project"]["scripts"]
    assert argv[0] in script and script[argv[0]] == "eelsgpu.cli:main"
    assert argv[1:] == ["batch"]
    copied = " ".join(arg for op, arg in instrs if op == "COPY")
    for needed_path in ("pyproject.toml", "eelsgpu", "README.md"):
        assert needed_path in copied, f"{name} does not copy {needed_path}"


def test_gpu_extra_has_what_the_cuda_image_needs():
    """The gpu extra the CUDA image installs brings CuPy and dask-cuda; the CUDA base image's
    major version matches CuPy's wheel (cupy-cuda12x on CUDA 12)."""
    extras = _pyproject()["project"]["optional-dependencies"]
    gpu = " ".join(extras["gpu"])
    for name, reqs in extras.items():  # `gpu` is an alias (eelsgpu[gpu-cuda12]): follow it
        gpu = gpu.replace(f"eelsgpu[{name}]", " ".join(reqs))
    assert "cupy-cuda12x" in gpu and "dask-cuda" in gpu
    base = [arg for op, arg in _instructions(DOCKER / "Dockerfile.gpu") if op == "FROM"][0]
    assert re.search(r"nvidia/cuda:12\.", base), base
    py = [shlex.split(arg) for op, arg in _instructions(DOCKER / "Dockerfile.gpu") if op == "RUN"]
    assert any("python3.11" in " ".join(cmd) for cmd in py)  # requires-python >= 3.11
