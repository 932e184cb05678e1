"""Data-parallel training on PyTorch's own engine: torchrun starts one process per device, each
process trains a DistributedDataParallel copy of the model on its own shard of every batch.

    torchrun --nproc-per-node 2 -m trainlab train CONFIG.yaml     # or: trainlab train CONFIG --nproc 2

What each piece does here:
- `setup` joins the process group that torchrun's environment describes (RANK, WORLD_SIZE,
  LOCAL_RANK, MASTER_ADDR/PORT): backend nccl on CUDA (one device per process, from LOCAL_RANK),
  gloo on CPU. `wrap_model` wraps the model in DDP, which averages gradients across processes during
  `backward()`, so 2 processes x batch 32 take the same step as 1 process x batch 64.
- Only rank 0 writes; the state that differs per rank (RNG streams, partial sums of the epoch in
  progress) is gathered to rank 0 into the one checkpoint (`gather_rank_states`) and each rank takes
  its own back on resume (`own_rank_state`).
- Evaluation shards are exact (`eval_shard`: `rank::world_size`, no padding), so reduced loss sums
  and torchmetrics' synced states count every sample of the split once.
- `launch` is `trainlab train --nproc N`: the same command again under `torch.distributed.run`,
  rendezvous on 127.0.0.1 (c10d has no authentication).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset

from trainlab.data.base import ArrayDataset
from trainlab.engine.callbacks import Callback

T = TypeVar("T")
LONG_WAIT = timedelta(hours=24)  # local_main_first: the other ranks wait this long for local rank 0


def env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) in a plain process."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def restarted() -> bool:
    """True in a worker that torchrun restarted after a failure (it must resume from last.pt)."""
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") not in ("", "0")


def setup(device: torch.device | str | None = None) -> tuple[int, int, int]:
    """Joins the process group when WORLD_SIZE > 1 (once); returns (rank, world_size, local_rank).
    `device`: the training device (default: CUDA when available) decides nccl or gloo."""
    rank, world_size, local_rank = env()
    if world_size <= 1 or is_initialized():
        return rank, world_size, local_rank
    device = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    store = _restart_store(rank, world_size)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)  # one GPU per process; torch.device("cuda") now means this one
        dist.init_process_group(
            "nccl",
            device_id=torch.device("cuda", local_rank),
            store=store,
            rank=rank if store else -1,
            world_size=world_size if store else -1,
        )
    else:
        dist.init_process_group(
            "gloo", store=store, rank=rank if store else -1, world_size=world_size if store else -1
        )
    return rank, world_size, local_rank


def _restart_store(rank: int, world_size: int) -> dist.Store | None:
    """After an elastic restart, the store of torchrun's agent (shared by every attempt) still holds the
    previous attempt's connection keys, and the new processes would read their dead peers' addresses
    (pytorch issue 167288). A prefix per attempt keeps the attempts apart. None: the usual env://."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or "0"
    if restart == "0" or os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true":
        return None
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False
    )
    return dist.PrefixStore(f"trainlab/attempt_{restart}", store)


def teardown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """Processes in the initialised process group; 1 without one."""
    return dist.get_world_size() if is_initialized() else 1


def local_main_first(work: Callable[[], T], failed: Callable[[int, str], Exception]) -> T:
    """`work()` in every process, first in each machine's local rank 0 (LOCAL_RANK, else RANK), which
    writes what the others then read (e.g. the image cache). The others wait in a collective that carries
    every local rank 0's outcome, so an exception there stops every rank (`failed(rank, message)` is
    raised) instead of leaving them waiting. The wait has its own gloo group with a long timeout: decoding
    a large folder may outlast the default group's (10 min with nccl). Just `work()` without a group."""
    if world_size() == 1:
        return work()
    rank = dist.get_rank()
    first = int(os.environ.get("LOCAL_RANK", rank)) == 0
    group = dist.new_group(backend="gloo", timeout=LONG_WAIT)  # a collective: before anyone is busy
    result, error = None, None
    if first:
        try:
            result = work()
        except Exception as e:  # noqa: BLE001 - every rank must hear of it, then it is raised here
            error = e
    outcomes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, None if error is None else str(error), group=group)
    dist.destroy_process_group(group)
    if error is not None:
        raise error
    for other, message in enumerate(outcomes):
        if message is not None:
            raise failed(other, message)
    return result if first else work()


