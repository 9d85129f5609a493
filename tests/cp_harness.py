"""Run a function on 2 gloo processes (diffusers context parallelism on the CPU) and return rank 0's result.

Workers start from a forkserver (see run_on_two_processes). Each worker: init gloo, patch ``torch.accelerator.device_count`` to 1 (diffusers divides by it; 0 on CPU-only
torch), one thread, run ``job()`` and, on rank 0, save its result. Bounded by a timeout; workers are killed on exit.
"""

from __future__ import annotations

import importlib
import os
import socket
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ulysses_mesh(ring: int = 1, ulysses: int = 2):
    """One CPU DeviceMesh reused by every enable_parallelism call of a worker."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (ring, ulysses), mesh_dim_names=("ring", "ulysses"))


def _worker(rank: int, port: int, module: str, job: str, out_path: str, job_args: tuple) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.accelerator.device_count = lambda: 1  # test processes only: diffusers computes rank % device_count()
    try:
        result = getattr(importlib.import_module(module), job)(*job_args)
        if rank == 0:
            torch.save(result, out_path + ".tmp")
            os.replace(out_path + ".tmp", out_path)
    finally:
        dist.destroy_process_group()


def run_on_two_processes(module: str, job: str, *job_args, timeout: float = 58.0):
    """``module.job(*job_args)`` on 2 gloo ranks; rank 0's return value. Raises on a worker error or after ``timeout`` s."""
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "result.pt")
        # forkserver: the server imports torch/diffusers and the job module once per test session, then forks workers
        # from that clean (thread-free) state, so later runs skip the ~10 s imports; each worker is still a new process.
        mp.get_context("forkserver").set_forkserver_preload(["cp_harness", module])
        context = mp.start_processes(
            _worker, args=(free_port(), module, job, out_path, job_args), nprocs=WORLD, join=False, start_method="forkserver"
        )
        try:
            deadline = time.monotonic() + timeout
            while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{module}.{job} on {WORLD} processes took more than {timeout} s")
            return torch.load(out_path, weights_only=False)
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                    process.join(5)
