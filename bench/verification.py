"""Did it really forget? Membership inference and relearning attacks, each beside the retrain oracle.

``mia_loss`` / ``mia_secmi`` / ``mia_pia`` score the forget image's percentile rank among the task's
holdout population under each attack (``unlearnbench.membership``); the record carries the oracle's rank
on the same image, population and noise, and the gap. ``relearn_*`` (benign: retain data only) and
``relearn_knn_*`` (stronger: retain data plus each forget image's nearest retain neighbours) fine-tune the
unlearned model for N steps and measure the forget rate, the NLL and the loss-attack rank again; the
oracle gets the same attack. See docs/verification.md.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unlearnbench.io import atomic_write_json, discard_bad_cache
from unlearnbench.loop import Batch, StepContext, finetune
from unlearnbench.membership import (
    ATTACKS, AttackSettings, MembershipInputError, attack_errors, bootstrap_ranks, cache_key, describe, load_errors,
    percentile_rank, save_errors, select_holdout,
)
from unlearnbench.method import FineTuneMethod
from unlearnbench.metrics import EvalContext, MetricValue, content_hash, register_metric
from unlearnbench.registry import METRICS
from unlearnbench.uncertainty import bootstrap_replicates, percentile_interval

MIA_CACHE = "membership"


def attack_settings(ctx: EvalContext) -> AttackSettings:
    if "mia_settings" not in ctx.memo:
        ctx.memo["mia_settings"] = AttackSettings.from_tier(ctx.tier_eval)
    return ctx.memo["mia_settings"]


def forget_images(ctx: EvalContext) -> Tensor:
    """The forget set's distinct images (a forget set may hold copies of one image)."""
    forget = ctx.data.forget if ctx.data is not None else ctx.forget_image
    forget = forget[:] if not torch.is_tensor(forget) else forget
    return torch.unique(forget.flatten(1), dim=0).reshape(-1, *forget.shape[1:])


def holdout_images(ctx: EvalContext) -> Tensor:
    """The cell's holdout population (seeded subset of the task's), or a clear error saying why there is none."""
    if "mia_holdout" not in ctx.memo:
        population = getattr(ctx.data, "holdout", None)
        if population is None:
            raise MembershipInputError(f"task {getattr(ctx.task, 'name', '?')!r} has no holdout population here: "
                                       f"{getattr(ctx.data, 'holdout_source', '') or 'none was loaded'}")
        ctx.memo["mia_holdout"] = select_holdout(population, attack_settings(ctx).holdout, forget_images(ctx))
    return ctx.memo["mia_holdout"]


def _schedule(ctx: EvalContext) -> Any:
    from unlearnbench.diffusion import NoiseSchedule

    return ctx.schedule or NoiseSchedule.from_scheduler()


