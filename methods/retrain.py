"""retrain: the oracle, trained from scratch on the retain set with the base model's recipe.

Training happens in ``run_bench.py prepare`` (it is shared by every seed); the record carries
the oracle's own training time and passes as its cost.
"""
from __future__ import annotations

from unlearnbench.loop import LoopLog
from unlearnbench.method import Method, UnlearnJob, UnlearnResult
from unlearnbench.registry import METHODS


@METHODS.register(aliases=("oracle",))
class Retrain(Method):
    role = "oracle"

    def unlearn(self, job: UnlearnJob) -> UnlearnResult:
        model, info = job.artifacts.retrain_model()
        passes = info["steps"] * info["batch_size"] / job.loop.batch_size  # in the loop's batch units
        log = LoopLog(seconds=info["seconds"], unet_forward=passes, unet_backward=passes)
        return UnlearnResult(model, log, notes={"oracle": info})
