"""Data-parallel calibration on torch.distributed: every rank holds the whole frozen model and the same
coefficients, samples the same batch (same seed), backpropagates its share of the batch's parts, and the
gradients are summed over ranks before the optimizer step, so every rank takes the same step.

Started by torchrun (`torchrun --nproc-per-node N -m pear_edge.cli calibrate ...`), which sets RANK,
WORLD_SIZE, LOCAL_RANK and the rendezvous; several machines join by torchrun's own flags (--nnodes,
--node-rank, --rdzv-endpoint). gloo on the CPU, NCCL on GPUs (one GPU per rank: cuda:LOCAL_RANK).
Without torchrun every function here is the one-process case and touches no process group.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from pear_edge.base.errors import PearError

WORLD_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched() -> bool:
    """True in a process that torchrun started as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> int:
    """The number of ranks: of the process group, else as torchrun set it (1 without torchrun)."""
    return dist.get_world_size() if active() else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank: in the process group, else as torchrun set it (also after the group is left)."""
    return dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """The rank that prints, shows progress and writes files (rank 0; the only one without torchrun)."""
    return rank() == 0


def rank_device(device: str) -> str:
    """The device of this rank: `device` itself, or for CUDA the local rank's GPU (cuda:LOCAL_RANK)."""
    if launched() and device in ("cuda", "auto") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


@contextlib.contextmanager
def process_group(device: str) -> Iterator[None]:
    """Join torchrun's process group for the block (gloo for the CPU, NCCL for CUDA) and leave it after;
    a process not started by torchrun runs alone and joins nothing."""
    if not launched() or active():
        yield
        return
    missing = [name for name in WORLD_ENV if name not in os.environ]
    if missing:
        raise PearError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start several ranks with torchrun "
                        "(torchrun --nproc-per-node N -m pear_edge.cli calibrate ...)")
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend)
    try:
        yield
    finally:
        dist.destroy_process_group()


def share(parts: Sequence) -> list:
    """This rank's parts of a batch: every world()-th one, starting at rank() (all of them alone)."""
    return list(parts[rank()::world()])


def parts_per_rank(batch: int, micro: int) -> int:
    """The micro-batch size that gives every rank a part: `micro` when set, else the batch split in world() parts
    (micro-batching is execution-only: the same gradient, see proxy.backward_in_parts)."""
    return micro or (-(-batch // world()) if world() > 1 else 0)


def all_reduce_sum(value: float, device: torch.device | str = "cpu") -> float:
    """A float summed over ranks (the batch's loss from every rank's share of its parts)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def backward_shared(backward_parts: Callable[[list], float], parts: Sequence, params: Sequence[torch.Tensor]) -> float:
    """Run `backward_parts(this rank's parts)` (it backpropagates each part and returns their summed loss) and sum
    its gradient of `params` and its loss over ranks; gradients already in `params` stay as they were, once.

    Alone, exactly `backward_parts(parts)`. With N ranks each computes its share's gradient, an all-reduce sums
    them, and each rank then holds the gradient of the whole batch (the parts' weights are shares of the whole
    batch), up to float summation order."""
    if not active():
        return backward_parts(list(parts))
    stashed = [p.grad for p in params]
    for p in params:
        p.grad = None
    mine = share(parts)
    # Every rank runs as many passes as the busiest one (zero-weight repeats): sharded weights are gathered
    # by collectives inside each forward and backward, which all ranks must enter alike.
    mine += [(parts[0][0], 0.0)] * (-(-len(parts) // world()) - len(mine))
    loss = backward_parts(mine)
    for p, before in zip(params, stashed):
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        dist.all_reduce(grad)
        p.grad = grad if before is None else before + grad
    return all_reduce_sum(loss, params[0].device if params else "cpu")


def shard_weights(loaded) -> None:
    """FSDP (torch.distributed.fsdp.fully_shard) over the ranks: each rank keeps 1/N of every decoder layer's
    frozen weights (and of the rest of the model) and gathers a layer's whole weights only while it computes
    it, so a model N times larger than one device or machine fits. The fingerprint is taken first, of the whole
    weights. Data parallelism is unchanged: each rank still backpropagates its share of every batch."""
    if not active():
        raise PearError("--shard-weights needs several ranks: start them with torchrun "
                        "(torchrun --nproc-per-node N -m pear_edge.cli calibrate --shard-weights on ...)")
    loaded.fingerprint()
    for layer in loaded.adapter.layers:
        fully_shard(layer)
    fully_shard(loaded.model)


def barrier() -> None:
    if active():
        dist.barrier()
