"""Run the units of a sweep on a Dask cluster, losing nothing when workers die.

:func:`ntk_bridge.sweep.run_sweep` hands its pending units to an executor's ``map_units`` and writes
every ``(cell key, rows)`` that comes back atomically to ``<run>/cells/<key>.csv``; only the client
writes files. :class:`DaskExecutor` is that executor for a Dask cluster: an existing scheduler
(``ntk-bridge sweep --scheduler tcp://HOST:PORT``) or a ``LocalCluster`` on the loopback interface
(``--workers N``).

Guarantees, and where they come from:

* *Same numbers as in-process.* A unit is a pure function of its description and the task set; both
  travel to the worker by value (the task set is the client's, never re-read from a path that may not
  exist there), and the worker refuses to run with other versions of ``ntk_bridge``, jax, jaxlib,
  neural-tangents, numpy or scipy than the client's (they are part of every cell's cache key). It
  runs the unit with the sweep's BLAS thread count (``SweepConfig.blas_threads``, also part of the
  key), as in-process runs do: the LAPACK routines behind jax's ``eigh`` and ``solve`` round
  differently with other thread counts. Every
  infinite-width cell is its own jitted call whatever other cells share its unit
  (:func:`ntk_bridge.sweep.compute.infinite_rows`), so splitting units changes no bit either: on one machine
  ``results.csv`` is byte-identical in all three modes. Across machines of other CPU types or core
  counts (XLA's and OpenBLAS's kernels and partitions) the last bits may differ, as they do between
  two in-process runs on those machines.
* *float64 on workers.* The worker function lives in this module: unpickling it imports ``ntk_bridge``,
  whose ``__init__`` enables ``jax_enable_x64``; the function checks that it is on before computing.
* *Nothing lost.* A unit whose worker dies is rescheduled by the scheduler on another worker (up to the
  scheduler's ``distributed.scheduler.allowed-failures`` deaths, default 3, after which Dask declares
  it a ``KilledWorker``, reported here as a :class:`~ntk_bridge.errors.UserError`). A unit that raises
  is retried ``retries`` times (``Client.submit(retries=...)``).
* *Nothing duplicated.* A unit returns all its cells at once and ``as_completed`` yields each future
  once; the client writes a cell only if its file does not exist yet. If the client is interrupted,
  outstanding units are cancelled and the next run recomputes exactly the cells without a file.

Splitting infinite-width work. In-process, all infinite-width cells form one unit: one pass over the
layers gives the kernels of every depth, and each cell's predictors run as soon as its depth's kernels
exist. :func:`split_units` gives each time combination ``(inner_time, finetune_time, outer_time,
mtl_data)`` its own unit, and when that still makes fewer units than ``min_units`` (twice the number of
workers) it cuts each combination's depths into contiguous ranges. Predictors dominate the cost (about
0.5 s a cell against 2 s for the whole kernel pass of a default 31-depth grid); the price of a split is
that each unit walks the layers from depth 1 up to its own deepest depth again.
"""
from __future__ import annotations

import logging
import uuid
from typing import Callable, Iterable, Iterator

from ntk_bridge import build
from ntk_bridge.errors import UserError
from ntk_bridge.sweep import Unit, iter_unit
from ntk_bridge.tasks import TaskSet

__all__ = ["DaskExecutor", "split_units", "compute_remote", "unit_label", "probe_scheduler"]

#: Seconds to wait for an existing scheduler to answer.
CONNECT_TIMEOUT = 5.0
#: Re-runs of a unit that raises (a worker that dies is handled by the scheduler, see the module doc).
RETRIES = 2


# ---------------------------------------------------------------------------------------------
# Units
# ---------------------------------------------------------------------------------------------

def _combo(cell) -> tuple:
    return (cell.inner_time, cell.finetune_time, cell.outer_time, cell.mtl_data, cell.test_head)


