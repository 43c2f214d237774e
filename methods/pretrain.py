"""pretrain: the base model unchanged, the "before" row of every table."""
from __future__ import annotations

from unlearnbench.loop import LoopLog
from unlearnbench.method import Method, UnlearnJob, UnlearnResult
from unlearnbench.registry import METHODS


@METHODS.register(aliases=("base",))
class Pretrain(Method):
    role = "reference_before"

    def unlearn(self, job: UnlearnJob) -> UnlearnResult:
        return UnlearnResult(job.base_model, LoopLog())
