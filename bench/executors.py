"""How the cells of a run are executed: ``local`` (sequential), ``pool`` (worker processes on one
machine) or ``ray`` (one Ray task per cell, on a local instance or an existing cluster).

``Benchmark.run()`` prepares the shared artefacts (base model, retrain oracle, classifier) once,
then hands the config hashes of the cells still to run to ``get_executor(name, **options).run``.
Every executor ends with the same result: one record per cell in ``<out>/records/``, written
atomically, so resuming, ``--overwrite`` and ``--retry-failed`` behave as in a local run.

* A cell whose method raises is recorded ``failed`` by the cell itself (``cell.run_cell``); the others go on.
* A worker process that dies (killed, out of memory, node lost) loses only the cell it was running:
  ``pool`` restarts the worker and re-queues the cell, Ray re-runs the task; both at most
  ``max_retries`` times, after which the cell gets a ``failed`` record saying so (``--retry-failed``
  reruns it).
* An error outside a cell (missing weights, unknown cell) stops nothing else; it is raised once
  the other cells are done, as a local run would raise it.

Ray is an optional extra (``pip install 'unlearnbench[ray]'``), imported only by ``RayExecutor``.
See docs/cluster.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile
import traceback
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the runner imports torch; workers must be able to set CUDA_VISIBLE_DEVICES first
    from unlearnbench.cell import CellPlan
    from unlearnbench.runner import Benchmark
    from unlearnbench.settings import RunOptions


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def available_cpus() -> int:
    """CPUs this process may use (the affinity mask where there is one, as ``nproc`` reports)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Executor:
    """Runs the cells named by ``digests`` (config hashes) of the plan ``opts`` describes."""

    name = "executor"

    def run(self, opts: "RunOptions", digests: list[str]) -> None:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# helpers shared by the executors


def _plans(opts: "RunOptions", digests: list[str]) -> tuple["Benchmark", dict[str, "CellPlan"]]:
    from unlearnbench.runner import Benchmark

    bench = Benchmark(opts, log=log)
    plans = {p.digest: p for p in bench.plan()}
    unknown = [d for d in digests if d not in plans]
    if unknown:
        raise KeyError(f"no cell with config hash {', '.join(unknown)} in this plan")
    return bench, {d: plans[d] for d in digests}


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class _Freshness:
    """Which cells got a record during this run (records existing before it may be replaced by
    ``--overwrite`` / ``--retry-failed``, so existence alone is not enough)."""

    def __init__(self, plans: dict[str, "CellPlan"]) -> None:
        self.plans = plans
        self.before = {d: _stat(p.path) for d, p in plans.items()}

    def done(self, digest: str) -> bool:
        now = _stat(self.plans[digest].path)
        return now is not None and now != self.before[digest]


def _data_source(bench: "Benchmark") -> Any:
    try:
        return bench.data.source
    except Exception:  # the record must be written even if the data cannot be read here
        return None


def _write_lost(bench: "Benchmark", plans: dict[str, "CellPlan"], lost: dict[str, str]) -> None:
    from unlearnbench.cell import lost_record
    from unlearnbench.io import atomic_write_json

    for digest, error in lost.items():
        plan = plans[digest]
        log(f"cell {plan.cell['method']} seed {plan.cell['seed']}: {error}; recorded as failed "
            f"(rerun it with --retry-failed)")
        atomic_write_json(plan.path, lost_record(plan, bench.device, _data_source(bench), error))


def _raise_first(errors: dict[str, BaseException], plans: dict[str, "CellPlan"]) -> None:
    """Re-raise an error that happened outside a cell (no record was written for it)."""
    if not errors:
        return
    digest, err = next(iter(errors.items()))
    cells = ", ".join(f"{plans[d].cell['method']} seed {plans[d].cell['seed']}" for d in errors)
    if hasattr(err, "add_note"):
        err.add_note(f"raised by a worker outside the cell's own error handling; cells without a record: {cells}")
    raise err


