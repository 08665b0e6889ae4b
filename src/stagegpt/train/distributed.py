"""Where training runs: the device, and several processes (torchrun, DDP): joining the
group, agreeing to stop."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from stagegpt.errors import StagegptError


def _env_count(name: str, default: int) -> int:
    text = os.environ.get(name, str(default))
    if not text.strip().isdigit():
        raise StagegptError(f"the environment variable {name} is {text!r:.40}, not a whole "
                            "number; torchrun sets it, unset it to train in one process")
    return int(text)


def env_world() -> int:
    """WORLD_SIZE: the number of processes torchrun started (1 without torchrun)."""
    return _env_count("WORLD_SIZE", 1)


def world_and_rank() -> tuple[int, int]:
    """(processes, this process's rank) of the group this process has joined."""
    world, rank = env_world(), _env_count("RANK", 0)
    if world > 1 and not dist.is_initialized():
        raise StagegptError(f"WORLD_SIZE is {world} but this process joined no process group: "
                            "`stagegpt train` under torchrun does (or call init_distributed() "
                            "first); unset WORLD_SIZE to train in one process")
    if not 0 <= rank < world:
        raise StagegptError(f"RANK is {rank} but WORLD_SIZE is {world}; torchrun sets both")
    return world, rank


def init_distributed() -> bool:
    """Join the process group when launched by torchrun; True if this is a DDP run."""
    world = env_world()
    if world <= 1:
        return False
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        verb = "are" if len(missing) > 1 else "is"
        raise StagegptError(f"WORLD_SIZE is {world} but {' and '.join(missing)} {verb} "
                            "unset: start the processes with torchrun (docs/training.md), or "
                            "unset WORLD_SIZE to train in one process")
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


def mean_over_ranks(world: int, device: torch.device, value: float) -> float:
    """The mean of every rank's `value` (a loss on its share of a global batch): the loss
    of the whole batch, the same for every world size."""
    if world == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.item() / world


PEER_LOST = ("Connection closed by peer", "Connection reset by peer")  # gloo's words


def lost_a_peer(err: BaseException) -> bool:
    """Whether a collective failed because another process of the run ended first."""
    return isinstance(err, RuntimeError) and any(words in str(err) for words in PEER_LOST)


def from_every_rank(world: int, text: str) -> list[str]:
    """Every rank's `text`, in rank order, on every rank; [] in a single process."""
    if world == 1:
        return []
    texts: list = [None] * world
    dist.all_gather_object(texts, text)
    return texts


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
