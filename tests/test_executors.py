"""Executors: the same smoke grid run locally, by a process pool and by Ray gives identical numbers;
a worker killed mid-grid costs a retry, never a cell or a duplicate record."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from unlearnbench.executors import PoolExecutor, check_executor_options, get_executor
from unlearnbench.results import load_records
from unlearnbench.runner import Benchmark
from unlearnbench.settings import RunOptions
from unlearnbench.validate import UsageError

GRID = dict(task="mnist_tshirt_mini", tier="smoke", methods=["naive_deletion", "retrack"], seeds=[0, 1], progress=False)
COMPARED = ("forget_rate", "is_clf", "fid_clf", "unet_forward", "unet_backward")
# torch's CPU kernels sum in a thread-count-dependent order, so every executor gets ONE thread:
# with the default threads (2 locally, 1 per pool worker here) fid_clf differs in the 3rd decimal.
THREADS = 1


def _numbers(records: list[dict[str, Any]]) -> dict[tuple[str, int], Any]:
    out = {}
    for r in records:
        assert r["status"] == "ok", r.get("error")
        out[(r["cell"]["method"], r["cell"]["seed"])] = (
            {m: r["metrics"][m]["value"] for m in COMPARED}, r["training"]["losses"], r["config_hash"])
    return out


def _opts(out: Path, **kw: Any) -> RunOptions:
    return RunOptions(**{**GRID, **kw}, out=out)


@pytest.fixture(scope="module")
def local_numbers(smoke_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The grid run in this process, one thread; also prepares the smoke artefacts once, here."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        records = Benchmark(_opts(tmp_path_factory.mktemp("local"))).run()
    finally:
        torch.set_num_threads(before)
    assert len(records) == 4
    return _numbers(records)


def _one_record_per_cell(out: Path, opts: RunOptions) -> list[dict[str, Any]]:
    digests = {p.digest for p in Benchmark(opts).plan()}
    files = sorted((out / "records").iterdir())
    assert not [f for f in files if f.name.startswith(".")], "temporary files left behind"
    records = load_records(out / "records")
    assert sorted(r["config_hash"] for r in records) == sorted(digests)  # exactly one per cell
    assert len(files) == len(digests)
    return records


def _kill_a_busy_worker_mid_grid(run: Callable[[], None], out: Path, pid_dir: Path,
                                 timeout: float = 300) -> tuple[str, int]:
    """Run the grid in a thread; once a record exists, SIGKILL a worker that is running a cell
    without a record yet; return (that cell's hash prefix, the pid killed)."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            run()
        except BaseException as err:  # noqa: BLE001 - re-raised in the test thread
            failure.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    victim = None
    while victim is None:
        assert thread.is_alive() and time.monotonic() < deadline, f"grid ended before a kill: {failure}"
        done = {p.name.split("__")[-1][:12] for p in (out / "records").glob("*.json")} if (out / "records").exists() else set()
        if done:
            started = sorted(pid_dir.iterdir(), key=lambda p: p.stat().st_mtime_ns) if pid_dir.exists() else []
            busy = [p for p in started if p.name.split(".")[0] not in done]
            if busy:
                victim = busy[-1]
        time.sleep(0.02)
    digest12, pid = victim.name.split(".")[0], int(victim.name.split(".")[1])
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout)
    assert not thread.is_alive(), "grid did not finish after the kill"
    if failure:
        raise failure[0]
    return digest12, pid


# ---------------------------------------------------------------------------------------------
# the interface


def test_unknown_executor_or_option_is_a_helpful_error() -> None:
    with pytest.raises(UsageError, match="did you mean 'pool'"):
        get_executor("pol")
    with pytest.raises(UsageError, match="choose one of local, pool, ray"):
        get_executor("slurm")
    with pytest.raises(UsageError, match="ray_address does not apply to --executor pool"):
        get_executor("pool", ray_address="x")
    with pytest.raises(UsageError, match="--ray-address does not apply to --executor pool"):
        get_executor("pool", address="x")  # an option of another executor is named by its flag
    assert get_executor("pool", workers=3).workers == 3


@pytest.mark.parametrize("options", [{"workers": 0}, {"threads": 0}, {"max_retries": -1}])
def test_executor_options_out_of_range_are_usage_errors(options: dict[str, int]) -> None:
    with pytest.raises(UsageError, match="at least"):
        check_executor_options("pool", options)
    with pytest.raises(UsageError, match="at least"):
        get_executor("pool", **options)  # get_executor checks too