def _note_pid(pid_dir: str | None, digest: str) -> None:
    """Test and monitoring hook: say which process runs which cell (``<hash12>.<pid>``)."""
    if pid_dir:
        Path(pid_dir).mkdir(parents=True, exist_ok=True)
        (Path(pid_dir) / f"{digest[:12]}.{os.getpid()}").touch()


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))


# ----------------------------------------------------------------------------------------------
# local


class LocalExecutor(Executor):
    """Cells one after another in this process (what ``Benchmark.run`` does without an executor)."""

    name = "local"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def run(self, opts: "RunOptions", digests: list[str]) -> None:
        import torch

        bench, plans = _plans(opts, digests)
        previous = torch.get_num_threads()
        _set_threads(self.threads)
        try:
            for digest in digests:
                bench.execute(plans[digest])
        finally:
            torch.set_num_threads(previous)


# ----------------------------------------------------------------------------------------------
# pool


def _pool_worker(index: int, conn: Any, pickled_opts: bytes, threads: int, gpu: int | None,
                 pid_dir: str | None) -> None:
    """One worker process: pin its GPU and threads, build the benchmark once, run cells it is sent.
    The options arrive pickled so that nothing imports torch before CUDA_VISIBLE_DEVICES is set."""
    import pickle
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    if gpu is not None:  # this process is spawned (fresh): nothing has touched CUDA yet
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    opts = pickle.loads(pickled_opts)
    _set_threads(threads)
    from unlearnbench.runner import Benchmark

    bench = Benchmark(opts, log=lambda s: log(f"[worker {index}] {s}"))
    plans = {p.digest: p for p in bench.plan()}
    conn.send(("ready", os.getpid()))
    while True:
        digest = conn.recv()
        if digest is None:
            break
        _note_pid(pid_dir, digest)
        try:
            bench.execute(plans[digest])
        except Exception as err:  # outside run_cell's own handling: report it, keep serving cells
            try:
                conn.send(("error", digest, err, traceback.format_exc()))
            except Exception:  # the exception does not pickle
                conn.send(("error", digest, RuntimeError(f"{type(err).__name__}: {err}"), traceback.format_exc()))
        else:
            conn.send(("done", digest))
    conn.close()


@dataclasses.dataclass
class _Worker:
    index: int
    proc: Any
    conn: Any
    ready: bool = False
    busy: str | None = None


