"""ReTrack, all neighbours: the ReTrack target with the softmax over the WHOLE retain set
(K = |R|, no truncation), for the k-ablation: what the kNN approximation costs and saves."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from unlearnbench.imagesets import as_tensor
from unlearnbench.loop import Batch, StepContext
from unlearnbench.method import UnlearnJob
from unlearnbench.methods.retrack import ReTrack
from unlearnbench.registry import METHODS


@dataclass(frozen=True)
class ReTrackAllHparams:
    lam: float


@METHODS.register
class ReTrackAll(ReTrack):
    order = 70
    Hparams = ReTrackAllHparams
    published = {family: {"lam": v["lam"]} for family, v in ReTrack.published.items()}

    def setup(self, job: UnlearnJob) -> Tensor:
        return as_tensor(job.retain).flatten(1)

    def neighbours(self, ctx: StepContext, batch: Batch) -> Tensor:
        return ctx.state.to(ctx.device)
