"""The Stable Diffusion memorized-prompt task on a tiny pipeline saved with ``save_pretrained``.

The pipeline, the stand-in CLIP and the stand-in SSCD are random: these tests prove loading, data
formats, conditioning, every method's cell and every metric's plumbing, not any number.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import unlearnbench.datasets.sd_memorized.pipeline as sd
import unlearnbench.datasets.sd_memorized.task as sd_task
from unlearnbench.datasets.sd_memorized.clip_iqa import clip_iqa_scores, load_clip
from unlearnbench.diffusion import NoiseSchedule
from unlearnbench.io import sha256_file
from unlearnbench.method import UnlearnJob
from unlearnbench.metrics import EvalContext
from unlearnbench.registry import METHODS, METRICS, TASKS, load_all
from tests.sd_fixtures import TWO_PROMPTS, build_tiny_pipeline, write_prompt_list, write_standin_clip
from tests.standins import write_standin_sscd

load_all()  # every method, task and metric (the parametrisations below list them)
SD_SAMPLE_METRICS = [m for m in sd_task.SD_METRICS if METRICS.get(m).kind == "sample" and m != "forget_rate"]
#: The methods that run on Stable Diffusion: every one but those the task declares unsupported (the oracle).
SD_METHODS = [m for m in METHODS.names() if not TASKS.get("sd_memorized").unsupported(m)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("pipelines") / "tiny-sd")


@pytest.fixture(scope="module")
def task() -> sd_task.SDMemorized:
    return TASKS.get("sd_memorized")


@pytest.fixture(scope="module")
def smoke(task: sd_task.SDMemorized):
    return task.tier("smoke")


@pytest.fixture(scope="module")
def prompt_root(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path, task, smoke) -> Path:
    """Two prompt folders built by ``run_bench.py prepare --prompts`` with the tiny pipeline."""
    from unlearnbench.cli import main

    tmp = tmp_path_factory.mktemp("sd-data")
    prompts = write_prompt_list(tmp / "prompts.jsonl", TWO_PROMPTS)
    assert main(["prepare", "--task", "sd_memorized", "--tier", "smoke", "--prompts", str(prompts),
                 "--data-root", str(tmp / "prompts"), "--base-model", str(tiny_sd), "--device", "cpu",
                 "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp / "prompts").iterdir()) == ["stallone", "the_happy_scientist_podcast"]
    return tmp / "prompts"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("standin-weights")
    return {"clip": str(write_standin_clip(folder)), "sscd": str(write_standin_sscd(folder))}


@pytest.fixture(scope="module")
def loaded(task, smoke, tiny_sd, prompt_root):
    """The base model from ``load_base`` and the first prompt's data (load_base runs first: it loads the VAE)."""
    base, info = task.load_base(smoke, str(tiny_sd), None, "cpu")
    return base, info, task.load(prompt_root, "stallone")


# ------------------------------------------------------------------------------------------ loading


def test_tiny_pipeline_loads_through_the_suite_loader(tiny_sd: Path, task, smoke, loaded) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    assert {p.name for p in tiny_sd.iterdir()} >= set(sd.PIPELINE_PARTS) | {"model_index.json"}
    parts = sd.load_frozen_parts(str(tiny_sd))
    assert isinstance(parts.vae, AutoencoderKL) and isinstance(parts.text_encoder, CLIPTextModel)
    assert not any(p.requires_grad for p in [*parts.vae.parameters(), *parts.text_encoder.parameters()])
    assert parts.scheduler_config["clip_sample"] is False
    base, info, _ = loaded
    assert isinstance(base, sd.ConditionedUNet) and isinstance(base.unet, UNet2DConditionModel)
    assert info["path"] == str(tiny_sd) and info["resolution"] == 16 and not info["gradient_checkpointing"]
    # Only the UNet is trainable: the wrapper holds no VAE or text-encoder parameters.
    assert sum(p.numel() for p in base.parameters() if p.requires_grad) == sum(p.numel() for p in base.unet.parameters())


def test_noise_schedule_is_the_pipelines_scaled_linear(task, smoke, loaded) -> None:
    from diffusers import DDPMScheduler

    expected = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    schedule = task.noise_schedule(smoke)
    assert torch.allclose(schedule.alphas_cumprod, expected.double())
    assert not torch.allclose(schedule.alphas_cumprod, NoiseSchedule.from_scheduler().alphas_cumprod)