def model_errors(ctx: EvalContext, model: Any, attack: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(forget, holdout) errors of ``attack`` on ``model``, memoised in the cell under ``key``."""
    memo = ctx.memo.setdefault(f"mia_errors:{key}", {})
    if attack not in memo:
        settings, images = attack_settings(ctx), forget_images(ctx)
        errors = attack_errors(attack, model, _schedule(ctx), torch.cat([images, holdout_images(ctx)]),
                               settings, ctx.seed, ctx.device).double().numpy()
        memo[attack] = (errors[: len(images)], errors[len(images):])
    return memo[attack]


def _oracle_model(ctx: EvalContext) -> tuple[Any, dict[str, Any]]:
    if "oracle_model" not in ctx.memo:
        model, identity = ctx.oracle()
        ctx.memo["oracle_model"] = (model.to(ctx.device).eval(), identity)
    return ctx.memo["oracle_model"]


def is_oracle(ctx: EvalContext) -> bool:
    """Whether the cell's model has the oracle's weights (the retrain row): its attacks are the oracle's, computed
    once and shared through the cache."""
    if ctx.oracle is None or ctx.model is None:
        return False
    if "is_oracle" not in ctx.memo:
        oracle, _ = _oracle_model(ctx)
        mine, theirs = ctx.model.state_dict(), oracle.state_dict()
        ctx.memo["is_oracle"] = mine.keys() == theirs.keys() and all(
            mine[k].shape == theirs[k].shape and torch.equal(mine[k].cpu(), theirs[k].cpu()) for k in mine)
    return ctx.memo["is_oracle"]


def _population_key(ctx: EvalContext) -> str:
    if "mia_population_key" not in ctx.memo:
        ctx.memo["mia_population_key"] = content_hash(forget_images(ctx), holdout_images(ctx))
    return ctx.memo["mia_population_key"]


def oracle_errors(ctx: EvalContext, attack: str) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, Any]] | None:
    """The oracle's (forget, holdout) errors under ``attack`` with the same seed (cached on disk per oracle,
    population, settings and seed); None when the task has no oracle."""
    if ctx.oracle is None:
        return None
    model, identity = _oracle_model(ctx)
    settings = attack_settings(ctx)
    key = cache_key(identity.get("sha256"), _population_key(ctx), describe(settings), ctx.seed, attack)
    path = ctx.cache_dir / MIA_CACHE / f"oracle-{attack}-{key}.npz"
    cached = load_errors(path, (attack,))
    if cached is None:
        cached = {attack: model_errors(ctx, model, attack, "oracle")}
        save_errors(path, cached)
    return cached[attack], identity


def _bootstrap_seed(ctx: EvalContext, salt: int) -> int:
    return ctx.seed * 1_000_003 + salt


def membership_value(ctx: EvalContext, attack: str) -> MetricValue:
    """The forget images' percentile rank under ``attack``, with the oracle's rank, the gap and intervals."""
    try:
        forget, holdout = oracle_errors(ctx, attack)[0] if is_oracle(ctx) else model_errors(ctx, ctx.model, attack,
                                                                                             "model")
    except MembershipInputError as err:
        return MetricValue(None, available=False, reason=str(err))
    settings = attack_settings(ctx)
    rank = percentile_rank(forget, holdout)
    n_boot = bootstrap_replicates(ctx.tier_eval)
    seed = _bootstrap_seed(ctx, ATTACKS.index(attack))
    replicates = bootstrap_ranks(forget, holdout, n_boot, seed) if n_boot else None
    extra: dict[str, Any] = {
        "forget_images": len(forget), "holdout_size": len(holdout), "settings": describe(settings),
        "forget_error": float(forget.mean()), "holdout_error_median": float(np.median(holdout)),
        "holdout_population": getattr(ctx.data, "holdout_source", ""),
    }
    if len(forget) > 1:
        extra["auc"] = rank  # with several forget images the mean rank is the Mann-Whitney AUC
    oracle = oracle_errors(ctx, attack)
    if oracle is not None:
        (o_forget, o_holdout), identity = oracle
        o_rank = percentile_rank(o_forget, o_holdout)
        extra.update({"oracle_rank": o_rank, "gap": rank - o_rank, "oracle": identity.get("sha256")})
        if n_boot:  # the same resampled populations for both models: a paired interval of the gap
            gaps = replicates - bootstrap_ranks(o_forget, o_holdout, n_boot, seed)
            extra["gap_interval"] = list(percentile_interval(gaps))
    else:
        extra["oracle_rank"] = None
        extra["gap_reason"] = "no retrain oracle is prepared for this task and tier (run_bench.py prepare)"
    return MetricValue(
        rank, n_samples=len(holdout), reference=f"{len(holdout)} holdout images: {extra['holdout_population']}",
        extra=extra,
        interval=percentile_interval(replicates) if n_boot else None,
        interval_method=(f"95% percentile bootstrap over the {len(holdout)} holdout images, {n_boot} replicates, "
                         f"seed {seed}") if n_boot else None,
        replicates=list(replicates) if n_boot else None)


MIA_TEXT = {
    "loss": "loss attack (Matsumoto et al. 2023): pixel-summed ||eps_theta(x_t, t) - eps||^2 averaged over fixed "
            "timesteps and seeded noise draws",
    "secmi": "SecMI t-error (Duan et al., ICML 2023): DDIM inversion to t_sec in steps of k, one DDIM step to "
             "t_sec + k and back, squared reconstruction error",
    "pia": "PIA (Kong et al., ICLR 2024): eps_0 = eps_theta(x_0, 0), x_t = gamma_t x_0 + sigma_t eps_0, "
           "||eps_theta(x_t, t) - eps_0||_p",
}


def _check_mia(tier_eval: dict[str, Any]) -> None:
    AttackSettings.from_tier(tier_eval)
    bootstrap_replicates(tier_eval)


def _check_relearn(tier_eval: dict[str, Any]) -> None:
    _check_mia(tier_eval)
    RelearnSettings.from_tier(tier_eval)


def _register_attack(attack: str, order: int) -> None:
    def compute(ctx: EvalContext) -> MetricValue:
        return membership_value(ctx, attack)

    register_metric(
        f"mia_{attack}", higher_is_better=False, target="oracle", order=order,
        task_needs=("holdout",), digits=3, tolerance=0.15, passes=lambda e, a=attack: _mia_passes(e, a),
        check=_check_mia,
        implementation=f"percentile rank of the forget image's {MIA_TEXT[attack]} among the task's holdout "
                       f"population (1 = looks more like a training member than every holdout image; the retrain "
                       f"oracle's rank on the same images and noise is in extra.oracle_rank, the gap in extra.gap)",
    )(compute)


def _mia_passes(tier_eval: dict[str, Any], attack: str) -> tuple[float, float]:
    """UNet forward passes (per image) of one attack over the forget image and the holdout population."""
    s = AttackSettings.from_tier(tier_eval)
    per_image = {"loss": len(s.loss_timesteps) * s.loss_draws, "secmi": s.secmi_t // s.secmi_k + 2, "pia": 2}[attack]
    return per_image * (s.holdout + 1), 0.0


for _i, _attack in enumerate(ATTACKS):
    _register_attack(_attack, 91 + _i)


# ---- the relearning attack ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RelearnSettings:
    """The relearning attack (tier ``eval`` settings ``relearn_steps`` and ``relearn_neighbours``)."""

    steps: int = 50  # fine-tuning steps, with the tier's unlearning optimiser, batch size and learning rate
    neighbours: int = 8  # K nearest retain neighbours per forget image (the stronger variant)

    @classmethod
    def from_tier(cls, tier_eval: dict[str, Any]) -> "RelearnSettings":
        steps = tier_eval.get("relearn_steps", cls.steps)
        k = tier_eval.get("relearn_neighbours", cls.neighbours)
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise MembershipInputError(f"relearn_steps must be a positive integer, got {steps!r}: a relearning "
                                       f"attack of 0 steps measures nothing (drop the relearn_* metrics instead)")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise MembershipInputError(f"relearn_neighbours must be a positive integer, got {k!r}")
        return cls(steps, k)


class _Relearn(FineTuneMethod):
    """Benign fine-tuning: the DDPM loss on retain batches, plus (``knn``) a batch of the forget images' neighbours."""

    name = "relearn"

    def __init__(self, with_neighbours: bool) -> None:
        self.with_neighbours = with_neighbours

    def loss(self, ctx: StepContext, batch: Batch) -> Tensor:
        from unlearnbench.diffusion import ddpm_loss

        x = torch.cat([batch.retain, batch.forget]) if self.with_neighbours else batch.retain
        return ddpm_loss(ctx.model, ctx.schedule, x, ctx.noise_like(x), ctx.timesteps(len(x)))