def test_ray_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ImportError, match=r"unlearnbench\[ray\]"):
        get_executor("ray").run(_opts(tmp_path), ["0" * 64])


def test_local_executor_runs_cells_in_this_process(local_numbers: dict, tmp_path: Path) -> None:
    opts = _opts(tmp_path, methods=["retrack"], seeds=[1])
    before = torch.get_num_threads()
    get_executor("local", threads=THREADS).run(opts, [p.digest for p in Benchmark(opts).plan()])
    assert torch.get_num_threads() == before  # restored
    assert _numbers(load_records(tmp_path / "records")) == {("retrack", 1): local_numbers[("retrack", 1)]}


# ---------------------------------------------------------------------------------------------
# the process pool


def test_pool_gives_the_local_numbers(local_numbers: dict, tmp_path: Path) -> None:
    opts = _opts(tmp_path, executor="pool", executor_options={"workers": 2, "threads": THREADS})
    records = Benchmark(opts).run()
    assert _numbers(records) == local_numbers
    assert all(r["device"]["torch_threads"] == THREADS for r in records)
    # resuming works as for a local run: nothing left to do, records untouched
    before = {p.name: p.read_bytes() for p in (tmp_path / "records").iterdir()}
    Benchmark(opts).run()
    assert {p.name: p.read_bytes() for p in (tmp_path / "records").iterdir()} == before


def test_pool_survives_a_worker_killed_mid_grid(local_numbers: dict, tmp_path: Path) -> None:
    out, pids = tmp_path / "out", tmp_path / "pids"
    opts = _opts(out, seeds=[0, 1, 2])
    digests = [p.digest for p in Benchmark(opts).plan()]
    pool = PoolExecutor(workers=2, max_retries=2, threads=THREADS, pid_dir=str(pids))
    killed, pid = _kill_a_busy_worker_mid_grid(lambda: pool.run(opts, digests), out, pids)
    assert pool.stats == {"worker_deaths": 1, "requeued": 1, "lost": 0}
    records = _one_record_per_cell(out, opts)
    assert all(r["status"] == "ok" for r in records)
    assert len(list(pids.glob(f"{killed}.*"))) == 2  # the killed cell ran again, in a new worker
    assert _numbers([r for r in records if r["cell"]["seed"] < 2]) == local_numbers  # a rerun changes nothing


def test_pool_records_a_cell_failed_when_its_retries_run_out(local_numbers: dict, tmp_path: Path) -> None:
    out, pids = tmp_path / "out", tmp_path / "pids"
    opts = _opts(out, methods=["naive_deletion"], seeds=[0, 1])
    digests = [p.digest for p in Benchmark(opts).plan()]
    pool = PoolExecutor(workers=1, max_retries=0, threads=THREADS, pid_dir=str(pids))
    killed, _ = _kill_a_busy_worker_mid_grid(lambda: pool.run(opts, digests), out, pids)
    by = {r["config_hash"][:12]: r for r in _one_record_per_cell(out, opts)}
    assert by[killed]["status"] == "failed" and by[killed]["error"].startswith("WorkerLost: ")
    assert "exit code -9" in by[killed]["error"]
    assert [r["status"] for d, r in by.items() if d != killed] == ["ok"]
    records = Benchmark(RunOptions(**{**GRID, "methods": ["naive_deletion"]}, out=out, retry_failed=True,
                                   executor="pool", executor_options={"workers": 1, "threads": THREADS})).run()
    assert [r["status"] for r in records] == ["ok", "ok"]


def test_pool_raises_an_error_outside_the_cells(smoke_cache: Path, tmp_path: Path) -> None:
    opts = _opts(tmp_path, methods=["naive_deletion"], seeds=[0], base_model=str(tmp_path / "no-such-model"))
    digests = [p.digest for p in Benchmark(opts).plan()]
    with pytest.raises(Exception, match="no-such-model"):
        PoolExecutor(workers=1, threads=THREADS).run(opts, digests)
    assert not list(tmp_path.rglob("*.json"))  # no record: a rerun will try the cell again