def test_missing_base_and_data_fail_with_the_flags(task, smoke, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--base-model"):
        task.load_base(smoke, None, None, "cpu")
    with pytest.raises(FileNotFoundError, match="--base-model FOLDER"):
        sd.load_frozen_parts(str(tmp_path / "no-such-pipeline"))
    with pytest.raises(FileNotFoundError, match="--data-root"):
        task.forget_sets(smoke, tmp_path)
    assert task.forget_sets(task.tier("paper"), None) == sd_task.PUBLISHED_PROMPTS
    assert len(sd_task.PUBLISHED_PROMPTS) == len(set(sd_task.PUBLISHED_PROMPTS)) == 48


# ---------------------------------------------------------------------------------- prompt folders


def _assert_no_pickle(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert path.suffix in {".json", ".png", ".npz"}, path
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as npz:  # object arrays would need pickle and fail here
                    assert all(npz[k].dtype != object for k in npz.files)


def test_prepare_builds_complete_consistent_folders(prompt_root: Path, task, smoke) -> None:
    assert task.forget_sets(smoke, prompt_root) == ("stallone", "the_happy_scientist_podcast")
    for pid, spec in zip(("stallone", "the_happy_scientist_podcast"), TWO_PROMPTS):
        folder = prompt_root / pid
        _assert_no_pickle(folder)
        meta = json.loads((folder / "prompt.json").read_text())
        assert (meta["original"], meta["modified"]) == (spec["original"], spec["modified"])
        assert meta["n_images"] == smoke.eval["prepare_images"] and meta["seed"] == sd_task.PREPARE_SEED
        assert meta["feature"] == sd.PIXELS and meta["k"] == 2
        read = sd.read_prompt_folder(folder)
        assert read.images.shape == (6, 3, 16, 16) and read.centroids.shape == (2, 16 * 16 * 3)
        # Labels are the stored classifier's verdict on the stored (PNG-quantised) images.
        assert (read.is_memorized(read.images) == (read.labels == 1)).all()
        assert 0 < read.labels.sum() < len(read.labels)
        assert sum(meta["cluster_sizes"]) == 6 and meta["cluster_sizes"][meta["memorized_cluster"]] == read.labels.sum()
        reference = folder / meta["reference_image"]
        assert reference.read_bytes() == (folder / "reference.png").read_bytes()
        assert json.loads((folder / "labels.json").read_text())[reference.name] == 1


def test_prepare_keeps_existing_folders(prompt_root: Path, tiny_sd: Path) -> None:
    before = (prompt_root / "stallone" / "prompt.json").stat().st_mtime_ns
    lines: list[str] = []
    prompts = write_prompt_list(prompt_root.parent / "again.jsonl", TWO_PROMPTS[:1])
    sd.prepare_prompt_folders(str(tiny_sd), prompts, prompt_root, n_images=6, steps=2, guidance=7.5, seed=0,
                              device="cpu", progress=False, log=lines.append)
    assert "already prepared" in lines[0]
    assert (prompt_root / "stallone" / "prompt.json").stat().st_mtime_ns == before


def test_memorized_cluster_is_the_tightest_non_singleton() -> None:
    rng = np.random.default_rng(0)
    copy = rng.normal(size=(1, 32))
    copies = copy + 0.01 * rng.normal(size=(5, 32))
    diverse = 4 + rng.normal(size=(3, 32))  # varied images of another mode
    features = np.concatenate([diverse, copies]).astype(np.float32)
    split = sd.kmeans_split(features, k=2, seed=0)
    assert split.memorized.tolist() == [False] * 3 + [True] * 5
    assert (sd.nearest_centroid(features, split.centroids) == split.labels).all()
    again = sd.kmeans_split(features, k=2, seed=0)
    assert np.array_equal(again.centroids, split.centroids)
    # A singleton (spread 0) is never the memorized cluster; equal spreads go to the larger cluster.
    labels = np.array([0, 1, 1, 1])
    assert sd.memorized_cluster(np.array([[0.0], [5.0], [6.0], [7.0]]), labels, 2)[0] == 1
    tie = np.array([[0.0], [1.0], [10.0], [11.0], [10.0], [11.0]])
    assert sd.memorized_cluster(tie, np.array([0, 0, 1, 1, 1, 1]), 2)[0] == 1
    with pytest.raises(ValueError, match="2 or more"):
        sd.memorized_cluster(np.zeros((2, 1)), np.array([0, 1]), 2)


def test_prompt_list_formats(tmp_path: Path) -> None:
    jsonl = write_prompt_list(tmp_path / "p.jsonl", TWO_PROMPTS)
    as_csv = tmp_path / "p.csv"
    with as_csv.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["original", "modified"])
        writer.writeheader()
        writer.writerows({"original": p["original"], "modified": p["modified"]} for p in TWO_PROMPTS)
    assert [s.id for s in sd.read_prompt_list(jsonl)] == ["stallone", "the_happy_scientist_podcast"]
    assert [s.id for s in sd.read_prompt_list(as_csv)] == ["sylvester_stallone", "the_happy_scientist_podcast"]
    write_prompt_list(tmp_path / "dup.jsonl", [TWO_PROMPTS[1], TWO_PROMPTS[1]])
    with pytest.raises(ValueError, match="duplicate"):
        sd.read_prompt_list(tmp_path / "dup.jsonl")
    with pytest.raises(FileNotFoundError, match="--prompts"):
        sd.read_prompt_list(tmp_path / "absent.jsonl")


def _published_layout(prompt_root: Path, dst: Path, name: str = "sylvester_stallone") -> Path:
    """The ReTrack/SISS layout rebuilt from one of our folders, with an untouchable joblib file."""
    ours = sd.read_prompt_folder(prompt_root / "stallone")
    (dst / name / "images").mkdir(parents=True)
    labels = {}
    for i, (png, label) in enumerate(zip(sorted((ours.path / "images").iterdir()), ours.labels)):
        shutil.copyfile(png, dst / name / "images" / f"{name}_{i:03d}.png")
        labels[f"{name}_{i:03d}.png"] = int(label)
    (dst / name / "kmeans_labels.json").write_text(json.dumps(labels))
    mem_idx = int(np.flatnonzero(ours.labels == 1)[-1])
    (dst / name / "clustering_info.json").write_text(json.dumps({"mem_idx": mem_idx, "frac_deletion": 0.3}))
    (dst / name / "kmeans_classifier.joblib").write_bytes(b"a pickle that must never be loaded")
    (dst / "original_prompts.json").write_text(json.dumps({name: ours.meta["original"]}))
    (dst / "modified_prompts.json").write_text(json.dumps({name: ours.meta["modified"]}))
    return dst


def test_convert_published_never_unpickles(prompt_root: Path, tmp_path: Path, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the converter unpickled a file")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    src = _published_layout(prompt_root, tmp_path / "published")
    [folder] = sd.convert_published(src, tmp_path / "converted", log=lambda s: None)
    _assert_no_pickle(folder)
    ours, converted = sd.read_prompt_folder(prompt_root / "stallone"), sd.read_prompt_folder(folder)
    assert folder.name == "sylvester_stallone" and converted.meta["memorized_cluster"] == 1
    assert np.array_equal(converted.labels, ours.labels) and torch.equal(converted.images, ours.images)
    assert converted.meta["labels_disagreeing_with_centroids"] == 0  # cluster means reproduce the labels
    mem_idx = json.loads((src / "sylvester_stallone" / "clustering_info.json").read_text())["mem_idx"]
    assert torch.equal(converted.reference[0], ours.images[mem_idx])
    assert converted.meta["source_images"]["0000.png"] == "sylvester_stallone_000.png"
    # Labels as CSV (image,label) read the same.
    labels_json = src / "sylvester_stallone" / "kmeans_labels.json"
    with (src / "sylvester_stallone" / "kmeans_labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("image", "label"), *json.loads(labels_json.read_text()).items()])
    labels_json.unlink()
    [folder] = sd.convert_published(src, tmp_path / "converted-csv", log=lambda s: None)
    assert np.array_equal(sd.read_prompt_folder(folder).labels, ours.labels)
    # Exported centroids (.npy, row 1 memorized) are taken as given.
    exported = np.stack([ours.centroids[1 - ours.memorized_cluster], ours.centroids[ours.memorized_cluster]])
    np.save(src / "sylvester_stallone" / "centroids.npy", exported)
    [folder] = sd.convert_published(src, tmp_path / "converted-npy", log=lambda s: None)
    assert np.array_equal(sd.read_prompt_folder(folder).centroids, exported)


# ------------------------------------------------------------------------------- model and data


def test_load_encodes_memorized_and_retain_latents(loaded, prompt_root: Path) -> None:
    base, _, data = loaded
    folder = sd.read_prompt_folder(prompt_root / "stallone")
    mem = torch.from_numpy(folder.labels == 1)
    assert data.forget.shape == (int(mem.sum()), 4, 8, 8) and data.retain.shape == (int((~mem).sum()), 4, 8, 8)
    vae = sd.load_frozen_parts(folder.meta["pipeline"]).vae
    with torch.no_grad():
        expected = vae.encode(folder.images[mem]).latent_dist.mean * vae.config.scaling_factor
    assert torch.allclose(data.forget, expected, atol=1e-5)
    assert data.source["forget_copies"] == int(mem.sum()) and data.forget_set == "stallone"
    assert data.extra["modified"] == TWO_PROMPTS[0]["modified"]


def test_wrapper_forward_is_the_unet_on_the_modified_prompt(task, loaded) -> None:
    base, _, data = loaded
    model = task.bind(base, data)
    task.check_model(model, data)
    parts = sd.load_frozen_parts(data.source["pipeline"])
    embeds = sd.encode_prompts(parts, [TWO_PROMPTS[0]["modified"]])
    x, t = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 500, 999])
    with torch.no_grad():
        expected = base.unet(x, t, encoder_hidden_states=embeds.expand(3, -1, -1)).sample
        original = base.unet(x, t, encoder_hidden_states=sd.encode_prompts(parts, [TWO_PROMPTS[0]["original"]])
                             .expand(3, -1, -1)).sample
        assert torch.allclose(model(x, t).sample, expected, atol=1e-6)
    assert not torch.allclose(expected, original)
    with pytest.raises(RuntimeError, match="condition_on"):
        sd.ConditionedUNet(base.unet)(x, t)


# ------------------------------------------------------------------------------ methods and metrics


def _context(task, data, sets, weights, model) -> EvalContext:
    return EvalContext(sample_sets=sets, forget_image=data.forget_image, retain=data.retain,
                       classifier_dir=None, cache_dir=Path("unused"), device=torch.device("cpu"), task=task,
                       data=data, model=model, weights=weights)


def _score(task, ctx) -> dict:
    values = {"forget_rate": task.forget_rate(ctx)}
    values.update({name: METRICS.get(name).compute(ctx) for name in SD_SAMPLE_METRICS})
    return values


def test_retrain_is_unsupported(task) -> None:
    assert "no oracle" in task.unsupported("retrain") and set(task.unsupported_roles) == {"oracle"}
    oracles = [m for m in METHODS.names() if METHODS.get(m).role == "oracle"]
    assert oracles and all(task.unsupported(m) for m in oracles)  # no oracle for Stable Diffusion
    assert all(METHODS.get(m).role != "oracle" for m in SD_METHODS) and len(SD_METHODS) == len(METHODS.names()) - 1


@pytest.mark.parametrize("method_name", SD_METHODS)
def test_every_method_runs_a_smoke_cell_with_all_metrics(method_name, task, smoke, loaded, weights) -> None:
    import copy

    base, _, data = loaded
    method = METHODS.get(method_name)
    overrides = smoke.method_overrides.get(method_name, {})
    job = UnlearnJob(base_model=task.bind(copy.deepcopy(base), data), retain=data.retain, forget=data.forget,
                     loop=smoke.unlearning, hparams=method.hparams(task.protocol, overrides), seed=0,
                     device=torch.device("cpu"), progress=False, schedule=task.noise_schedule(smoke))
    before = [p.detach().clone() for p in job.base_model.unet.parameters()]
    result = method().unlearn(job)
    changed = any(not torch.equal(a, b) for a, b in zip(before, result.model.unet.parameters()))
    assert changed == method.finetunes
    if method.finetunes:
        assert len(result.log.losses) == smoke.unlearning.steps and all(np.isfinite(result.log.losses))
    sets = task.generate(result.model, smoke.sampler, 0, "cpu", data, progress=False)
    assert set(sets) == {"samples", "modified"}
    assert all(s.shape == (smoke.sampler.num_samples, 3, 16, 16) and s.abs().max() <= 1 for s in sets.values())
    values = _score(task, _context(task, data, sets, weights, result.model))
    for name, value in values.items():
        assert value.available and value.value is not None and np.isfinite(value.value), (name, value.reason)
    assert 0 <= values["forget_rate"].value <= 1 and values["success"].value in (0.0, 1.0)
    assert "k-means" in values["forget_rate"].implementation
    assert values["success"].value == float(values["forget_rate"].value == 0)


def test_gpu_path_bf16_with_gradient_checkpointing_on_cpu(task, smoke, loaded) -> None:
    """The paper tier's GPU settings (bf16 autocast, checkpointed UNet) with SISS's two gradients per graph."""
    import copy

    base, _, data = loaded
    model = task.bind(copy.deepcopy(base), data)
    model.unet.enable_gradient_checkpointing()
    loop = dataclasses.replace(smoke.unlearning, precision="bf16")
    siss = METHODS.get("siss")
    job = UnlearnJob(base_model=model, retain=data.retain, forget=data.forget, loop=loop,
                     hparams=siss.hparams(task.protocol), seed=0, device=torch.device("cpu"), progress=False,
                     schedule=task.noise_schedule(smoke))
    log = siss().unlearn(job).log
    assert model.unet.is_gradient_checkpointing and all(np.isfinite(log.losses + log.grad_norms))


def test_metrics_without_weights_name_the_flags(task, loaded) -> None:
    base, _, data = loaded
    sets = task.generate(task.bind(base, data), task.tier("smoke").sampler, 0, "cpu", data, progress=False)
    values = _score(task, _context(task, data, sets, {}, base))
    for name in ("clip_iqa", "clip_iqa_modified"):
        assert not values[name].available and "--clip-weights" in values[name].reason
    for name in ("sscd_memorized", "sscd_memorized_modified"):
        assert not values[name].available and "--sscd-weights" in values[name].reason
    assert values["forget_rate"].available and values["success_modified"].available


def test_sscd_feature_classifier_needs_the_same_weights(task, loaded, weights, tmp_path: Path) -> None:
    base, _, data = loaded
    folder = sd.read_prompt_folder(data.extra["prompt_folder"].path)
    from unlearnbench.sscd import load_sscd

    sscd_model = load_sscd(weights["sscd"])
    features = sd.image_features(folder.images, sd.SSCD, sscd_model)
    split = sd.kmeans_split(features, k=2, seed=0)
    meta = {**folder.meta, "feature": sd.SSCD, "memorized_cluster": split.memorized_cluster,
            "sscd_weights_sha256": sha256_file(Path(weights["sscd"]))}
    sscd_folder = dataclasses.replace(folder, meta=meta, centroids=split.centroids)
    sscd_data = dataclasses.replace(data, extra={**data.extra, "prompt_folder": sscd_folder})
    sets = {"samples": folder.images, "modified": folder.images}
    with_weights = task.forget_rate(_context(task, sscd_data, sets, weights, base))
    assert with_weights.value == pytest.approx(float(split.memorized.mean()))
    missing = task.forget_rate(_context(task, sscd_data, sets, {}, base))
    assert not missing.available and "--sscd-weights" in missing.reason
    other = write_standin_sscd(tmp_path / "other-standin-sscd.pt", dim=64)
    wrong = task.forget_rate(_context(task, sscd_data, sets, {"sscd": str(other)}, base))
    assert not wrong.available and "sha256" in wrong.reason


def test_clip_iqa_on_the_standin(weights) -> None:
    clip = load_clip(weights["clip"])
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scores = clip_iqa_scores(clip, images)
    assert scores.shape == (3,) and ((scores > 0) & (scores < 1)).all()
    assert torch.equal(scores, clip_iqa_scores(clip, images, batch_size=1))
    assert "standin" in weights["clip"] and "standin" in weights["sscd"]
    with pytest.raises(FileNotFoundError, match="--clip-weights"):
        load_clip(None)


# ------------------------------------------------------------------------------------------- CLI


def test_cli_runs_every_method_on_the_smoke_tier(tiny_sd, prompt_root, weights, tmp_path: Path) -> None:
    from unlearnbench.cli import main

    out = tmp_path / "results"
    code = main(["run", "--task", "sd_memorized", "--tier", "smoke", "--data-root", str(prompt_root),
                 "--base-model", str(tiny_sd), "--sscd-weights", weights["sscd"], "--clip-weights", weights["clip"],
                 "--device", "cpu", "--out", str(out), "--no-progress"])
    records = [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]
    assert len(records) == 2 * len(SD_METHODS), [r["cell"] for r in records]
    for record in records:
        assert record["status"] == "ok", record.get("error")
        assert set(record["metrics"]) >= set(sd_task.SD_METRICS)
        assert all(m["available"] for m in record["metrics"].values()), record["metrics"]
    assert code == 0


def test_paper_dry_run_prints_the_published_settings(capsys) -> None:
    from unlearnbench.cli import main

    load_all()
    assert main(["run", "--task", "sd_memorized", "--tier", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for fact in ("1e-05", "1 x 16", "(0.9, 0.999)", "0.01", "750", "lam=0.5", "eta=0.01", "fp32", "7.5",
                 "CompVis/stable-diffusion-v1-4"):
        assert fact in out, fact