def neighbour_images(ctx: EvalContext, k: int) -> Tensor:
    """The ``k`` nearest retain images (L2 on model-space pixels, faiss) of each distinct forget image."""
    from unlearnbench.neighbours import cached_knn_search

    _, index = cached_knn_search(forget_images(ctx), ctx.retain, k, ctx.cache_dir / "knn")
    return ctx.retain[index.flatten().unique()]


def relearn(ctx: EvalContext, model: Any, variant: str) -> dict[str, Any]:
    """Fine-tune a copy of ``model`` by the ``variant`` attack, then its forget rate, NLL and loss-attack rank."""
    settings = RelearnSettings.from_tier(ctx.tier_eval)
    if ctx.loop is None or ctx.sampler is None:
        raise MembershipInputError("the relearning attack needs the tier's unlearning loop and sampler")
    holdout_images(ctx)  # no population: fail before fine-tuning
    knn = variant == "relearn_knn"
    extra = neighbour_images(ctx, settings.neighbours) if knn else ctx.retain[:1]  # benign: the branch is unused
    loop = dataclasses.replace(ctx.loop, steps=settings.steps, grad_accum=1)
    attacked = copy.deepcopy(model).to(ctx.device)
    log = finetune(attacked, _Relearn(knn), ctx.retain, extra, loop, None, ctx.seed + 4242, ctx.device,
                   progress=ctx.progress, schedule=_schedule(ctx))
    attacked.eval()
    sets = ctx.task.generate(attacked, ctx.sampler, ctx.seed, ctx.device, ctx.data, ctx.progress)
    sub = dataclasses.replace(ctx, sample_sets=sets, model=attacked, memo={"mia_settings": attack_settings(ctx),
                                                                            "mia_holdout": holdout_images(ctx)},
                              _forget_mask=None)
    forget, holdout = model_errors(sub, attacked, "loss", "relearned")
    values = {"forget_rate": ctx.task.forget_rate(sub).value, "nll": METRICS.get("nll").compute(sub).value,
              "mia_loss": percentile_rank(forget, holdout)}
    return {"values": values, "steps": settings.steps, "lr": loop.lr, "batch_size": loop.batch_size,
            "neighbours": settings.neighbours if knn else 0, "neighbour_images": len(extra) if knn else 0,
            "seconds": log.seconds}


