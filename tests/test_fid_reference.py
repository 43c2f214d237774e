"""The FID reference set is a declared, recorded tier setting: ``retain`` or ``all`` (forget set included)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch_fidelity
from unlearnbench.datasets.mnist_tshirt.classifier import TORCH_FIDELITY_NAME
from unlearnbench.metrics import EvalContext, _Images
from unlearnbench.registry import METRICS, TASKS, load_all

from tests.standins import write_standin_classifier

load_all()


def _classifier(tmp_path: Path) -> Path:
    return write_standin_classifier(tmp_path / "clf")


def _ctx(tmp_path: Path, clf: Path, reference: str | None) -> EvalContext:
    g = torch.Generator().manual_seed(5)
    forget = torch.rand((1, 1, 28, 28), generator=g) * 2 - 1
    retain = torch.rand((40, 1, 28, 28), generator=g) * 2 - 1
    samples = torch.rand((60, 1, 28, 28), generator=g) * 2 - 1
    tier_eval = {} if reference is None else {"fid_reference": reference}
    return EvalContext(sample_sets={"samples": samples}, forget_image=forget, retain=retain, classifier_dir=clf,
                       cache_dir=tmp_path / "cache", device=torch.device("cpu"), tier_eval=tier_eval,
                       data=SimpleNamespace(forget=forget.repeat(3, 1, 1, 1)))


def _expected(ctx: EvalContext, reference: torch.Tensor, clf: Path) -> float:
    out = torch_fidelity.calculate_metrics(
        input1=_Images(ctx.kept), input2=_Images(reference), feature_extractor=TORCH_FIDELITY_NAME,
        feature_extractor_weights_path=str(clf), fid=True, batch_size=256, verbose=False, cuda=False, cache=False)
    return out["frechet_inception_distance"]


def test_all_reference_includes_the_forget_set_and_says_so(tmp_path: Path) -> None:
    clf = _classifier(tmp_path)
    ctx = _ctx(tmp_path, clf, "all")
    value = METRICS.get("fid_clf").compute(ctx)
    assert value.value == _expected(ctx, torch.cat([ctx.retain, ctx.data.forget]), clf)
    assert value.reference.startswith("43 images") and "forget set included" in value.reference

    default = _ctx(tmp_path, clf, None)
    retain_only = METRICS.get("fid_clf").compute(default)
    assert retain_only.value == _expected(default, default.retain, clf)
    assert retain_only.value != value.value
    assert retain_only.reference.startswith("40 images") and "without the forget set" in retain_only.reference


def test_unknown_reference_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown fid_reference 'everything'"):
        METRICS.get("fid_clf").compute(_ctx(tmp_path, _classifier(tmp_path), "everything"))


def test_paper_tiers_follow_the_official_evaluator() -> None:
    for task in ("cifar10", "celeba_hq"):
        assert TASKS.get(task).tier("paper").eval["fid_reference"] == "all"
    assert "fid_reference" not in TASKS.get("mnist_tshirt_mini").tier("quick").eval  # retain, as ReTrack's MNIST FID