def barrier() -> None:
    """Waits for every rank (e.g. until rank 0 has written a file the others read); no-op alone."""
    if is_initialized():
        dist.barrier()


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP copy of `model`: rank 0's weights are broadcast at construction, gradients are averaged
    across ranks in backward()."""
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return DistributedDataParallel(model, device_ids=[index], output_device=index)
    return DistributedDataParallel(model)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank (e.g. the run directory rank 0 chose)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def broadcast_weights(model: nn.Module, src: int = 0) -> None:
    """Copies rank `src`'s parameters and buffers to every rank (e.g. after rank 0 loaded best.pt:
    works across machines without a shared file system)."""
    if not is_initialized():
        return
    for tensor in getattr(model, "module", model).state_dict().values():
        dist.broadcast(tensor, src)


# ----------------------------------------------------------------------------- evaluation shards


def eval_shard(dataset: Dataset | None, rank: int, world_size: int) -> Dataset | None:
    """Samples rank, rank + W, rank + 2W, ... of an evaluation split: every sample on exactly one
    rank. Unlike the training shards there is no padding (shards may differ by one sample): the
    reductions are sums, so equal counts are not needed, and padding would count samples twice."""
    if dataset is None or world_size <= 1:
        return dataset
    index = torch.arange(rank, len(dataset), world_size)
    if isinstance(dataset, ArrayDataset):
        return dataset.subset(index)
    return Subset(dataset, index.tolist())


def gather_eval_outputs(
    kept: dict[str, torch.Tensor] | None, rank: int, world_size: int
) -> dict[str, torch.Tensor] | None:
    """Per-rank outputs/targets of `eval_shard`s -> the whole split in dataset order on rank 0 (None
    elsewhere). Rank r holds samples r::W, so interleaving the shards restores the order."""
    if world_size <= 1 or not is_initialized():
        return kept
    parts: list[Any] = [None] * world_size if rank == 0 else None
    dist.gather_object(kept, parts, dst=0)
    if rank != 0:
        return None
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    out = {}
    for key in parts[0]:
        n = sum(len(p[key]) for p in parts)
        whole = parts[0][key].new_empty((n, *parts[0][key].shape[1:]))
        for r, p in enumerate(parts):
            whole[r::world_size] = p[key]
        out[key] = whole
    return out


def all_reduce_sums(*values: float | torch.Tensor) -> list[float]:
    """Sums numbers over all ranks (one collective); the values themselves when not distributed."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if is_initialized():
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
    return t.tolist()


# ----------------------------------------------------------------------------- per-rank state