def relearned(ctx: EvalContext, variant: str) -> dict[str, Any]:
    """The cell model's relearning outcome for ``variant`` (memoised: its three metrics read one attack)."""
    key = f"relearned:{variant}"
    if key not in ctx.memo:
        ctx.memo[key] = relearned_oracle(ctx, variant) if is_oracle(ctx) else relearn(ctx, ctx.model, variant)
    return ctx.memo[key]


def relearned_oracle(ctx: EvalContext, variant: str) -> dict[str, Any] | None:
    """The oracle's relearning outcome with the same seed and settings, cached on disk (JSON) per oracle."""
    if ctx.oracle is None:
        return None
    key = f"relearned_oracle:{variant}"
    if key not in ctx.memo:
        model, identity = _oracle_model(ctx)
        name = cache_key(identity.get("sha256"), _population_key(ctx), describe(attack_settings(ctx)),
                         dataclasses.asdict(RelearnSettings.from_tier(ctx.tier_eval)), dataclasses.asdict(ctx.loop),
                         dataclasses.asdict(ctx.sampler), ctx.seed, variant, ctx.tier_eval)
        path = ctx.cache_dir / MIA_CACHE / f"oracle-{variant}-{name}.json"
        out = None
        if path.exists():
            try:
                out = json.loads(path.read_text())
                if set(out.get("values", {})) != {"forget_rate", "nll", "mia_loss"}:
                    raise ValueError("unexpected content")
            except Exception as err:  # a cache is repaired, never trusted
                discard_bad_cache(path, "relearning cache", err)
                out = None
        if out is None:
            out = relearn(ctx, model, variant)
            atomic_write_json(path, out)
        ctx.memo[key] = {**out, "oracle": identity.get("sha256")}
    return ctx.memo[key]