class PoolExecutor(Executor):
    """``workers`` processes on this machine, each with its own GPU (round robin) when there are
    GPUs, or ``cpus // workers`` torch threads otherwise; a dead worker is replaced and its cell
    re-queued, at most ``max_retries`` times per cell."""

    name = "pool"

    def __init__(self, workers: int | None = None, max_retries: int = 2, threads: int | None = None,
                 pid_dir: str | None = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, not {workers}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {max_retries}")
        self.workers = workers
        self.max_retries = max_retries
        self.threads = threads
        self.pid_dir = pid_dir
        self.stats: dict[str, int] = {"worker_deaths": 0, "requeued": 0, "lost": 0}
        self._live: dict[int, _Worker] = {}

    def pids(self) -> list[int]:
        """Process ids of the live workers (for monitoring and tests)."""
        return [w.proc.pid for w in self._live.values() if w.proc.is_alive()]

    def run(self, opts: "RunOptions", digests: list[str]) -> None:
        import multiprocessing as mp
        import pickle
        from multiprocessing.connection import wait

        import torch

        from unlearnbench.devices import resolve_device
        from unlearnbench.io import remove_orphan_temporaries

        if not digests:
            return
        bench, plans = _plans(opts, digests)
        fresh = _Freshness(plans)
        pin = opts.device in ("auto", "cuda") and resolve_device(opts.device).type == "cuda"
        n_gpus = torch.cuda.device_count() if pin else 0
        n = min(self.workers or n_gpus or 2, len(digests))
        threads = self.threads or max(1, available_cpus() // n)
        worker_opts = pickle.dumps(dataclasses.replace(opts, progress=False))  # no N interleaved progress bars
        ctx = mp.get_context("spawn")
        log(f"pool: {n} workers for {len(digests)} cells, "
            + (f"one GPU each (of {n_gpus})" if n_gpus else f"{threads} torch thread(s) each"))

        def start(i: int) -> None:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_pool_worker, name=f"unlearnbench-worker-{i}", daemon=True,
                               args=(i, child, worker_opts, threads, i % n_gpus if n_gpus else None, self.pid_dir))
            proc.start()
            child.close()
            self._live[i] = _Worker(i, proc, parent)

        queue = deque(digests)
        attempts = {d: 0 for d in digests}
        lost: dict[str, str] = {}
        errors: dict[str, BaseException] = {}
        startup_failures = 0
        finished = False
        try:
            for i in range(n):
                start(i)
            while True:
                for w in self._live.values():
                    if w.ready and w.busy is None and queue:
                        w.busy = queue.popleft()
                        attempts[w.busy] += 1
                        w.conn.send(w.busy)
                if not queue and not any(w.busy for w in self._live.values()):
                    break
                ready = set(wait([w.conn for w in self._live.values()] + [w.proc.sentinel for w in self._live.values()]))
                for w in list(self._live.values()):
                    dead = w.proc.sentinel in ready
                    if w.conn in ready:
                        try:
                            while w.conn.poll():
                                msg = w.conn.recv()
                                if msg[0] == "ready":
                                    w.ready = True
                                elif msg[0] == "done":
                                    w.busy = None
                                elif msg[0] == "error":
                                    errors[msg[1]] = msg[2]
                                    log(f"[worker {w.index}] error outside the cell:\n{msg[3]}")
                                    w.busy = None
                        except (EOFError, OSError):
                            dead = True
                    if dead:
                        w.proc.join(timeout=10)
                        self.stats["worker_deaths"] += 1
                        del self._live[w.index]
                        w.conn.close()
                        where = f"worker {w.index} (pid {w.proc.pid}) died with exit code {w.proc.exitcode}"
                        if not w.ready:
                            startup_failures += 1
                            if startup_failures > self.max_retries:
                                raise RuntimeError(f"{where} while starting, {startup_failures} times; "
                                                   f"see its output above")
                        if w.busy is not None and not fresh.done(w.busy):
                            if attempts[w.busy] <= self.max_retries:
                                log(f"pool: {where}; re-queueing its cell (attempt {attempts[w.busy] + 1} "
                                    f"of {self.max_retries + 1})")
                                queue.appendleft(w.busy)
                                self.stats["requeued"] += 1
                            else:
                                lost[w.busy] = (f"WorkerLost: {where} on each of its {attempts[w.busy]} "
                                                f"attempt(s)")
                        else:
                            log(f"pool: {where}")
                        if queue:
                            start(w.index)
            finished = True
        finally:
            for w in self._live.values():
                try:
                    w.conn.send(None)
                except (OSError, ValueError):
                    pass
            for w in self._live.values():
                if finished:  # idle workers exit on None; after an error or Ctrl-C do not wait for cells
                    w.proc.join(timeout=30)
                if w.proc.is_alive():
                    w.proc.terminate()
                    w.proc.join(timeout=10)
                w.conn.close()
            self._live.clear()
        self.stats["lost"] = len(lost)
        _write_lost(bench, plans, lost)
        remove_orphan_temporaries(bench.out / "records")  # left by a worker killed mid-write
        _raise_first(errors, plans)


# ----------------------------------------------------------------------------------------------
# ray


def _artifact_bundle(bench: "Benchmark") -> dict[str, Any] | None:
    """The driver's prepared artefacts of this (task, tier) -- base model, retrain oracle,
    classifier, manifest -- as a tar archive, for nodes that do not share its filesystem.
    Only ``base*/``, ``retrain*/``, ``classifier/`` and ``manifest.json`` are shipped: metric caches
    (``fid-stats/``, a stale ``torch-fidelity/``) and anything else stay behind, each node recomputes
    the retain statistics once. Package-shipped weights are on every node already; links are never
    shipped."""
    from unlearnbench.artifacts import BASE, CLASSIFIER, RETRAIN
    from unlearnbench.paths import cache_dir

    root = cache_dir(bench.task.cache_name, bench.tier.name)
    tops = sorted(root.iterdir()) if root.exists() else []
    tops = [t for t in tops if not t.is_symlink() and (
        (t.is_dir() and (t.name == CLASSIFIER or t.name.startswith((BASE, RETRAIN))))
        or (t.is_file() and t.name == "manifest.json"))]
    paths = [p for top in tops for p in ([top] if top.is_file() else sorted(top.rglob("*")))]
    paths = [p for p in paths if p.is_file() and not p.is_symlink() and not p.name.startswith(".")
             and "checkpoints" not in p.relative_to(root).parts]  # training snapshots: no cell reads them
    if not paths:
        return None
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in paths:
            tar.add(path, arcname=str(path.relative_to(root)))
    data = buf.getvalue()
    return {"task": bench.task_name, "tier": bench.tier.name, "sha256": hashlib.sha256(data).hexdigest(),
            "tar": data}


def _unpack_bundle(bundle: dict[str, Any]) -> str:
    """Unpack once per node into a cache root named by the archive's hash; return that root."""
    root = Path(tempfile.gettempdir()) / "unlearnbench-shipped" / bundle["sha256"][:16]
    target = root / bundle["task"] / bundle["tier"]
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
        with tarfile.open(fileobj=io.BytesIO(bundle["tar"])) as tar:
            tar.extractall(staging, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(staging)
        try:
            os.replace(staging, target)
        except OSError:  # another worker on this node got there first
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return str(root)


_WORKER_BENCH: dict[str, Any] = {}  # per Ray worker process: the benchmark of the last options it ran


def _worker_benchmark(opts: "RunOptions", digest: str) -> tuple["Benchmark", "CellPlan"]:
    """The benchmark for ``opts`` in this worker process, built once: data, base model and plan
    are reused by the next tasks Ray gives the same process."""
    from unlearnbench.runner import Benchmark

    key = repr(opts) + "|" + os.environ.get("UNLEARNBENCH_CACHE", "")
    if _WORKER_BENCH.get("key") != key:
        bench = Benchmark(dataclasses.replace(opts, progress=False), log=lambda s: log(f"[ray pid {os.getpid()}] {s}"))
        _WORKER_BENCH.update(key=key, bench=bench, plans={p.digest: p for p in bench.plan()})
    plan = _WORKER_BENCH["plans"].get(digest)
    if plan is None:
        raise KeyError(f"no cell with config hash {digest} in this plan")
    return _WORKER_BENCH["bench"], plan


def _ray_cell(opts: "RunOptions", digest: str, threads: int, bundle: dict[str, Any] | None,
              pid_dir: str | None) -> dict[str, Any]:
    """One cell as a Ray task. It writes into a private folder of its worker process and returns
    the record and its sample grid; the driver writes them into the results folder, so results
    need no shared filesystem."""
    _set_threads(threads)
    _note_pid(pid_dir, digest)
    saved = os.environ.get("UNLEARNBENCH_CACHE")
    if bundle is not None:
        os.environ["UNLEARNBENCH_CACHE"] = _unpack_bundle(bundle)
    try:
        bench, plan = _worker_benchmark(opts, digest)
        with tempfile.TemporaryDirectory(prefix="unlearnbench-cell-") as tmp:
            bench.out = Path(tmp)  # the cell writes here (record, sample grid), never into opts.out
            bench.env = dataclasses.replace(bench.env, out=bench.out)
            plan = dataclasses.replace(plan, path=bench.out / "records" / plan.path.name)
            bench.execute(plan)
            record = plan.path.read_text()
            done = json.loads(record)  # the sample grid and the copies grid are absent when the cell failed
            rels = [done.get("sample_grid"), (done.get("sample_copies") or {}).get("grid")]
            files = {rel: (bench.out / rel).read_bytes() for rel in rels if rel and (bench.out / rel).is_file()}
        return {"digest": digest, "record": record, "files": files}
    finally:
        if bundle is not None:
            if saved is None:
                os.environ.pop("UNLEARNBENCH_CACHE", None)
            else:
                os.environ["UNLEARNBENCH_CACHE"] = saved


RAY_CONNECT_TIMEOUT_S = 30.0  # how long --ray-address may take to answer; env UNLEARNBENCH_RAY_TIMEOUT overrides


def ray_connect_timeout() -> float:
    """Seconds to wait for a Ray cluster's port (``UNLEARNBENCH_RAY_TIMEOUT``, default 30)."""
    from unlearnbench.validate import UsageError

    raw = os.environ.get("UNLEARNBENCH_RAY_TIMEOUT", "")
    try:
        timeout = float(raw) if raw.strip() else RAY_CONNECT_TIMEOUT_S
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise UsageError(f"UNLEARNBENCH_RAY_TIMEOUT={raw!r}: must be a number of seconds > 0")
    return timeout


def _ray_host_port(address: str) -> tuple[str, int] | None:
    """(host, port) a Ray address connects to; None for ``auto``/``local`` (Ray finds those itself)."""
    from urllib.parse import urlsplit

    from unlearnbench.validate import UsageError

    if address in ("auto", "local"):
        return None
    scheme, _, rest = address.rpartition("://")
    parts = urlsplit(f"//{rest}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port == -1:
        raise UsageError(f"--ray-address {address}: not HOST:PORT (e.g. head:6379, ray://head:10001 or auto)")
    return parts.hostname, port if port is not None else (10001 if scheme == "ray" else 6379)


def check_ray_address(address: str, timeout: float | None = None) -> None:
    """Fail at once, with one line, when nothing answers at a Ray cluster's address within ``timeout``
    seconds, instead of ``ray.init`` waiting (or retrying) far longer."""
    import socket

    from unlearnbench.validate import UsageError

    target = _ray_host_port(address)
    if target is None:
        return
    timeout = ray_connect_timeout() if timeout is None else timeout
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as err:
        reason = f"no answer within {timeout:g} s" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise UsageError(f"--ray-address {address}: cannot reach the Ray cluster at {target[0]}:{target[1]} "
                         f"({reason}); is `ray start --head` running there?") from None


class RayExecutor(Executor):
    """Each cell a Ray task with ``num_cpus`` / ``num_gpus``. ``address`` connects to a running
    cluster (``"auto"``, ``"ray://head:10001"``, ``"head:6379"``); without one a local instance is
    started with ``workers * num_cpus`` CPUs (all CPUs by default) and shut down afterwards. A task
    whose worker dies is retried up to ``max_retries`` times by Ray."""

    name = "ray"

    def __init__(self, address: str | None = None, max_retries: int = 2, num_cpus: float = 1,
                 num_gpus: float | None = None, workers: int | None = None, threads: int | None = None,
                 ship_artifacts: bool | None = None, runtime_env: dict[str, Any] | None = None,
                 pid_dir: str | None = None) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {max_retries}")
        self.address = address
        self.max_retries = max_retries
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.workers = workers
        self.threads = threads
        self.ship_artifacts = ship_artifacts
        self.runtime_env = runtime_env
        self.pid_dir = pid_dir

    def run(self, opts: "RunOptions", digests: list[str]) -> None:
        try:
            import ray
        except ImportError as err:
            raise ImportError("the ray executor needs Ray: pip install 'unlearnbench[ray]' "
                              "(or pip install 'ray>=2.9')") from err
        from unlearnbench.io import atomic_write_bytes, atomic_write_text

        if not digests:
            return
        bench, plans = _plans(opts, digests)
        fresh = _Freshness(plans)
        started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False}
            if self.runtime_env:
                kwargs["runtime_env"] = self.runtime_env
            if self.address:
                check_ray_address(self.address)
                ray.init(address=self.address, **kwargs)
            else:
                cpus = int(self.workers * self.num_cpus) if self.workers else available_cpus()
                ray.init(num_cpus=max(1, cpus), **kwargs)
            started = True
        try:
            resources = ray.cluster_resources()
            num_gpus = self.num_gpus
            if num_gpus is None:
                num_gpus = 1 if opts.device != "cpu" and resources.get("GPU", 0) > 0 else 0
            threads = self.threads or max(1, int(self.num_cpus))
            ship = self.ship_artifacts if self.ship_artifacts is not None else bool(self.address)
            bundle = _artifact_bundle(bench) if ship else None
            bundle_ref = ray.put(bundle) if bundle is not None else None
            log(f"ray: {len(digests)} tasks ({self.num_cpus} CPU, {num_gpus} GPU, {threads} torch thread(s) each) "
                f"on a cluster with {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"
                + ("; artefacts shipped to the workers" if bundle is not None else ""))
            task = ray.remote(_ray_cell).options(num_cpus=self.num_cpus, num_gpus=num_gpus,
                                                 max_retries=self.max_retries, retry_exceptions=False)
            worker_opts = dataclasses.replace(opts, progress=False)
            refs = {task.remote(worker_opts, d, threads, bundle_ref, self.pid_dir): d for d in digests}
            pending = list(refs)
            lost: dict[str, str] = {}
            errors: dict[str, BaseException] = {}
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                digest = refs[ready[0]]
                try:
                    result = ray.get(ready[0])
                except ray.exceptions.RayTaskError as err:  # raised outside run_cell's own handling
                    cause = err.as_instanceof_cause() if hasattr(err, "as_instanceof_cause") else err
                    errors[digest] = cause
                    log(f"ray: error outside the cell:\n{err}")
                    continue
                except ray.exceptions.RayError as err:  # worker or node lost on every attempt
                    lost[digest] = (f"WorkerLost: Ray task failed after {self.max_retries} retries: "
                                    f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
                    continue
                if fresh.done(digest):  # written meanwhile by someone else: keep it
                    continue
                for rel, data in result["files"].items():
                    atomic_write_bytes(bench.out / rel, data)
                atomic_write_text(plans[digest].path, result["record"])
            _write_lost(bench, plans, lost)
            _raise_first(errors, plans)
        finally:
            if started:
                ray.shutdown()


# ----------------------------------------------------------------------------------------------

EXECUTORS: dict[str, type[Executor]] = {"local": LocalExecutor, "pool": PoolExecutor, "ray": RayExecutor}


#: The command line's flag of each executor option (the others are for the Python API).
FLAGS = {"workers": "--workers", "threads": "--threads", "address": "--ray-address", "max_retries": "--max-retries"}


def check_executor_options(name: str, options: dict[str, Any]) -> None:
    """``options`` must be ones executor ``name`` takes, in range; else a ``UsageError`` naming the flag."""
    import inspect

    from unlearnbench.validate import UsageError, did_you_mean

    cls = EXECUTORS.get(name)
    if cls is None:
        raise UsageError(f"unknown executor {name!r}; {did_you_mean(name, EXECUTORS)}"
                         f"choose one of {', '.join(EXECUTORS)}")
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    stray = sorted(set(options) - set(accepted))
    if stray:
        raise UsageError(f"{FLAGS.get(stray[0], stray[0])} does not apply to --executor {name}")
    if any(options.get(k) is not None and options[k] < 1 for k in ("workers", "threads")) or \
            (options.get("max_retries") is not None and options["max_retries"] < 0):
        raise UsageError("--workers and --threads must be at least 1, --max-retries at least 0")


def get_executor(name: str, **options: Any) -> Executor:
    """The executor called ``name`` built with ``options`` (``--executor`` / ``executor_options``)."""
    check_executor_options(name, options)
    return EXECUTORS[name](**options)