def test_cli_runs_the_grid_with_a_pool(local_numbers: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from unlearnbench.cli import main

    args = ["run", "--tier", "smoke", "--methods", "naive_deletion,retrack", "--seeds", "0,1", "--no-progress",
            "--out", str(tmp_path)]
    assert main([*args, "--executor", "pool", "--workers", "2", "--threads", str(THREADS), "--max-retries", "1"]) == 0
    assert _numbers(load_records(tmp_path / "records")) == local_numbers
    assert (tmp_path / "table.md").exists()
    assert main([*args, "--executor", "local", "--workers", "2"]) == 2
    assert "--workers does not apply to --executor local" in capsys.readouterr().err
    assert main([*args, "--executor", "pool", "--ray-address", "auto"]) == 2
    local1 = tmp_path / "local-threads"  # --threads with the local executor
    assert main(["run", "--tier", "smoke", "--methods", "retrack", "--seeds", "1", "--no-progress", "--out", str(local1),
                 "--executor", "local", "--threads", str(THREADS)]) == 0
    assert _numbers(load_records(local1 / "records")) == {("retrack", 1): local_numbers[("retrack", 1)]}


# ---------------------------------------------------------------------------------------------
# Ray (a real local instance, started by the executor and shut down after each test)


@pytest.fixture
def ray_module() -> Any:
    try:
        import ray
    except ImportError:
        if os.environ.get("CI") == "true":  # the README's test command installs the ray extra
            pytest.fail("Ray missing in CI: install with pip install -e '.[dev,ray]'")
        pytest.skip("Ray is not installed: pip install 'unlearnbench[ray]'")
    yield ray
    if ray.is_initialized():
        ray.shutdown()


def test_ray_gives_the_local_numbers_without_a_shared_filesystem(
    ray_module: Any, local_numbers: dict, tmp_path: Path
) -> None:
    """The Ray workers see an EMPTY artefact cache (as on a node that shares no filesystem with the
    driver): they run on the artefacts the driver ships, and return records for the driver to write."""
    empty, node_tmp = tmp_path / "empty-cache", tmp_path / "node-tmp"
    empty.mkdir()
    node_tmp.mkdir()
    opts = _opts(tmp_path / "out", executor="ray", executor_options={
        "workers": 2, "threads": THREADS, "ship_artifacts": True,
        "runtime_env": {"env_vars": {"UNLEARNBENCH_CACHE": str(empty), "TMPDIR": str(node_tmp),
                                     "OMP_NUM_THREADS": str(THREADS)}}})
    records = Benchmark(opts).run()
    assert _numbers(records) == local_numbers
    assert not ray_module.is_initialized()  # the instance the executor started is shut down
    assert not list(empty.iterdir())  # nothing was trained or written on the "other node"
    shipped = list(node_tmp.glob("unlearnbench-shipped/*/mnist_tshirt_mini/smoke"))  # what they used instead
    # what the cells use (no retrain cell here, so no oracle is prepared or shipped)
    assert len(shipped) == 1 and {p.name for p in shipped[0].iterdir()} >= {"base", "classifier"}
    for r in records:
        assert (tmp_path / "out" / r["sample_grid"]).exists()
    _one_record_per_cell(tmp_path / "out", opts)


def test_ray_retries_a_task_whose_worker_is_killed(ray_module: Any, local_numbers: dict, tmp_path: Path) -> None:
    out, pids = tmp_path / "out", tmp_path / "pids"
    opts = _opts(out, seeds=[0, 1, 2])
    digests = [p.digest for p in Benchmark(opts).plan()]
    (tmp_path / "node-tmp").mkdir()  # where the SIGKILLed task leaves its temporary folder
    executor = get_executor("ray", workers=2, max_retries=2, threads=THREADS, pid_dir=str(pids),
                            runtime_env={"env_vars": {"TMPDIR": str(tmp_path / "node-tmp")}})
    killed, pid = _kill_a_busy_worker_mid_grid(lambda: executor.run(opts, digests), out, pids)
    records = _one_record_per_cell(out, opts)
    assert all(r["status"] == "ok" for r in records)
    attempts = sorted(pids.glob(f"{killed}.*"))
    assert len(attempts) == 2 and f"{killed}.{pid}" in [p.name for p in attempts]  # Ray ran it again
    assert _numbers([r for r in records if r["cell"]["seed"] < 2]) == local_numbers
