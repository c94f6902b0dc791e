"""Camera motion from the picture, as a conditioning stream (``model.camera_motion``).

Why: a world-fixed sound's interaural difference changes when the camera turns (turn left, the
sound moves right), also when the source is off-screen; the only visual evidence is the
picture's global motion. A small convolutional encoder of frame differences (the sync stream)
sees that motion only after it has learnt what global motion is; here it is measured directly
and without learnt weights: per pair of consecutive frames, the horizontal shift by phase
correlation (strongly coloured pixels, likely objects that move by themselves, masked to grey),
converted to a yaw step with the pinhole model at 90° field of view, integrated to the yaw relative
to the clip start. A small MLP (zero-initialised output: the untrained model is unchanged) turns
``[rate, yaw, sin yaw, cos yaw - 1, sin 2yaw, cos 2yaw - 1]`` into a feature per branch; the right
branch gets the mirrored motion (rate and yaw negated), as the spacetime module gives it the
mirrored picture, so "the camera turns towards my side" is one shared function for both ears.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def horizontal_shifts(frames: torch.Tensor, max_frac: float = 0.125, max_chroma: float = 0.25) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 frames -> (B, T) horizontal shift (pixels, + = content moved right)
    from frame t-1 to t (0 for t = 0), by phase correlation with a parabolic sub-pixel peak."""
    B, T, H, W, _ = frames.shape
    x = frames.float() / 255.0
    gray = x.mean(-1)
    chroma = x.amax(-1) - x.amin(-1)
    mask = F.max_pool2d((chroma > max_chroma).float().reshape(B * T, 1, H, W), 5, 1, 2).reshape(B, T, H, W) > 0
    mean = gray.mean(dim=(2, 3), keepdim=True)
    gray = torch.where(mask, mean, gray)
    win = torch.hann_window(H, periodic=False, device=frames.device)[:, None] * \
        torch.hann_window(W, periodic=False, device=frames.device)[None, :]
    g = (gray - gray.mean(dim=(2, 3), keepdim=True)) * win
    spec = torch.fft.fft2(g)
    r = spec[:, 1:] * spec[:, :-1].conj()
    r = r / (r.abs() + 1e-9)
    c = torch.fft.ifft2(r).real  # (B, T-1, H, W)
    dx_idx = torch.arange(W, device=frames.device)
    dy_idx = torch.arange(H, device=frames.device)
    okx = torch.minimum(dx_idx, W - dx_idx) <= max(1, int(max_frac * W))
    oky = torch.minimum(dy_idx, H - dy_idx) <= max(1, int(max_frac * H))
    cm = c.masked_fill(~(oky[:, None] & okx[None, :]), float("-inf"))
    flat = cm.reshape(B, T - 1, -1).argmax(-1)
    iy, ix = flat // W, flat % W
    row = c.gather(2, iy[..., None, None].expand(B, T - 1, 1, W)).squeeze(2)  # (B, T-1, W)
    x0 = row.gather(-1, ix[..., None]).squeeze(-1)
    xm = row.gather(-1, ((ix - 1) % W)[..., None]).squeeze(-1)
    xp = row.gather(-1, ((ix + 1) % W)[..., None]).squeeze(-1)
    den = xm - 2 * x0 + xp
    frac = torch.where(den.abs() > 1e-9, 0.5 * (xm - xp) / den.where(den.abs() > 1e-9, torch.ones_like(den)),
                       torch.zeros_like(den)).clamp(-0.5, 0.5)
    dx = ix.float() + frac
    dx = torch.where(dx > W / 2, dx - W, dx)
    return torch.cat([torch.zeros(B, 1, device=frames.device), dx], dim=1)


def yaw_features(frames: torch.Tensor, hfov_deg: float = 90.0, centered: bool = False) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, T, 6) camera-motion features (yaw in radians, left = +),
    relative to the window's first frame, or with ``centered`` to the window's mean yaw (and the
    rate less its window mean): how the view turns within the window, not its net direction."""
    W = frames.shape[3]
    f = (W / 2.0) / math.tan(math.radians(hfov_deg) / 2)
    step = torch.atan(horizontal_shifts(frames) / f)  # content right = camera turned left
    yaw = torch.cumsum(step, dim=1)
    if centered:
        yaw = yaw - yaw.mean(dim=1, keepdim=True)
        if step.shape[1] > 1:  # the first frame has no step of its own: it takes the next one's
            step = torch.cat([step[:, 1:2], step[:, 1:]], dim=1)
        step = step - step.mean(dim=1, keepdim=True)
    return torch.stack([step * 10.0, yaw, torch.sin(yaw), torch.cos(yaw) - 1, torch.sin(2 * yaw),
                        torch.cos(2 * yaw) - 1], dim=-1)


class CameraMotion(nn.Module):
    """Measured camera yaw -> a per-branch feature (B, 2, T, D) at the frame rate."""

    def __init__(self, dim: int, centered: bool = False):
        super().__init__()
        self.centered = centered
        self.mlp = nn.Sequential(nn.Linear(6, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            f = yaw_features(frames, centered=self.centered)
        mirror = torch.tensor([-1.0, -1.0, -1.0, 1.0, -1.0, 1.0], device=f.device)
        return torch.stack([self.mlp(f), self.mlp(f * mirror)], dim=1)
