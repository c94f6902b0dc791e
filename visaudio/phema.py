"""Post-hoc EMA (Karras et al., "Analyzing and Improving the Training Dynamics of Diffusion
Models", 2024; used by MMAudio): choose the EMA width after training instead of before.

Why: the best EMA length depends on the run and is expensive to search by retraining. During
training two power-function EMAs (relative widths sigma_rel, e.g. 0.05 and 0.10) are updated
every step and snapshotted every N steps. Any power-function EMA at any step is, to a good
approximation, a linear combination of those snapshots; the weights solve a small least-squares
problem in closed form (the inner products of the power-function kernels).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """Exponent gamma of the power-function EMA with relative standard deviation sigma_rel
    (Karras et al. eq. 3: sigma_rel^2 = (g+1) / ((g+2)^2 (g+3)), solved for g)."""
    t = sigma_rel ** -2
    return float(np.roots([1, 7, 16 - t, 12 - t]).real.max())


class PowerEMA:
    """theta_ema(t) = beta_t theta_ema + (1 - beta_t) theta, beta_t = (1 - 1/t)^(gamma + 1)."""

    def __init__(self, model: nn.Module, sigma_rels: list[float]):
        self.gammas = [sigma_rel_to_gamma(s) for s in sigma_rels]
        self.sigma_rels = list(sigma_rels)
        self.states = [{k: v.detach().clone().float() for k, v in model.state_dict().items()} for _ in self.gammas]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        cur = model.state_dict()
        for g, st in zip(self.gammas, self.states, strict=True):
            beta = (1.0 - 1.0 / max(step, 1)) ** (g + 1.0)
            for k, v in cur.items():
                if v.dtype.is_floating_point:
                    st[k].mul_(beta).add_(v.detach().float(), alpha=1.0 - beta)
                else:
                    st[k].copy_(v)

    def state_dict(self) -> dict[str, Any]:
        return {"sigma_rels": self.sigma_rels, "states": self.states}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if [round(s, 9) for s in d["sigma_rels"]] != [round(s, 9) for s in self.sigma_rels]:
            raise ValueError(f"post-hoc EMA widths changed: checkpoint {d['sigma_rels']}, config {self.sigma_rels}")
        self.states = [{k: v.float().clone() for k, v in s.items()} for s in d["states"]]


def _p_dot_p(t_a, g_a, t_b, g_b):
    t_ratio = t_a / t_b
    t_exp = np.where(t_a < t_b, g_b, -g_a)
    t_max = np.maximum(t_a, t_b)
    num = (g_a + 1) * (g_b + 1) * t_ratio ** t_exp
    den = (g_a + g_b + 1) * t_max
    return num / den


def solve_weights(t_i: np.ndarray, g_i: np.ndarray, t_r: float, g_r: float) -> np.ndarray:
    """Least-squares weights of snapshots (t_i, gamma_i) that best reproduce the power-function
    EMA (t_r, gamma_r) (Karras et al., algorithm 3)."""
    t_i, g_i = np.asarray(t_i, np.float64), np.asarray(g_i, np.float64)
    a = _p_dot_p(t_i[:, None], g_i[:, None], t_i[None, :], g_i[None, :])
    b = _p_dot_p(t_i[:, None], g_i[:, None], np.array([[t_r]]), np.array([[g_r]]))
    return np.linalg.lstsq(a, b, rcond=None)[0][:, 0]


def snapshot_path(run: Path, step: int) -> Path:
    return Path(run) / "ema" / f"phema-{step:08d}.pt"


def list_snapshots(run: Path) -> list[tuple[int, Path]]:
    out = []
    for p in sorted((Path(run) / "ema").glob("phema-*.pt")):
        m = re.fullmatch(r"phema-(\d+)\.pt", p.name)
        if m:
            out.append((int(m.group(1)), p))
    return out


def synthesize(run: Path, sigma_rel: float, step: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The EMA of width ``sigma_rel`` at ``step`` (default: the last snapshot) from the run's
    snapshots. Returns (state_dict, info)."""
    snaps = [(s, p) for s, p in list_snapshots(run) if step is None or s <= step]
    if not snaps:
        raise FileNotFoundError(f"no post-hoc EMA snapshots in {Path(run) / 'ema'} (train with "
                                "--set train.posthoc_ema=true)")
    t_r = float(step if step is not None else snaps[-1][0])
    g_r = sigma_rel_to_gamma(sigma_rel)
    ts, gs, states = [], [], []
    for s, p in snaps:
        d = torch.load(p, map_location="cpu", weights_only=True)
        for g, st in zip([sigma_rel_to_gamma(x) for x in d["sigma_rels"]], d["states"], strict=True):
            ts.append(float(s))
            gs.append(g)
            states.append(st)
    w = solve_weights(np.array(ts), np.array(gs), t_r, g_r)
    out: dict[str, torch.Tensor] = {}
    for k, v in states[-1].items():
        if v.dtype.is_floating_point:
            acc = torch.zeros_like(v, dtype=torch.float64)
            for wi, st in zip(w, states, strict=True):
                acc += float(wi) * st[k].double()
            out[k] = acc.float()
        else:
            out[k] = v.clone()
    return out, {"sigma_rel": sigma_rel, "step": int(t_r), "n_snapshots": len(snaps), "weights": w.tolist()}
