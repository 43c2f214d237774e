"""SalUn against an independent implementation on identical tensors: the saliency mask (one global ranking
of |∇L_forget| by argsort, as the paper defines it), the default forget loss (the retain denoiser's target by
an explicit softmax), the masked update, and the mask over a wrapped method."""
from __future__ import annotations


import pytest
import torch
from diffusers import UNet2DModel

from unlearnbench.cli import main
from unlearnbench.diffusion import NoiseSchedule
from unlearnbench.loop import Batch, LoopConfig, StepContext, step_direction
from unlearnbench.method import UnlearnJob
from unlearnbench.methods.retrack import ReTrack
from unlearnbench.methods.salun import SalUn, SalUnHparams, SalUnState, saliency_mask
from unlearnbench.protocols import MNIST_TSHIRT

CPU = torch.device("cpu")


def tiny_unet(seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(4, 8), norm_num_groups=4,
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).double()


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(12, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1, \
        torch.rand(5, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1


def reference_mask(model: UNet2DModel, forget: torch.Tensor, fraction: float, batch_size: int, seed: int) -> list:
    """The paper's mask written plainly: the forget DDPM loss's gradient summed over batches (same seeded noise
    and timesteps), |g| ranked over all weights by argsort, the top ``fraction`` set to 1."""
    schedule, generator = NoiseSchedule.from_scheduler(), torch.Generator().manual_seed(seed + 3)
    model.zero_grad(set_to_none=True)
    for start in range(0, len(forget), batch_size):
        a = forget[start : start + batch_size]
        noise = torch.randn(a.shape, generator=generator).double()
        t = torch.randint(0, 1000, (len(a),), generator=generator)
        ac = schedule.alphas_cumprod.double()[t].view(-1, 1, 1, 1)
        x_t = ac.sqrt() * a + (1 - ac).sqrt() * noise
        ((model(x_t, t).sample - noise) ** 2).sum(dim=(1, 2, 3)).mean().backward()
    grads = [p.grad.abs().flatten() for p in model.parameters()]
    ranks = torch.argsort(torch.argsort(-torch.cat(grads)))
    keep = (ranks < int(fraction * len(ranks))).double()
    model.zero_grad(set_to_none=True)
    return [m.reshape(p.shape) for m, p in zip(keep.split([p.numel() for p in model.parameters()]), model.parameters())]


@pytest.mark.parametrize("fraction", [0.5, 0.1])
def test_the_mask_is_the_top_fraction_of_the_forget_gradient(fraction: float) -> None:
    model = tiny_unet()
    _, forget = data()
    ours = saliency_mask(model, forget, NoiseSchedule.from_scheduler(), fraction, batch_size=2, seed=7, device=CPU)
    theirs = reference_mask(model, forget, fraction, batch_size=2, seed=7)
    assert all(torch.equal(a.double(), b) for a, b in zip(ours, theirs))
    total = sum(m.numel() for m in ours)
    assert sum(int(m.sum()) for m in ours) == int(fraction * total)


def _ctx(model: UNet2DModel, hparams: SalUnHparams, state: SalUnState, seed: int = 3) -> StepContext:
    return StepContext(model, NoiseSchedule.from_scheduler(), hparams, state, torch.Generator().manual_seed(seed), CPU)


def test_the_default_loss_is_the_neighbours_target_plus_alpha_retain_loss() -> None:
    model = tiny_unet()
    retain, forget = data(1)
    h = SalUnHparams(fraction=0.5, alpha=0.3)
    pools = torch.stack([retain[[0, 3, 5]], retain[[1, 2, 4]]])  # each forget image's own retain neighbours
    ctx = _ctx(model, h, SalUnState(mask=[], neighbours=pools.flatten(2)))
    batch = Batch(retain[:6], forget[:2], torch.arange(2))
    ours = SalUn().loss(ctx, batch)
    # the same draws, in the same order: t_a, ε_a, ε_r, t_r
    g = torch.Generator().manual_seed(3)
    t_a = torch.randint(0, 1000, (2,), generator=g)
    eps_a = torch.randn(batch.forget.shape, generator=g, dtype=torch.float64)
    eps_r = torch.randn(batch.retain.shape, generator=g, dtype=torch.float64)
    t_r = torch.randint(0, 1000, (6,), generator=g)
    ac = NoiseSchedule.from_scheduler().alphas_cumprod.double()
    ga, sa = ac[t_a].sqrt().view(-1, 1, 1, 1), (1 - ac[t_a]).sqrt().view(-1, 1, 1, 1)
    x_a = ga * batch.forget + sa * eps_a
    v = (x_a[:, None] - ga[:, None] * pools) / sa[:, None]  # (2, 3, 1, 8, 8): one target per neighbour
    w = torch.softmax(-(v ** 2).sum(dim=(2, 3, 4)) / 2, dim=1)
    v_bar = (w[:, :, None, None, None] * v).sum(1)
    x_r = ac[t_r].sqrt().view(-1, 1, 1, 1) * batch.retain + (1 - ac[t_r]).sqrt().view(-1, 1, 1, 1) * eps_r
    forget_loss = ((model(x_a, t_a).sample - v_bar) ** 2).mean()
    retain_loss = ((model(x_r, t_r).sample - eps_r) ** 2).sum(dim=(1, 2, 3)).mean()
    assert float(ours.detach()) == pytest.approx(float((forget_loss + 0.3 * retain_loss).detach()), rel=1e-9)


def test_only_the_masked_weights_move() -> None:
    model = tiny_unet()
    retain, forget = data(2)
    job = UnlearnJob(model, retain, forget.repeat(4, 1, 1, 1), LoopConfig(steps=3, batch_size=4, lr=1e-2,
                     weight_decay=0.0), SalUnHparams(fraction=0.2, alpha=1e-3), seed=0, device=CPU,
                     progress=False, protocol=MNIST_TSHIRT)
    before = [p.detach().clone() for p in model.parameters()]
    result = SalUn().unlearn(job)
    mask = saliency_mask(tiny_unet(), forget.repeat(4, 1, 1, 1), NoiseSchedule.from_scheduler(), 0.2, 4, 0, CPU)
    moved = [(p.detach() != b) for p, b in zip(result.model.parameters(), before)]
    assert not any(bool((mv & (m == 0)).any()) for mv, m in zip(moved, mask))  # nothing outside the mask
    assert sum(int((mv & (m == 1)).sum()) for mv, m in zip(moved, mask)) > 0.5 * sum(int(m.sum()) for m in mask)
    assert result.log.setup["unet_forward"] == pytest.approx(len(job.forget) / 4)  # the mask's one-off passes


def test_the_mask_wraps_another_method_on_identical_tensors() -> None:
    """base=retrack: the update direction is m ⊙ (ReTrack's own direction) for the same draws."""
    retain, forget = data(3)
    forget = forget.repeat(2, 1, 1, 1)
    model = tiny_unet()
    job = UnlearnJob(model, retain, forget, LoopConfig(steps=1, batch_size=4, lr=1e-4), SalUnHparams(0.5, 1e-3, "retrack"),
                     seed=0, device=CPU, progress=False, protocol=MNIST_TSHIRT)
    salun = SalUn()
    state = salun.setup(job)
    assert state.base_hparams == ReTrack.hparams(MNIST_TSHIRT)
    batch = Batch(retain[:4], forget[:4], torch.arange(4))
    step_direction(salun, _ctx(model, job.hparams, state), [batch])
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    plain = _ctx(model, state.base_hparams, state.base_state)
    step_direction(ReTrack(), plain, [batch])
    for g, p, m in zip(ours, model.parameters(), state.mask):
        assert torch.allclose(g, p.grad * m, atol=1e-12)


def test_a_base_that_is_no_finetuning_unlearning_method_is_refused(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--tier", "smoke", "--methods", "salun", "--set", "salun.base=retrain", "--dry-run"]) == 2
    assert "salun.base=retrain: the mask wraps a fine-tuning unlearning method" in capsys.readouterr().err
    with pytest.raises(ValueError, match="fraction"):
        SalUnHparams(fraction=0.0, alpha=1e-3)
