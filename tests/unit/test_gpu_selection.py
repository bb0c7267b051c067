"""GPU telemetry reads the server's own GPUs, not every GPU of the host (#28 item 2).

NVML ignores CUDA_VISIBLE_DEVICES: a sampler that polled every GPU and took the max reported another tenant's
memory and utilization as the server's. ``server_gpu_indices`` maps what the server was given (indices or UUIDs,
read as CUDA reads them) to NVML's indices; the mapping is plain data, so no GPU is needed here.
"""

from __future__ import annotations

import pytest

from servingbench.measure.telemetry import GpuSelectionError, server_gpu_indices, visible_nvml_indices

# NVML's view of a 4-GPU host: index and UUID of each
HOST = [{"index": i, "uuid": u} for i, u in enumerate((
    "GPU-8f1c2a3b-0000-1111-2222-333344445555", "GPU-8f1d9e8f-6666-7777-8888-9999aaaabbbb",
    "GPU-1234abcd-0000-0000-0000-000000000000", "GPU-feedbeef-0000-0000-0000-000000000000"))]


@pytest.mark.parametrize("value, indices", [
    (None, [0, 1, 2, 3]),  # unset: every GPU
    ("", []),  # set and empty: none
    ("2", [2]),
    ("3,1", [3, 1]),  # CUDA's order, not NVML's: the server's device 0 is NVML's 3
    (" 2 , 0 ", [2, 0]),
    ("GPU-1234abcd-0000-0000-0000-000000000000", [2]),
    ("GPU-feed,0", [3, 0]),  # a unique UUID prefix, as CUDA accepts it
    ("1,-1,2", [1]),  # CUDA stops at the first invalid entry
    ("1,7,2", [1]),  # an index the host does not have is invalid
    ("GPU-8f1,2", []),  # ambiguous prefix (two GPUs start with it): invalid, so nothing before it survives
    ("GPU-0bad", []),  # no such GPU
    ("1,1", [1]),  # a repeat is invalid
])
def test_cuda_visible_devices_map_to_nvml_indices(value: str | None, indices: list[int]) -> None:
    assert visible_nvml_indices(value, HOST) == indices


def test_the_server_uses_the_first_of_its_visible_gpus() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "3,1,0"}
    assert server_gpu_indices(env, 1, HOST) == [3]  # TP 1: the one GPU another tenant's load on 0-2 cannot touch
    assert server_gpu_indices(env, 2, HOST) == [3, 1]
    assert server_gpu_indices({}, 2, HOST) == [0, 1]


def test_more_gpus_than_visible_is_an_error_naming_the_fix() -> None:
    with pytest.raises(GpuSelectionError, match=r"tensor parallel size 4 needs 4 GPUs.*CUDA_VISIBLE_DEVICES='3,1'"):
        server_gpu_indices({"CUDA_VISIBLE_DEVICES": "3,1"}, 4, HOST)


def test_a_mig_instance_is_refused_with_the_reason() -> None:
    """NVML's figures for the parent GPU include the other MIG instances: no per-server reading exists."""
    with pytest.raises(GpuSelectionError, match="MIG instance.*other instances"):
        visible_nvml_indices("MIG-4f2a1c2e-0000-0000-0000-000000000000", HOST)


def test_a_server_is_sampled_on_the_gpus_its_environment_gives_it(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The session's choice: the server's CUDA_VISIBLE_DEVICES and tensor-parallel size; nothing for a remote one."""
    from servingbench.measure import telemetry
    from servingbench.servers.process import ServerProcess
    from servingbench.servers.vllm import VLLMConfig
    from servingbench.suite.bench import server_gpus

    monkeypatch.setattr(telemetry, "host_gpus", lambda: HOST)  # NVML's answer on the 4-GPU host
    tp2 = ServerProcess(VLLMConfig(model="m", tensor_parallel_size=2), tmp_path, gpu=True,
                        env={"CUDA_VISIBLE_DEVICES": "3,1,0"})
    assert server_gpus(tp2) == ([3, 1], [])
    assert server_gpus(None) == ([], [])  # --server-url: this machine's GPUs are not the deployment's
    assert server_gpus(ServerProcess(VLLMConfig(model="m"), tmp_path)) == ([], [])  # a CPU server
    mig = ServerProcess(VLLMConfig(model="m"), tmp_path, gpu=True, env={"CUDA_VISIBLE_DEVICES": "MIG-4f2a"})
    gpus, note = server_gpus(mig)
    assert gpus == [] and note and note[0].startswith("GPU telemetry left out: CUDA_VISIBLE_DEVICES names MIG")
