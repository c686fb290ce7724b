"""Runs across processes under ``torchrun`` (DESIGN §6, issue 18): the one place that
speaks ``torch.distributed``.

``torchrun --nproc-per-node N -m mamol {train,classify} …`` starts N copies of the engine;
each finds its rank in the environment torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``) and joins one process
group: NCCL when the run's device is a CUDA GPU (each process takes the GPU of its local
rank), gloo on the CPU. Without torchrun (or with one process) nothing here starts and a
:class:`World` of size 1 makes every collective a no-op, so the core's code paths are the
same either way.

Failure is agreed, not discovered by a hang:

* :meth:`World.agreed` brackets a stage every rank runs (reading the inputs, one round of
  classification blocks): at its end the ranks exchange one flag, and when any rank failed
  every rank raises — the failing one its own error, the others :class:`PeerFailed` naming
  the rank and its message — so every process exits with a non-zero status;
* a collective that fails because a peer process vanished (killed, crashed inside a DDP
  step) raises :class:`PeerFailed` too;
* every collective has a timeout: ``MAMOL_DIST_TIMEOUT`` seconds (default 1800, torch's
  own default for gloo), the longest a rank may wait for the slowest one at a stage's end.

A test-only hook, ``MAMOL_TEST_FAULT=RANK:POINT[:kill]``, makes rank RANK fail (or kill
itself) at a named point (:meth:`World.fault`); the tests use it to simulate a rank that
dies mid-run.
"""
import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Sequence

from .errors import Cancelled, MamolInputError

LOG = logging.getLogger(__name__)

TIMEOUT_ENV = "MAMOL_DIST_TIMEOUT"
THREADS_ENV = "MAMOL_THREADS_PER_RANK"
FAULT_ENV = "MAMOL_TEST_FAULT"
DEFAULT_TIMEOUT_S = 1800.0


class PeerFailed(RuntimeError):
    """Another rank of the run failed (or vanished); this one stops too."""

    def __init__(self, message: str, kind: str = "internal") -> None:
        super().__init__(message)
        self.kind = kind   # the failing rank's kind: input | cancelled | internal


class InjectedFault(RuntimeError):
    """Raised by :meth:`World.fault` where the test hook asks for it."""


def launched_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def timeout_seconds() -> float:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise MamolInputError(f"{TIMEOUT_ENV} must be a number of seconds, got '{text}'.")
    if value <= 0:
        raise MamolInputError(f"{TIMEOUT_ENV} must be positive, got {value:g}.")
    return value


def threads_per_rank(local_world_size: int, cores: Optional[int] = None) -> int:
    """Torch threads for each of ``local_world_size`` processes on one machine: the cores
    this process may use divided among them (``MAMOL_THREADS_PER_RANK`` overrides)."""
    text = os.environ.get(THREADS_ENV, "")
    if text:
        try:
            return max(1, int(text))
        except ValueError:
            raise MamolInputError(f"{THREADS_ENV} must be a whole number, got '{text}'.")
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world_size))


def _error_kind(error: BaseException) -> str:
    if isinstance(error, PeerFailed):
        return error.kind
    if isinstance(error, MamolInputError):
        return "input"
    if isinstance(error, (Cancelled, KeyboardInterrupt)):
        return "cancelled"
    return "internal"


