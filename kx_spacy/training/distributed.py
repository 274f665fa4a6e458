"""Data parallelism under ``torchrun``: process group, rank-0 helpers, barriers, sharding.

A run started by ``torchrun --nproc_per_node N`` has ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` set;
:class:`DistContext` reads them, joins the process group (gloo on a CPU, nccl on a GPU) and
offers the few collectives a training loop needs. In one plain process every method is a no-op.
"""
from __future__ import annotations

import itertools
import os
from typing import Any, Dict, Iterable, Iterator, List

import torch


class DistContext:
    """This process's place in a data-parallel run (read from the torchrun environment)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device("cpu")
        self.owns_group = False

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and saves."""
        return self.rank == 0

    def init(self, device: torch.device) -> "DistContext":
        """Join the process group (gloo for CPU, nccl for CUDA) unless already joined."""
        import torch.distributed as dist

        self.device = device
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if self.enabled and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            self.owns_group = True
        return self

    def close(self) -> None:
        """Leave the process group if :meth:`init` created it."""
        import torch.distributed as dist

        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_group = False

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def all_sum(self, values: List[float]) -> List[float]:
        """Sum a few floats over ranks (one collective)."""
        if not self.enabled:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def any_true(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        return self.all_sum([1.0 if flag else 0.0])[0] > 0

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable objects)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: List[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers into every rank's ``module`` (in place)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for t in itertools.chain(module.parameters(), module.buffers()):
                dist.broadcast(t.data, src=0)

    def average_gradients(self, params: List[torch.nn.Parameter]) -> None:
        """Average ``.grad`` over the ranks, in place (one collective for the presence flags,
        one per dtype for the values). A parameter with a gradient on some rank only gets the
        mean with zeros elsewhere; one without a gradient on every rank keeps ``grad=None``."""
        if not self.enabled or not params:
            return
        import torch.distributed as dist

        flags = torch.tensor([0.0 if p.grad is None else 1.0 for p in params], device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.SUM)
        live = [p for p, f in zip(params, flags.tolist()) if f > 0]
        for p in live:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        by_dtype: Dict[torch.dtype, List[torch.nn.Parameter]] = {}
        for p in live:
            by_dtype.setdefault(p.grad.dtype, []).append(p)
        for group in by_dtype.values():
            flat = torch.cat([p.grad.reshape(-1) for p in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= self.world
            offset = 0
            for p in group:
                n = p.grad.numel()
                p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
                offset += n

    def wrap(self, module: torch.nn.Module, **ddp_kwargs) -> torch.nn.Module:
        """``module`` in ``DistributedDataParallel`` when the run is distributed, else as is."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, **ddp_kwargs)


def shard(items: Iterable[Any], rank: int, world: int) -> Iterator[Any]:
    """Every ``world``-th item from position ``rank``: this rank's share of a shared stream.

    items (Iterable): the stream every rank reads in the same order.
    rank (int): this process's rank. world (int): the number of processes.
    RETURNS (Iterator): the items of this rank.
    """
    return itertools.islice(items, rank, None, world)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return getattr(module, "module", module) if type(module).__name__ == "DistributedDataParallel" else module