def gather_rank_states(local: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Every rank's `local` state (RNG, partial sums) as a list on rank 0, None on the others.
    A collective: all ranks must call it together (before rank 0 writes a checkpoint)."""
    if not is_initialized():
        return [local]
    rank, world_size = dist.get_rank(), dist.get_world_size()
    states: list[Any] | None = [None] * world_size if rank == 0 else None
    dist.gather_object(local, states, dst=0)
    return states


def own_rank_state(state: dict[str, Any], rank: int, world_size: int) -> dict[str, Any] | None:
    """This rank's entry of a checkpoint's `rank_states`, when it was saved with the same number of
    processes; None otherwise (the caller then keeps its fresh per-rank RNG)."""
    states = state.get("rank_states")
    if not states or len(states) != world_size:
        return None
    return states[rank]


def merge_progress(states: list[dict[str, Any]] | None) -> dict[str, float] | None:
    """Partial epoch sums of all ranks added up (for a resume with another number of processes)."""
    parts = [s.get("epoch_progress") for s in states or [] if s.get("epoch_progress")]
    if not parts:
        return None
    merged = {k: sum(p[k] for p in parts) for k in parts[0]}
    for k in ("seconds", "data_wait"):  # wall time, not a per-sample sum
        if k in merged:
            merged[k] = max(p[k] for p in parts)
    return merged


def world_size_change(saved_world_size: int, world_size: int, batch_size: int) -> str | None:
    """The message for `--resume` with another number of processes; None when it did not change."""
    if saved_world_size == world_size:
        return None
    return (
        f"resuming a run trained with {saved_world_size} process(es) on {world_size}: data.batch_size "
        f"{batch_size} is per process, so the effective batch size changes from "
        f"{saved_world_size * batch_size} to {world_size * batch_size} (scale optimizer.lr yourself if you "
        "want the same step size); each process restarts its own random stream, "
        "and a partly done epoch continues at the same fraction of its batches on the new shards."
    )


def rescale_position(position: int, saved_world_size: int, world_size: int) -> int:
    """Batches served this epoch by each of `saved_world_size` ranks -> the same fraction of the epoch
    on `world_size` ranks (the per-rank epoch is saved/new times as long)."""
    return (position * saved_world_size) // world_size


# ----------------------------------------------------------------------------- launching


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


_TORCHRUN = (
    "import sys; from trainlab.engine.distributed import torchrun_main; sys.exit(torchrun_main(sys.argv[1:]))"
)


def torchrun_command(
    nproc: int, argv: list[str], max_restarts: int = 0, port: int | None = None
) -> list[str]:
    """torchrun (`torch.distributed.run ... -m trainlab <argv>`, through `torchrun_main`) for one machine, on
    127.0.0.1."""
    port = port or free_port()
    return [
        sys.executable,
        "-c",
        _TORCHRUN,
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--local-addr",
        "127.0.0.1",
        "--max-restarts",
        str(max_restarts),
        "-m",
        "trainlab",
        *argv,
    ]


def strip_launch_options(argv: list[str]) -> list[str]:
    """argv without --nproc N / --max-restarts K (the workers must not launch again)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--nproc", "--max-restarts"):
            skip = True
            continue
        if a.startswith(("--nproc=", "--max-restarts=")):
            continue
        out.append(a)
    return out


def torchrun_main(args: list[str]) -> int:
    """torchrun's main with its failure turned into trainlab's exit code, instead of torchrun's traceback:
    2 when every failed rank stopped on bad input (exit 2; each rank printed its message), 130 after
    Ctrl-C, else 1, with one line per failed rank (its exit code, and its error file when torch wrote one)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    # its "failed (exitcode: 2) local_rank: 0 ..." lines: the ranks' own messages, or ours below, say it
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    try:
        main(args)
    except ChildFailedError as e:
        codes = {rank: failure.exitcode for rank, failure in sorted(e.failures.items())}
        if set(codes.values()) == {2}:
            return 2
        if set(codes.values()) <= {130, -signal.SIGINT}:
            return 130
        for rank, code in codes.items():
            print(f"trainlab: rank {rank} failed (exit code {code})", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SignalException):  # the workers were stopped (and saved last.pt)
        return 130
    return 0


def launch(nproc: int, argv: list[str], max_restarts: int = 0) -> int:
    """Runs `trainlab <argv>` (argv as given to trainlab, e.g. ["train", "cfg.yaml", "--nproc", "2"])
    in `nproc` processes under torchrun; returns its exit code (`torchrun_main`: 2 when the ranks stopped
    on bad input, 1 naming the failed ranks)."""
    env_vars = dict(os.environ)
    # Each process gets its share of the cores: without these, every process starts one OpenMP
    # thread per core and they spin-wait on each other.
    env_vars.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env_vars.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cmd = torchrun_command(nproc, strip_launch_options(argv), max_restarts)
    try:
        return subprocess.call(cmd, env=env_vars)
    except KeyboardInterrupt:  # torchrun forwards the signal to the workers, which save last.pt
        return 130


# ----------------------------------------------------------------------------- test-only fault


class FaultInjection(Callback):
    """TEST-ONLY FAULT (the one place): with TRAINLAB_FAULT_EXIT_AT_STEP=S in the environment, rank
    TRAINLAB_FAULT_RANK (default 1) calls os._exit(1) right after global step S of the first attempt
    (TORCHELASTIC_RESTART_COUNT 0), like a worker killed by the machine. Elastic-restart tests use it."""

    def __init__(self, rank: int):
        self.rank = rank
        self.step = int(os.environ.get("TRAINLAB_FAULT_EXIT_AT_STEP", "0") or 0)
        self.fault_rank = int(os.environ.get("TRAINLAB_FAULT_RANK", "1"))

    def on_batch_end(self, step: int, logs: dict[str, Any]) -> None:
        if step == self.step and self.rank == self.fault_rank and not restarted():
            sys.stderr.write(
                f"rank {self.rank}: TRAINLAB_FAULT_EXIT_AT_STEP={self.step}: exiting with code 1\n"
            )
            sys.stderr.flush()
            os._exit(1)


def fault_callbacks(rank: int) -> list[Callback]:
    return [FaultInjection(rank)] if os.environ.get("TRAINLAB_FAULT_EXIT_AT_STEP") else []