def split_units(units: Iterable[Unit], min_units: int = 1) -> list[Unit]:
    """Split infinite-width units: one unit per time combination, and per contiguous depth range
    when fewer than ``min_units`` units would result. Finite-width units (the cells of one width and
    depth, which share training runs) are kept.

    Each split unit still computes its kernels in one pass over its depths (up to its deepest).
    """
    units = list(units)
    finite = [u for u in units if u.cells and not u.cells[0].infinite]
    combos: list[tuple] = []  # (unit, [(cell, key), ...]) per time combination
    for unit in units:
        if not unit.cells or not unit.cells[0].infinite:
            continue
        pairs = list(zip(unit.cells, unit.keys))
        for combo in sorted({_combo(c) for c in unit.cells}):
            combos.append((unit, [(c, k) for c, k in pairs if _combo(c) == combo]))
    ranges = max(1, -(-(int(min_units) - len(finite)) // max(len(combos), 1)))
    out: list[Unit] = []
    for whole, pairs in combos:
        depths = sorted({c.depth for c, _ in pairs})
        n = min(ranges, len(depths))
        for part in range(n):
            lo, hi = part * len(depths) // n, (part + 1) * len(depths) // n
            wanted = set(depths[lo:hi])
            sel = [(c, k) for c, k in pairs if c.depth in wanted]
            out.append(Unit(whole.config, tuple(c for c, _ in sel), tuple(k for _, k in sel), whole.solvers))
    # Longest first (finite networks: width^2 x depth; kernels: deepest depth), so that no worker is
    # left alone with a long unit at the end.
    finite.sort(key=lambda u: -(0 if u.cells[0].mup_limit else u.cells[0].width ** 2 * u.cells[0].depth))
    out.sort(key=lambda u: -max(c.depth for c in u.cells))
    return finite + out


def unit_label(unit: Unit) -> str:
    """A short description of a unit for messages."""
    c = unit.cells[0]
    times = f"inner_time {c.inner_time:g}, finetune_time {c.finetune_time:g}, outer_time {c.outer_time:g}"
    if c.infinite:
        depths = sorted({x.depth for x in unit.cells})
        span = f"depth {depths[0]}" if len(depths) == 1 else f"depths {depths[0]}..{depths[-1]}"
        combos = {_combo(x) for x in unit.cells}
        return f"width inf, {span}, " + (times if len(combos) == 1 else f"{len(combos)} time combinations")
    width = c.width if c.mup_limit else int(c.width)
    if len(unit.cells) == 1:
        return f"width {width}, depth {c.depth}, {times}"
    return f"width {width}, depth {c.depth}, {len(unit.cells)} cells"


# ---------------------------------------------------------------------------------------------
# The worker side
# ---------------------------------------------------------------------------------------------

def compute_remote(unit: Unit, tasks: TaskSet, versions) -> list[tuple[str, list[dict]]]:
    """Run on a worker: ``[(cell key, rows), ...]`` of ``unit`` on the client's ``tasks``.

    ``versions`` is the client's :func:`ntk_bridge.provenance.numerics_versions`. Raises
    ``UserError`` when the worker's differ (its numbers would not be the ones its cache keys name),
    ``RuntimeError`` if float64 is off.
    """
    import jax

    from ntk_bridge.provenance import numerics_versions

    if not jax.config.jax_enable_x64:  # importing ntk_bridge (this module's package) turns it on
        raise RuntimeError("jax_enable_x64 is off on this Dask worker; ntk_bridge computes in float64")
    mine, theirs = numerics_versions(), tuple(map(tuple, versions))
    if theirs != mine:
        diff = ", ".join(f"{a[0]} {a[1]} here vs {b[1]} on the client"
                         for a, b in zip(mine, theirs) if tuple(a) != tuple(b))
        raise UserError(f"a Dask worker has other versions than the client ({diff}); "
                        "install the same environment on the workers")
    return list(iter_unit(unit, tasks, frames=False))  # Rows where they are made: the client writes them


def _check_address(address: str) -> None:
    """``UserError`` unless ``address`` looks like a scheduler address (``tcp://HOST:PORT``): a
    malformed one would otherwise leave Dask's half-made client to time out at exit."""
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme in ("tcp", "tls", "ucx", "ws", "wss"):
            parse_host_port(location)
    except (ValueError, TypeError):
        raise UserError(f"--scheduler: {address!r} is not a scheduler address (expected tcp://HOST:PORT)") from None


async def _identity_of(address: str, timeout: float):
    from distributed.comm import connect

    comm = await connect(address, timeout=timeout)
    try:
        await comm.write({"op": "identity", "reply": True})
        return await comm.read()
    finally:
        comm.abort()


def probe_scheduler(address: str, timeout: float = CONNECT_TIMEOUT) -> dict:
    """The identity of the Dask scheduler at ``address``, asked in a thread of its own and given up
    after ``timeout`` seconds: ``UserError`` (one line) for anything that is not a Dask scheduler
    answering in time (a closed port, an HTTP server, a port that accepts and says nothing).
    ``distributed.Client`` itself can wait far longer than its ``timeout`` on such a port."""
    import asyncio
    import threading

    answer: dict = {}

    def ask():
        try:
            answer["identity"] = asyncio.run(asyncio.wait_for(_identity_of(address, timeout), timeout))
        except BaseException as exc:  # reported below, in the caller's thread
            answer["error"] = exc

    thread = threading.Thread(target=ask, name="ntk_bridge-probe-scheduler", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    identity = answer.get("identity")
    if isinstance(identity, dict) and identity.get("type") == "Scheduler":
        return identity
    error = answer.get("error")
    reason = ("no answer" if error is None or isinstance(error, (TimeoutError, asyncio.TimeoutError))
              else (str(error).splitlines()[0] if str(error) else type(error).__name__))
    if identity is not None:
        reason = "it answers, but not as a Dask scheduler"
    raise UserError(f"--scheduler: cannot reach the Dask scheduler at {address} within {timeout:g} s ({reason}; is "
                    "it a Dask scheduler?)")


def _identity(x):
    return x


def _cancelled_errors() -> tuple[type[BaseException], ...]:
    """What ``Future.result()`` raises for a unit the scheduler cancelled."""
    import asyncio

    try:
        from distributed.client import FutureCancelledError
    except ImportError:  # older distributed
        return (asyncio.CancelledError,)
    return (FutureCancelledError, asyncio.CancelledError)


# ---------------------------------------------------------------------------------------------
# The client side
# ---------------------------------------------------------------------------------------------

class DaskExecutor:
    """Runs sweep units on Dask workers; ``run_sweep(config, run_dir, executor=DaskExecutor(...))``.

    Args:
      address: a scheduler address (``tcp://HOST:PORT``) to connect to; or ``None`` to start a
        ``LocalCluster`` of ``n_workers`` single-threaded worker processes on 127.0.0.1 (no dashboard).
      n_workers: workers of the local cluster (``address=None`` only).
      retries: re-runs of a unit that raises.
      timeout: seconds to wait for ``address`` to answer (default :data:`CONNECT_TIMEOUT`).
      split: split infinite-width units for parallelism (:func:`split_units`); ``False`` sends each
        unit as ``run_sweep`` made it (one kernel pass for all infinite-width cells).

    Raises ``UserError`` (one line) when the scheduler cannot be reached, Dask is not installed, or
    the arguments are inconsistent.

    Example::

        from ntk_bridge.sweep import SweepConfig, run_sweep
        from ntk_bridge.distributed import DaskExecutor

        with DaskExecutor(n_workers=2) as ex:
            df = run_sweep(SweepConfig.of(depths=(1, 2, 3)), "runs/demo", executor=ex)
    """

    def __init__(self, address: str | None = None, n_workers: int = 0, *, retries: int = RETRIES,
                 timeout: float | None = None, split: bool = True):
        try:
            import distributed
        except ImportError:
            raise UserError("--scheduler/--workers need Dask: pip install 'ntk-bridge[dask]'") from None
        if address and n_workers:
            raise UserError("give either --scheduler or --workers, not both")
        if not address and int(n_workers) < 1:
            raise UserError("--workers must be >= 1 when no --scheduler is given")
        if int(retries) < 0:
            raise UserError(f"retries must be >= 0, got {retries!r}")
        self.retries = int(retries)
        self.split = bool(split)
        self.cluster = None
        #: The function run on workers (tests wrap it to slow units down).
        self._worker_fn: Callable = compute_remote
        if address:
            _check_address(address)
            timeout = CONNECT_TIMEOUT if timeout is None else float(timeout)
            probe_scheduler(address, timeout)
            try:
                self.client = distributed.Client(address, timeout=timeout, set_as_default=False)
            except (OSError, TimeoutError, ValueError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise UserError(f"--scheduler: cannot reach the Dask scheduler at {address} "
                                f"({reason})") from None
        else:
            # No dashboard; the scheduler's small HTTP server (health checks) on a free loopback port
            # rather than 8787, which another cluster may hold.
            self.cluster = distributed.LocalCluster(
                n_workers=int(n_workers), threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
            try:
                self.client = distributed.Client(self.cluster, set_as_default=False)
            except BaseException:
                self.cluster.close()
                raise

    @property
    def address(self) -> str:
        """The scheduler's address."""
        return self.client.scheduler.address

    def map_units(self, units: Iterable[Unit]) -> Iterator[tuple[str, list[dict]]]:
        """Submit every unit; yield ``(cell key, rows)`` of each unit as it completes.

        Results arrive in completion order, each cell exactly once. Closing the iterator early (an
        exception or Ctrl-C in the consumer) cancels the units still outstanding.
        """
        from distributed import KilledWorker, as_completed

        if self.split:
            n_workers = len(self.client.scheduler_info().get("workers", {}))
            units = split_units(units, min_units=2 * max(n_workers, 1))
        else:
            units = list(units)
        if not units:
            return
        from ntk_bridge.provenance import numerics_versions

        token = uuid.uuid4().hex[:12]
        settings = numerics_versions()
        tasks_futures = {}
        pending = {}
        try:
            for i, unit in enumerate(units):
                if unit.config not in tasks_futures:
                    # The task set travels once, as a recomputable task (scattered data would be lost
                    # with the worker holding it).
                    tasks_futures[unit.config] = self.client.submit(
                        _identity, build.task_set(unit.config), pure=False,
                        key=f"ntk_bridge-tasks-{token}-{len(tasks_futures)}")
                fut = self.client.submit(self._worker_fn, unit, tasks_futures[unit.config], settings,
                                         key=f"ntk_bridge-unit-{token}-{i}", retries=self.retries,
                                         pure=False)
                pending[fut] = unit
            for fut in as_completed(list(pending), loop=self.client.loop):
                unit = pending.pop(fut)
                try:
                    result = fut.result()
                except KilledWorker as exc:
                    raise UserError(
                        f"the unit '{unit_label(unit)}' was running on {exc.allowed_failures + 1} Dask "
                        "workers that died (out of memory?); finished cells are saved, rerun to resume"
                    ) from None
                except _cancelled_errors() as exc:
                    raise UserError(f"the Dask scheduler cancelled the unit '{unit_label(unit)}' "
                                    f"({type(exc).__name__}: did it restart?); finished cells are saved, "
                                    "rerun to resume") from None
                fut.release()
                yield from result
        finally:
            outstanding = list(pending) + list(tasks_futures.values())
            if outstanding and self.client.status == "running":
                self.client.cancel(outstanding)

    def close(self) -> None:
        """Close the client, and the local cluster if this executor started one."""
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                # Workers that imported neural-tangents (and with it TensorFlow) can take more than the
                # nanny's 4 s to exit and are then killed with a warning; at shutdown that is no news.
                nanny_log = logging.getLogger("distributed.nanny")
                level = nanny_log.level
                nanny_log.setLevel(logging.ERROR)
                try:
                    self.cluster.close()
                finally:
                    nanny_log.setLevel(level)
                    self.cluster = None

    def __enter__(self) -> "DaskExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

