"""Sharded LoRA training launches: FSDP2 (torch's ``fully_shard`` per transformer block and on the root, applied by
train_lora) and how a DeepSpeed launch must reach accelerate on a machine without an accelerator.

accelerate 1.15 turns an FSDP launch into FSDP only on an accelerator (on a CPU it silently runs plain DDP), so
train_lora shards the model itself with torch's own FSDP2, as accelerate's FSDP2 path does, and checkpoints the
trainable parameters and optimizer state as full (gathered) tensors through ``torch.distributed.checkpoint``.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

import torch
import torch.distributed as dist

SHARDED_OPTIMIZER_FILE = "optimizer_full.pt"  # the gathered optimizer state of a sharded run (rank 0 writes it)


def fsdp_requested() -> bool:
    """Whether the launch asks for FSDP (``accelerate launch`` with an FSDP config sets ``ACCELERATE_USE_FSDP``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def deepspeed_requested() -> bool:
    """Whether the launch asks for DeepSpeed (``accelerate launch`` with a DeepSpeed config sets ``ACCELERATE_USE_DEEPSPEED``)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def accelerator_options(has_accelerator: bool) -> dict:
    """``Accelerator`` arguments for this machine. Without an accelerator, ``cpu=True`` makes a multi-process launch
    DDP over gloo; a DeepSpeed launch needs ``cpu=False`` (accelerate drops DeepSpeed when ``cpu=True``) and the gloo
    backend named (accelerate knows no default backend without a device)."""
    if has_accelerator:
        return {"cpu": False}
    if deepspeed_requested():
        from accelerate.utils import InitProcessGroupKwargs

        return {"cpu": False, "kwargs_handlers": [InitProcessGroupKwargs(backend="gloo")]}
    return {"cpu": True}


def check_deepspeed(distributed_type: str, nonfinite: str) -> bool:
    """Whether this is a DeepSpeed run; ``ValueError`` when the launch asks for DeepSpeed but accelerate chose
    otherwise, or for a setting DeepSpeed cannot honour here."""
    if not deepspeed_requested():
        return False
    if distributed_type != "DEEPSPEED":
        raise ValueError(f"the accelerate config asks for DeepSpeed but accelerate chose {distributed_type}; "
                         "DeepSpeed needs at least 2 processes started by `accelerate launch`")
    if nonfinite == "skip":  # DeepSpeed steps inside accelerator.backward, before vidattn can look at the loss
        raise ValueError("nonfinite: skip cannot skip a DeepSpeed step (DeepSpeed steps inside backward); use nonfinite: error")
    return True


def sharding_plan(distributed_type: str, num_processes: int):
    """The accelerate FSDP plugin (parsed from the launch's ``FSDP_*`` settings) when this run must shard, else None.

    Raises ``ValueError`` for an FSDP launch this path cannot honour, before the model loads."""
    if not fsdp_requested():
        return None
    if distributed_type not in ("MULTI_CPU", "FSDP") or num_processes < 2:
        raise ValueError(  # e.g. NO: one process, or several independent ones; accelerate would train unsharded
            f"the accelerate config asks for FSDP but accelerate chose {distributed_type} with {num_processes} process(es); "
            "FSDP needs at least 2 processes started by `accelerate launch` (or torchrun)"
        )
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables accelerate launch set from the config
    if plugin.fsdp_version != 2:
        raise ValueError(f"the accelerate config asks for FSDP but accelerate chose {distributed_type} and fsdp_version is "
                         f"{plugin.fsdp_version}; set fsdp_version: 2 (vidattn shards LoRA training with FSDP2 only)")
    if not plugin.transformer_cls_names_to_wrap:
        raise ValueError("fsdp_transformer_layer_cls_to_wrap must name the transformer block class (e.g. WanTransformerBlock)")
    if type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy":
        raise ValueError("fsdp_offload_params: true is not supported by vidattn's FSDP2 path; set it to false")
    if plugin.activation_checkpointing:
        raise ValueError("fsdp_activation_checkpointing: true is not supported; set it to false and use the training "
                         "config's gradient_checkpointing: true instead")
    return plugin


def shard_model(model: torch.nn.Module, block_names: Iterable[str], device: torch.device, reshard_after_forward: bool = True) -> int:
    """``fully_shard`` every submodule whose class name is in ``block_names``, then the root, on a 1-D mesh over all
    processes; returns the number of blocks. Build the optimizer afterwards (the parameters become DTensors)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    names = set(block_names)
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        found = sorted({type(m).__name__ for m in model.modules() if "Block" in type(m).__name__})
        raise ValueError(f"fsdp_transformer_layer_cls_to_wrap {sorted(names)} matches no module of {type(model).__name__}; block classes: {found}")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    model.to(device)
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return len(blocks)


def is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (a collective for a sharded one: call it on every rank in the same order)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard (the tensor itself when it is not sharded)."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def shard_like(full: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``full`` laid out like ``reference`` (a DTensor gets this rank's shard; a plain tensor is returned as is)."""
    if not is_sharded(reference):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(reference.device), reference.device_mesh, reference.placements, src_data_rank=None)


def gather_full(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Every tensor whole, fp32, on the CPU, on every rank (collective)."""
    return {name: full_tensor(t.detach()).float().cpu().contiguous() for name, t in named}


def load_full(params: Mapping[str, torch.nn.Parameter], state: Mapping[str, torch.Tensor]) -> None:
    """Copy whole tensors into (possibly sharded) parameters: each rank keeps its own shard."""
    with torch.no_grad():
        for name, tensor in state.items():
            param = params[name]
            param.copy_(shard_like(tensor.to(param.dtype), param))


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when ``flag`` is true on any (so that all ranks skip or stop together)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state keyed by parameter name, gathered whole onto rank 0 (others get ``{}``); collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a state from :func:`full_optimizer_state` (every rank passes the whole state; each keeps its shard)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def local_parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters this rank holds (its shards under FSDP, everything otherwise)."""
    return sum(local_tensor(p).numel() * p.element_size() for p in model.parameters())
