"""Schedulers: localhost-only binding of what eelsgpu starts, the SLURM job script, and a clear
error for local-cuda without dask-cuda.

Truth: the addresses the started scheduler and workers report, and the job script dask-jobqueue
writes.
"""

from __future__ import annotations

import pytest

from eelsgpu.engine import schedulers
from eelsgpu.errors import InputError


def test_processes_scheduler_binds_to_localhost(tmp_path):
    """The LocalCluster eelsgpu starts listens on 127.0.0.1 (scheduler and workers)."""
    with schedulers.scheduler_context("processes", {"workers": 1}, quiet=True) as info:
        client = info.scheduler
        assert info.address.startswith("tcp://127.0.0.1:")
        workers = client.scheduler_info()["workers"]
        assert workers and all(w.startswith("tcp://127.0.0.1:") for w in workers)


def test_slurm_needs_a_named_interface_and_builds_its_job_script(tmp_path):
    """slurm without --interface/--host is refused (we never bind to all interfaces); with a host
    named, the job script asks for the queue, walltime, memory and GPUs of the manifest."""
    pytest.importorskip("dask_jobqueue")
    with pytest.raises(InputError, match="--interface"):
        schedulers._jobqueue_cluster("slurm", {"queue": "gpu"})
    cluster = schedulers._jobqueue_cluster(
        "slurm",
        {
            "queue": "gpu",
            "cores": 8,
            "memory": "32GB",
            "walltime": "02:00:00",
            "gpus": 2,
            "host": "127.0.0.1",
        },
    )
    try:
        script = cluster.job_script()
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    finally:
        cluster.close()
    assert "#SBATCH -p gpu" in script and "--gres=gpu:2" in script
    assert "02:00:00" in script and "eelsgpu" not in script.split("\n")[0]


def test_local_cuda_without_dask_cuda_names_the_extra():
    """--scheduler local-cuda without dask-cuda (or a GPU) is a clear error naming the extra."""
    try:
        import dask_cuda  # noqa: F401

        pytest.skip("dask-cuda is installed here")
    except ImportError:
        pass
    from eelsgpu.engine.device import DeviceError

    with pytest.raises(DeviceError, match=r"eelsgpu\[gpu\]"):
        with schedulers.scheduler_context("local-cuda"):
            pass


def test_each_worker_of_a_multi_gpu_job_gets_its_own_gpu(monkeypatch):
    """slurm/pbs with gpus=2: the job script exports the GPU count and preloads the pinning
    module; each worker process (named name-0, name-1 by dask) then sees one GPU, from the list
    the batch system gave the job (or 0..n-1). Truth: the job script dask-jobqueue writes and
    the environment the preload sets."""
    pytest.importorskip("dask_jobqueue")
    from types import SimpleNamespace

    from eelsgpu.engine import gpu_worker

    cluster = schedulers._jobqueue_cluster(
        "slurm", {"queue": "gpu", "cores": 8, "gpus": 2, "host": "127.0.0.1"}
    )
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "--preload eelsgpu.engine.gpu_worker" in script
    assert f"export {gpu_worker.ENV_GPUS}=2" in script and "--nworkers 2" in script
    monkeypatch.setenv(gpu_worker.ENV_GPUS, "2")
    for name, visible, want in [
        ("SLURMCluster-3-0", "4,5", "4"),
        ("SLURMCluster-3-1", "4,5", "5"),
        ("PBSCluster-0-1", None, "1"),
    ]:
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        gpu_worker.dask_setup(SimpleNamespace(name=name))
        import os

        assert os.environ["CUDA_VISIBLE_DEVICES"] == want
    # one GPU per job: nothing to pin (the batch system's own list stays)
    monkeypatch.setenv(gpu_worker.ENV_GPUS, "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    gpu_worker.dask_setup(SimpleNamespace(name="SLURMCluster-3"))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "7"
    # srun (SLURMRunner): worker ranks 2 and 3 on a node with 2 GPUs take different ones
    assert {gpu_worker.gpu_for_worker(r, "0,1") for r in (2, 3)} == {"0", "1"}
