"""Who computes a batch's contributions: the calling thread, threads, processes or MPI ranks.

Every pool splits a batch into contiguous slices, one per worker, has each worker compute its
slice's :class:`~bluesky_ptycho.engine.batched.Contributions` against the same object and probe,
and returns them for the whole batch in batch order. A pattern's contribution does not depend
on which worker computed it, so the result does not depend on the number of workers.

- :class:`InlineWorkers`: the calling thread (one worker).
- :class:`ThreadWorkers`: threads of this process (NumPy's ufuncs and the FFTs release the GIL).
- :class:`ProcessWorkers`: processes on this machine; the patterns are copied once into shared
  memory (again only when more have arrived), object and probe are shared per batch, and only
  index slices travel through pipes: no frame is pickled per pass.
- :class:`MPIWorkers`: MPI ranks (mpi4py), each holding all patterns; the slices' contributions
  are gathered on every rank in rank order (``Allgatherv``), which is batch order, so every rank
  applies the same update and holds the same object.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import shared_memory
from typing import Any, Protocol, cast

import numpy as np

from bluesky_ptycho.backend import Backend, get_backend
from bluesky_ptycho.engine.batched import BatchedKernel, Contributions
from bluesky_ptycho.engine.store import PatternStore

__all__ = [
    "EXECUTORS",
    "InlineWorkers",
    "MPIWorkers",
    "ProcessWorkers",
    "ThreadWorkers",
    "Workers",
    "make_workers",
    "split",
]

EXECUTORS = ("threads", "processes", "mpi")


class Workers(Protocol):
    """A pool that computes the contributions of a batch."""

    size: int

    def contributions(
        self,
        kernel: BatchedKernel,
        obj: Any,
        probe: Any,
        store: PatternStore,
        indices: np.ndarray,
        eps: float,
    ) -> Contributions:
        """The contributions of ``indices``, in their order."""
        ...

    def close(self) -> None:
        """Release threads, processes and shared memory (idempotent)."""
        ...


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ``(start, stop)`` slices of ``range(n)``, sizes differing by <= 1."""
    edges = np.linspace(0, n, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges.tolist())]


def concat(backend: Backend, parts: list[Contributions]) -> Contributions:
    """One :class:`Contributions` from slices, in the given order."""
    parts = [p for p in parts if len(p)] or parts[:1]
    if len(parts) == 1:
        return parts[0]
    xp = backend.xp
    return Contributions(
        xp.concat([p.object_num for p in parts]),
        xp.concat([p.probe_num for p in parts]),
        xp.concat([p.probe_den for p in parts]),
        np.concatenate([p.error_num for p in parts]),
    )


def make_workers(executor: str, workers: int) -> Workers:
    """A pool by name: ``"threads"``, ``"processes"`` or ``"mpi"`` (size from the launcher)."""
    if executor == "mpi":
        return MPIWorkers()
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    if executor == "threads":
        return InlineWorkers() if int(workers) == 1 else ThreadWorkers(int(workers))
    if executor == "processes":
        return InlineWorkers() if int(workers) == 1 else ProcessWorkers(int(workers))
    raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")


class InlineWorkers:
    """The calling thread computes the whole batch."""

    size = 1

    def contributions(
        self,
        kernel: BatchedKernel,
        obj: Any,
        probe: Any,
        store: PatternStore,
        indices: np.ndarray,
        eps: float,
    ) -> Contributions:
        return kernel.contributions(obj, probe, store, indices, eps)

    def close(self) -> None:
        return None