@dataclass
class World:
    """This process's place in the run: rank ``rank`` of ``size`` (``local_*``: on this
    machine). ``size`` 1 is a plain single-process run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: Optional[str] = None       # gloo | nccl; None without a process group
    device: Any = None                  # the device this rank computes on (torch.device)
    timeout_s: float = DEFAULT_TIMEOUT_S
    _flag_device: Any = field(default=None, repr=False)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- collectives (no-ops for one process) ------------------------------------------

    def _collective(self, what: str, call):
        """Run one collective; a peer that vanished becomes :class:`PeerFailed`."""
        try:
            return call()
        except (RuntimeError, ConnectionError) as exc:   # DistBackendError is a RuntimeError
            if isinstance(exc, PeerFailed):
                raise
            raise PeerFailed(
                f"another process of the run stopped or did not answer within "
                f"{self.timeout_s:g} s while the ranks {what} ({_one_line(exc)}); see the "
                "other ranks' messages") from exc

    def agree(self, error: Optional[BaseException]) -> None:
        """End a stage: if this rank or any other failed, raise on every rank."""
        if not self.distributed:
            if error is not None:
                raise error
            return
        import torch
        import torch.distributed as dist
        flag = torch.tensor([0 if error is None else 1], dtype=torch.int32,
                            device=self._flag_device)
        self._collective("compared their status",
                         lambda: dist.all_reduce(flag, op=dist.ReduceOp.MAX))
        if int(flag.item()) == 0:
            return
        report = None if error is None else (self.rank, _error_kind(error),
                                             _one_line(error) or type(error).__name__)
        reports: List[Any] = [None] * self.size
        self._collective("exchanged their errors",
                         lambda: dist.all_gather_object(reports, report))
        if error is not None:
            raise error
        rank, kind, message = next(r for r in reports if r is not None)
        if kind == "input":
            raise MamolInputError(f"rank {rank} of {self.size} stopped the run: {message}")
        if kind == "cancelled":
            raise Cancelled(f"rank {rank} of {self.size} was cancelled: {message}")
        raise PeerFailed(f"rank {rank} of {self.size} failed: {message}", kind)

    @contextlib.contextmanager
    def agreed(self) -> Iterator[None]:
        """Run a stage on every rank; when it fails on any of them, it fails on all (see
        :meth:`agree`). Do not run other collectives inside."""
        try:
            yield
        except BaseException as exc:  # noqa: BLE001 - re-raised on every rank by agree()
            self.agree(exc)
            raise
        self.agree(None)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a picklable object)."""
        if not self.distributed:
            return value
        import torch.distributed as dist
        box = [value if self.is_main else None]
        self._collective("shared rank 0's settings", lambda: dist.broadcast_object_list(box, 0))
        return box[0]

    def gather(self, value: Any) -> List[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist
        values: List[Any] = [None] * self.size
        self._collective("collected their results",
                         lambda: dist.all_gather_object(values, value))
        return values

    def sum_(self, tensor) -> None:
        """Sum ``tensor`` over the ranks, in place."""
        if not self.distributed:
            return
        import torch.distributed as dist
        self._collective("summed a result", lambda: dist.all_reduce(tensor))

    def fault(self, point: str) -> None:
        """Test-only: raise where ``MAMOL_TEST_FAULT`` names this rank and ``point``
        (``RANK:POINT``); with ``RANK:POINT:kill`` the process kills itself instead, as the
        out-of-memory killer would, with no chance to clean up or to tell the others."""
        if os.environ.get(FAULT_ENV, "") == f"{self.rank}:{point}:kill":
            import signal
            os.kill(os.getpid(), signal.SIGKILL)
        if self.faulty(point):
            raise InjectedFault(f"test fault injected on rank {self.rank} at '{point}' "
                                f"({FAULT_ENV})")

    def faulty(self, point: str) -> bool:
        return os.environ.get(FAULT_ENV, "") == f"{self.rank}:{point}"

    def shard(self, items: Sequence[Any]) -> List[Any]:
        """This rank's share of ``items``, dealt round-robin (item i to rank i mod size)."""
        return list(items[self.rank::self.size])


SINGLE = World()


def start(device_name: str = "auto") -> World:
    """Join the run torchrun started (or return a one-process :class:`World`).

    The device follows ``device_name``: 'auto' takes this rank's GPU (``cuda:LOCAL_RANK``)
    when CUDA is present, else the CPU (never Apple's GPU); 'cuda' is this rank's GPU;
    'cuda:N' is kept; 'mps' is refused (torch.distributed has no backend for it). NCCL for
    GPUs, gloo for the CPU. Torch threads: see :func:`threads_per_rank`."""
    size = launched_world_size()
    if size <= 1:
        return SINGLE
    import datetime

    import torch
    import torch.distributed as dist

    from .devices import resolve_device
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
    text = (device_name or "auto").strip().lower()
    if text in ("auto", "cuda") and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise MamolInputError(
                f"{local_size} processes on this machine but only "
                f"{torch.cuda.device_count()} GPU(s): start one process per GPU "
                "(torchrun --nproc-per-node), or use --device cpu.")
        device = torch.device("cuda", local_rank)
    elif text == "auto":
        device = torch.device("cpu")
    else:
        device = resolve_device(text)
    if device.type == "mps":
        raise MamolInputError(
            "torchrun cannot share a run over Apple's GPU (MPS): torch.distributed has no "
            "backend for it (NCCL is for CUDA GPUs, gloo for CPUs). Run one process without "
            "torchrun to use the GPU, or use --device cpu.")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(threads_per_rank(local_size))
    timeout = timeout_seconds()
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return World(rank=rank, size=size, local_rank=local_rank, local_size=local_size,
                 backend=backend, device=device, timeout_s=timeout,
                 _flag_device=device if backend == "nccl" else None)


def finish(world: World) -> None:
    """Leave the process group (a no-op for one process)."""
    if not world.distributed:
        return
    import torch.distributed as dist
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except (RuntimeError, ConnectionError) as exc:   # a peer already gone
            LOG.debug("destroy_process_group: %s", exc)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
