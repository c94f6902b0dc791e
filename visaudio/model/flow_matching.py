"""All of ViSAudio's flow-matching maths in one place: the path, its target, the loss, the training
timesteps and the Euler sampler with classifier-free guidance.

Convention (rectified flow, noise at t = 0, data at t = 1): x_t = (1 - t) x0 + t x1 with x0 the
prior noise and x1 the normalised latents; the model predicts the velocity dx/dt = x1 - x0.
Training (``visaudio.train``) and sampling (``visaudio.model.network.ViSAudio.sample``, hence
``visaudio.generate``) both call this module, so the two can never disagree on the convention,
and generation needs no training code. It knows nothing of the network: velocities come in as
tensors or as a callable ``v(x, t)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """x_t on the straight path from noise x0 (t = 0) to data x1 (t = 1); ``t`` is (B,) or a
    number (the same time for the whole batch)."""
    tt = t.view(-1, 1, 1, 1) if isinstance(t, torch.Tensor) else t
    return (1 - tt) * x0 + tt * x1


def target_velocity(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The velocity the model learns: constant along the path, x1 - x0."""
    return x1 - x0


def flow_loss(v: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, side_weight: float = 1.0) -> torch.Tensor:
    """Per-sample loss (B,) of predicted velocities ``v`` (B, 2, N, D): mean squared error over N
    and D, summed over the L and R channels.

    |e_L|^2 + |e_R|^2 = |e_L + e_R|^2 / 2 + |e_L - e_R|^2 / 2; ``side_weight`` (train.side_loss_weight)
    scales the side half, the ILD/ITD-bearing difference of the channels, which is a small share
    of the summed loss. 1.0 is exactly the plain L + R sum (and takes that shorter route)."""
    e = v.float() - target_velocity(x0, x1)
    if side_weight == 1.0:
        return e.pow(2).mean(dim=(2, 3)).sum(1)  # summed over L and R
    mid = (e[:, 0] + e[:, 1]).pow(2).mean(dim=(1, 2)) / 2
    side = (e[:, 0] - e[:, 1]).pow(2).mean(dim=(1, 2)) / 2
    return mid + side_weight * side


def sample_t(gens: Sequence[torch.Generator], t_mean: float = 0.0, t_std: float = 1.0) -> torch.Tensor:
    """Training timesteps (B,), logit-normal: sigmoid(N(t_mean, t_std)), one draw from each
    sample's own generator (so a sample's t does not depend on the batch it lands in)."""
    u = torch.stack([torch.randn(1, generator=g) for g in gens]).view(-1)
    return torch.sigmoid(u * t_std + t_mean)


def scale_side(x: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, 2, ...) L/R latents -> the same with the interaural part (L - R) / 2 scaled by
    ``scale`` and the mid (L + R) / 2 kept."""
    if scale == 1.0:
        return x
    mid = 0.5 * (x[:, 0] + x[:, 1])
    side = 0.5 * (x[:, 0] - x[:, 1]) * scale
    return torch.stack([mid + side, mid - side], dim=1)


def guide(v_cond: torch.Tensor, v_uncond: torch.Tensor, cfg: float) -> torch.Tensor:
    """Classifier-free guidance: v_u + cfg (v_c - v_u); cfg == 1 gives the conditional one."""
    return v_uncond + cfg * (v_cond - v_uncond)


def euler_sample(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
                 steps: int) -> torch.Tensor:
    """Euler integration of dx/dt = velocity(x, t) from x0 at t = 0 to t = 1 in ``steps`` equal
    steps, evaluating the velocity at each step's start; ``t`` is passed as (B,)."""
    B = x0.shape[0]
    ts = torch.linspace(0, 1, steps + 1, device=x0.device)
    x = x0
    for i in range(steps):
        t = ts[i].expand(B)
        x = x + (ts[i + 1] - ts[i]) * velocity(x, t).float()
    return x