class ThreadWorkers:
    """``size`` threads; the calling thread waits while they work."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size!r}")
        self.size = int(size)
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=self.size, thread_name_prefix="ptycho-batch"
        )

    def contributions(
        self,
        kernel: BatchedKernel,
        obj: Any,
        probe: Any,
        store: PatternStore,
        indices: np.ndarray,
        eps: float,
    ) -> Contributions:
        if self._pool is None:
            raise RuntimeError("the thread pool is closed")
        futures = [
            self._pool.submit(kernel.contributions, obj, probe, store, indices[a:b], eps)
            for a, b in split(indices.size, self.size)
        ]
        return concat(kernel.backend, [f.result() for f in futures])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class _SharedArray:
    """A NumPy array in a named shared-memory block (created or attached)."""

    def __init__(self, shape: tuple[int, ...], dtype: Any, name: str | None = None) -> None:
        dt = np.dtype(dtype)
        nbytes = max(int(np.prod(shape)) * dt.itemsize, 1)
        if name is None:
            self.shm = shared_memory.SharedMemory(create=True, size=nbytes)
            self.owner = True
        else:
            self.shm = shared_memory.SharedMemory(name=name)
            self.owner = False  # the spawned children share the parent's resource tracker
        self.array: np.ndarray = np.ndarray(shape, dtype=dt, buffer=self.shm.buf)
        self.spec = (self.shm.name, tuple(shape), dt.str)

    def close(self) -> None:
        del self.array
        self.shm.close()
        if self.owner:
            self.shm.unlink()


class _SharedPatterns:
    """The read-only view of a :class:`PatternStore` that a worker process needs."""

    def __init__(self, codes: np.ndarray, meta: dict[str, np.ndarray]) -> None:
        self._codes = codes
        self.frame_shape = (int(codes.shape[1]), int(codes.shape[2]))
        self.corners = meta["corners"]
        self.scales = meta["scales"]
        self.sums = meta["sums"]
        self.masked = meta["masked"]

    def codes(self, j: int) -> np.ndarray:
        return self._codes[j]


def _process_main(conn: Any) -> None:
    """A worker process: attach the shared blocks, compute slices until told to stop."""
    backend = get_backend("numpy")
    shared: dict[str, _SharedArray] = {}
    meta: dict[str, np.ndarray] = {}
    kernel: BatchedKernel | None = None
    try:
        while True:
            msg = conn.recv()
            kind = msg[0]
            if kind == "close":
                break
            try:
                if kind == "attach":
                    for key, spec in msg[1].items():
                        if key in shared:
                            shared.pop(key).close()
                        shared[key] = _SharedArray(spec[1], spec[2], name=spec[0])
                    if len(msg) > 2:
                        meta = msg[2]
                    conn.send(("ok", None))
                elif kind == "run":
                    _, start, stop, offset, eps = msg
                    patterns = _SharedPatterns(shared["codes"].array, meta)
                    if kernel is None or kernel.shape != patterns.frame_shape:
                        kernel = BatchedKernel(backend, patterns.frame_shape)
                    errors = _run_slice(kernel, shared, patterns, start, stop, offset, eps)
                    conn.send(("ok", errors))
                    del patterns  # no view may outlive a block replaced by the next "attach"
                else:
                    conn.send(("error", f"unknown message {kind!r}"))
            except Exception as exc:  # reported to the parent, which raises
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        for s in shared.values():
            s.close()
        conn.close()


def _run_slice(
    kernel: BatchedKernel,
    shared: dict[str, _SharedArray],
    patterns: _SharedPatterns,
    start: int,
    stop: int,
    offset: int,
    eps: float,
) -> np.ndarray:
    idx = shared["batch"].array[start:stop].copy()
    # _SharedPatterns has every PatternStore member that contributions reads (frame_shape,
    # corners, scales, sums, masked, codes)
    store = cast(PatternStore, patterns)
    part = kernel.contributions(shared["object"].array, shared["probe"].array, store, idx, eps)
    k = len(part)
    shared["object_num"].array[offset : offset + k] = part.object_num
    shared["probe_num"].array[offset : offset + k] = part.probe_num
    shared["probe_den"].array[offset : offset + k] = part.probe_den
    return part.error_num


class ProcessWorkers:
    """``size`` workers: this process and ``size - 1`` child processes sharing memory.

    The patterns are copied once into a shared block (again when more have been added); object
    and probe are written to shared blocks before every batch; each child computes its slice
    and writes its contributions into shared result blocks. Only index ranges and short
    replies go through the pipes. NumPy backend only.

    Parameters
    ----------
    size : int
    start_method : str
        ``multiprocessing`` start method of the children; ``"spawn"`` (default) is safe in a
        process that runs other threads (a live session).
    """

    def __init__(self, size: int, start_method: str = "spawn") -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size!r}")
        self.size = int(size)
        # get_context(str) is typed as BaseContext, which has no Process; the concrete
        # context it returns has
        ctx: Any = mp.get_context(start_method)
        self._conns: list[Any] = []
        self._procs: list[Any] = []
        for _ in range(self.size - 1):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_process_main, args=(child,), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self._shared: dict[str, _SharedArray] = {}
        self._n_shared = -1
        self._store_id = 0
        self._closed = False

    def _ask(self, conns: list[Any], msgs: list[tuple[Any, ...]]) -> list[Any]:
        for conn, msg in zip(conns, msgs, strict=True):
            conn.send(msg)
        out = []
        for conn in conns:
            status, value = conn.recv()
            if status != "ok":
                raise RuntimeError(f"worker process failed: {value}")
            out.append(value)
        return out

    def _replace(self, key: str, shape: tuple[int, ...], dtype: Any) -> _SharedArray:
        old = self._shared.pop(key, None)
        if old is not None:
            old.close()
        block = _SharedArray(shape, dtype)
        self._shared[key] = block
        return block

    def _sync(self, store: PatternStore, obj: np.ndarray, probe: np.ndarray, b: int) -> None:
        specs: dict[str, Any] = {}
        meta = None
        n = len(store)
        if n != self._n_shared or id(store) != self._store_id:
            codes = self._replace("codes", (n, *store.frame_shape), np.uint16)
            for j in range(n):
                codes.array[j] = store.codes(j)
            specs["codes"] = codes.spec
            meta = {
                "corners": store.corners.copy(),
                "scales": store.scales.copy(),
                "sums": store.sums.copy(),
                "masked": store.masked.copy(),
            }
            self._n_shared, self._store_id = n, id(store)
        for key, shape, dtype in (
            ("object", obj.shape, np.complex64),
            ("probe", probe.shape, np.complex64),
        ):
            have = self._shared.get(key)
            if have is None or have.array.shape != tuple(shape):
                specs[key] = self._replace(key, tuple(shape), dtype).spec
        have = self._shared.get("batch")
        if have is None or have.array.shape[0] < b:
            cap = max(b, 2 * (have.array.shape[0] if have is not None else 0))
            shape = probe.shape
            specs["batch"] = self._replace("batch", (cap,), np.int64).spec
            specs["object_num"] = self._replace("object_num", (cap, *shape), np.complex64).spec
            specs["probe_num"] = self._replace("probe_num", (cap, *shape), np.complex64).spec
            specs["probe_den"] = self._replace("probe_den", (cap, *shape), np.float32).spec
        if specs or meta is not None:
            msg: tuple[Any, ...] = ("attach", specs) if meta is None else ("attach", specs, meta)
            self._ask(self._conns, [msg] * len(self._conns))

    def contributions(
        self,
        kernel: BatchedKernel,
        obj: Any,
        probe: Any,
        store: PatternStore,
        indices: np.ndarray,
        eps: float,
    ) -> Contributions:
        if self._closed:
            raise RuntimeError("the process pool is closed")
        if not kernel.backend.is_numpy:
            raise ValueError("ProcessWorkers computes with NumPy only")
        b = int(indices.size)
        slices = split(b, self.size)
        if not self._conns:
            return kernel.contributions(obj, probe, store, indices, eps)
        self._sync(store, obj, probe, b)
        sh = self._shared
        sh["object"].array[...] = obj
        sh["probe"].array[...] = probe
        sh["batch"].array[:b] = indices
        for conn, (a, z) in zip(self._conns, slices[1:], strict=True):
            conn.send(("run", a, z, a, float(eps)))
        a0, z0 = slices[0]
        mine = kernel.contributions(obj, probe, store, indices[a0:z0], eps)
        errors = [mine.error_num]
        for conn in self._conns:
            status, value = conn.recv()
            if status != "ok":
                raise RuntimeError(f"worker process failed: {value}")
            errors.append(value)
        object_num = sh["object_num"].array[:b].copy()
        probe_num = sh["probe_num"].array[:b].copy()
        probe_den = sh["probe_den"].array[:b].copy()
        object_num[a0:z0] = mine.object_num
        probe_num[a0:z0] = mine.probe_num
        probe_den[a0:z0] = mine.probe_den
        return Contributions(object_num, probe_num, probe_den, np.concatenate(errors))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in self._conns:
            try:
                conn.send(("close",))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():  # pragma: no cover - a hung child
                proc.terminate()
        for conn in self._conns:
            conn.close()
        for block in self._shared.values():
            block.close()
        self._shared.clear()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


class MPIWorkers:
    """The ranks of an MPI communicator (default ``COMM_WORLD``), every rank holding all data.

    Each rank computes the slice of the batch with its rank number; ``Allgatherv`` assembles
    the slices in rank order, which is batch order, on every rank. NumPy backend only.
    """

    def __init__(self, comm: Any = None) -> None:
        from mpi4py import MPI

        self._mpi = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.size = int(self.comm.Get_size())
        self.rank = int(self.comm.Get_rank())

    def _gather(self, local: np.ndarray, slices: list[tuple[int, int]], per: int) -> np.ndarray:
        counts = [(b - a) * per for a, b in slices]
        displs = [a * per for a, _ in slices]
        out = np.empty((slices[-1][1], *local.shape[1:]), dtype=local.dtype)
        self.comm.Allgatherv(
            np.ascontiguousarray(local), [out, counts, displs, self._mpi._typedict[out.dtype.char]]
        )
        return out

    def contributions(
        self,
        kernel: BatchedKernel,
        obj: Any,
        probe: Any,
        store: PatternStore,
        indices: np.ndarray,
        eps: float,
    ) -> Contributions:
        if not kernel.backend.is_numpy:
            raise ValueError("MPIWorkers computes with NumPy only")
        slices = split(int(indices.size), self.size)
        a, b = slices[self.rank]
        mine = kernel.contributions(obj, probe, store, indices[a:b], eps)
        per = int(np.prod(probe.shape))
        return Contributions(
            self._gather(mine.object_num.astype(np.complex64, copy=False), slices, per),
            self._gather(mine.probe_num.astype(np.complex64, copy=False), slices, per),
            self._gather(mine.probe_den.astype(np.float32, copy=False), slices, per),
            self._gather(mine.error_num.astype(np.float64, copy=False), slices, 1),
        )

    def close(self) -> None:
        return None
