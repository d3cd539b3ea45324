"""Where analyze's chunks run: Dask workers of a local cluster or of an existing scheduler.

One code path for both: :func:`dask_client` gives a ``distributed.Client``, either of a
``LocalCluster`` started here (``workers`` processes with ``tasks_per_worker`` task threads
each, closed at the end) or of a running scheduler (``tcp://host:8786``, e.g. one whose workers dask-jobqueue
submitted as SLURM/PBS/SGE/LSF jobs; its workers must see the same files under the same paths).
:func:`run_tasks` submits one task per chunk and yields each outcome as it ends, with a progress
bar over images. A worker that dies (killed, out of memory, its node lost) costs only the chunk
it was running: the scheduler runs that chunk again on another worker (up to
``distributed.scheduler.allowed-failures`` times, 3 by default).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Callable, Iterator, Sequence

from tqdm import tqdm

from ..common.errors import OptionError, OrgasegError

log = logging.getLogger(__name__)


#: chunks a local worker runs at once (analyze's ``chunks_per_worker``): the next chunk segments
#: while the one before it is cut out, classified and written
CHUNKS_PER_WORKER = 2


def available_cores() -> int:
    """CPU cores this process may use (the affinity mask where there is one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def check_workers(workers: Any) -> int | None:
    """``--workers``: None (auto) or a whole number >= 1 (OptionError otherwise)."""
    if workers is None or str(workers).strip().lower() in ("", "auto", "none"):
        return None
    try:
        value = int(str(workers).strip())
    except ValueError:
        raise OptionError(f"--workers must be a whole number >= 1 or 'auto', got {workers!r}") from None
    if value < 1:
        raise OptionError(f"--workers must be a whole number >= 1 or 'auto', got {workers!r}")
    return value


def local_workers(workers: int | None, n_images: int) -> int:
    """Workers of a local cluster: ``workers``, or (auto) one per 2 cores, at least 1 and never
    more than there are images. A worker's steps use the cores given to it (threads), so one
    worker per 2 cores keeps TensorFlow's and torch's own threading useful."""
    auto = max(1, available_cores() // 2)
    return max(1, min(workers or auto, max(1, n_images)))


def check_count(value: Any, option: str) -> int:
    """``value`` of ``option`` (``--chunk-size``, ``--chunks-per-worker``) as a whole number >= 1
    (OptionError naming the option otherwise)."""
    try:
        number = int(str(value).strip())
    except ValueError:
        number = 0
    if isinstance(value, bool) or number < 1:
        raise OptionError(f"{option} must be a whole number >= 1, got {value!r}")
    return number


def threads_for(workers: int, threads_per_worker: int | None) -> int:
    """Threads of each worker's steps: ``threads_per_worker``, or the cores shared out."""
    if threads_per_worker is not None:
        if int(threads_per_worker) < 1:
            raise OptionError(f"--threads-per-worker must be >= 1, got {threads_per_worker!r}")
        return int(threads_per_worker)
    return max(1, available_cores() // max(1, workers))


@contextlib.contextmanager
def dask_client(*, workers: int, scheduler: Any = None, tasks_per_worker: int = 1) -> Iterator[tuple[Any, str]]:
    """A ``distributed.Client`` and a line saying what it is.

    scheduler: None (start a ``LocalCluster`` of ``workers`` worker processes here, each
    running ``tasks_per_worker`` tasks at once, closed at the end), an address
    (``tcp://host:8786``), or a ``distributed.Client`` / cluster object of the caller (used as
    it is, not closed: its workers' own threads decide how many tasks each runs).
    """
    try:
        import distributed
    except ImportError:
        raise OrgasegError("analyze runs its images on Dask workers and needs dask.distributed: "
                           "pip install 'orgaseg-core[distributed]'") from None
    if not log.isEnabledFor(logging.DEBUG):
        # Dask sets its own INFO level when imported; its cluster life is not the user's news
        logging.getLogger("distributed").setLevel(logging.WARNING)
    if scheduler is None:
        # A task is a whole chunk, and its steps bring their own threads: a worker's task threads
        # are the chunks it overlaps (see analyze's chunks_per_worker). No dashboard (nothing to
        # serve on a headless node; no port to clash).
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=int(tasks_per_worker),
                                      processes=True, dashboard_address=None,
                                      silence_logs=logging.ERROR) as cluster, \
                distributed.Client(cluster) as client:
            yield client, (f"a local Dask cluster of {workers} worker process(es)"
                           + (f", {tasks_per_worker} chunks at once in each" if tasks_per_worker > 1 else ""))
        return
    if isinstance(scheduler, distributed.Client):
        yield scheduler, f"the Dask client {scheduler.scheduler.address}"
        return
    if hasattr(scheduler, "scheduler_address"):  # a cluster object (LocalCluster, SLURMCluster ...)
        with distributed.Client(scheduler) as client:
            yield client, f"the Dask cluster {scheduler.scheduler_address}"
        return
    address = str(scheduler).strip()
    try:
        client = distributed.Client(address, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise OrgasegError(f"cannot reach the Dask scheduler {address}: {exc}") from None
    with client:
        n = len(client.scheduler_info().get("workers", {}))
        if n == 0:
            log.warning("the Dask scheduler %s has no workers yet; chunks wait until some join", address)
        yield client, f"the Dask scheduler {address} ({n} worker(s) now)"


def run_tasks(client: Any, function: Callable[[Any], Any], specs: Sequence[Any], sizes: Sequence[int],
              *, desc: str) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """Submit ``function(spec)`` for every spec; yield ``(spec, result, None)`` or
    ``(spec, None, error)`` as each task ends, advancing a progress bar by the spec's size.

    A task whose function raised is reported with its error (not retried: the same input would
    fail again); one whose worker died is retried by the scheduler. On an interrupt or any
    error here, the tasks not yet ended are cancelled before the exception goes on.
    """
    import distributed

    futures = {}
    for spec, size in zip(specs, sizes):
        future = client.submit(function, spec, pure=False, key=f"orgaseg-chunk-{spec.index}-{spec.token}")
        futures[future] = (spec, size)
    try:
        with tqdm(total=sum(sizes), desc=desc, unit="image", disable=None) as bar:
            for future in distributed.as_completed(list(futures)):
                spec, size = futures.pop(future)
                try:
                    result, error = future.result(), None
                except Exception as exc:  # noqa: BLE001 - reported per chunk by the caller
                    result, error = None, exc
                bar.update(size)
                yield spec, result, error
    finally:
        if futures:
            client.cancel(list(futures), force=True)