RELEARN_TEXT = {
    "relearn": "fine-tuned for relearn_steps on retain data only (benign fine-tuning)",
    "relearn_knn": "fine-tuned for relearn_steps on retain data plus a batch of each forget image's relearn_neighbours "
                   "nearest retain images per step",
}
#: measure -> (higher is better, what it is, shown in %, decimals, the gate's (tolerance, relative)) after relearning
MEASURES = {
    "forget_rate": (False, "the task's forget rate", True, 1, (0.01, False)),
    "nll": (True, "the NLL of the forget image in bits/dim (the nll metric)", False, 2, (0.05, True)),
    "mia_loss": (False, "the loss attack's percentile rank (the mia_loss metric)", False, 3, (0.15, False)),
}


def _relearn_passes(tier_eval: dict[str, Any], sampler: Any = None, loop: Any = None, knn: bool = False
                    ) -> tuple[float, float]:
    """Per-image UNet passes of one relearning attack on one model: fine-tuning, re-sampling, one NLL and the
    loss attack (the oracle's is cached, counted once per seed, not here)."""
    settings = RelearnSettings.from_tier(tier_eval)
    batch = (loop.batch_size if loop else 0) * (2 if knn else 1)
    sampling = sampler.num_samples * sampler.steps if sampler else 0
    loss = _mia_passes(tier_eval, "loss")[0]
    nll_forward, nll_train = METRICS.get("nll").passes(tier_eval)
    return sampling + loss + nll_forward, settings.steps * batch + nll_train


_RELEARN_PASSES = {
    "relearn": lambda e, sampler=None, loop=None: _relearn_passes(e, sampler, loop, False),
    "relearn_knn": lambda e, sampler=None, loop=None: _relearn_passes(e, sampler, loop, True),
}


def _register_relearn(variant: str, measure: str, order: int) -> None:
    higher, what, percent, digits, (tolerance, relative) = MEASURES[measure]

    def compute(ctx: EvalContext) -> MetricValue:
        try:
            out = relearned(ctx, variant)
        except MembershipInputError as err:
            return MetricValue(None, available=False, reason=str(err))
        oracle = relearned_oracle(ctx, variant)
        extra = {k: v for k, v in out.items() if k != "values"}
        extra["oracle_value"] = oracle["values"][measure] if oracle else None
        if oracle:
            extra["oracle"] = oracle["oracle"]
        n = ctx.sampler.num_samples if measure == "forget_rate" else None
        return MetricValue(out["values"][measure], n_samples=n,
                           reference="the same attack applied to the retrain oracle: extra.oracle_value", extra=extra)

    register_metric(
        f"{variant}_{measure}", higher_is_better=higher, order=order, percent=percent, tolerance=tolerance,
        relative=relative,
        digits=digits, target="oracle" if measure != "forget_rate" else None,
        task_needs=("holdout",), passes=_RELEARN_PASSES[variant], check=_check_relearn,
        implementation=f"{what} after the relearning attack: the unlearned model {RELEARN_TEXT[variant]} with the "
                       f"tier's unlearning optimiser, batch size and learning rate; the retrain oracle's value under "
                       f"the same attack is in extra.oracle_value",
    )(compute)


for _j, _variant in enumerate(("relearn", "relearn_knn")):
    for _k, _measure in enumerate(MEASURES):
        _register_relearn(_variant, _measure, 140 + 3 * _j + _k)


#: The verification metrics in table order, as tiers list them.
MEMBERSHIP_METRICS = tuple(f"mia_{attack}" for attack in ATTACKS)
RELEARN_METRICS = tuple(f"{variant}_{measure}" for variant in ("relearn", "relearn_knn") for measure in MEASURES)
#: How a CPU tier says the relearning attack is opt-in (it samples and computes an NLL again, twice).
RELEARN_OFF = {name: "the relearning attack re-samples and recomputes the NLL twice per cell (about twice a cell's "
                     "evaluation time): name them in --metrics (docs/verification.md)" for name in RELEARN_METRICS}
