"""Where training runs: the device, and several processes (torchrun, DDP): joining the
group, agreeing to stop."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from stagegpt.errors import StagegptError


def world_and_rank() -> tuple[int, int]:
    return int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))


def init_distributed() -> bool:
    """Join the process group when launched by torchrun; True if this is a DDP run."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return True


def agree_to_stop(world: int, device: torch.device, time_up: bool,
                  signalled: bool) -> tuple[bool, bool]:
    """One decision from every rank's own clock and signals: under DDP a rank that stopped
    alone would leave the others waiting forever in the next all-reduce."""
    if world == 1:
        return time_up, signalled
    flags = torch.tensor([time_up, signalled], dtype=torch.int32, device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0]), bool(flags[1])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StagegptError("device cuda asked for, but no CUDA GPU is visible; use cpu",
                            "device")
    if name == "mps" and not torch.backends.mps.is_available():
        raise StagegptError("device mps asked for, but MPS is not available; use cpu", "device")
    return torch.device(name)
