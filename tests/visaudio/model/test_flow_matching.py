"""visaudio.model.flow_matching: the sampler integrates known velocity fields exactly, the loss is zero
for the true velocity, and guidance at scale 1 is the conditional velocity."""

import torch

from visaudio.model import flow_matching as FM


def test_euler_integrates_a_constant_velocity_exactly():
    x0 = torch.randn(3, 2, 5, 4, generator=torch.Generator().manual_seed(0))
    v = torch.randn(1, 2, 5, 4, generator=torch.Generator().manual_seed(1))
    for steps in (1, 4, 25):
        x1 = FM.euler_sample(lambda x, t: v.expand_as(x), x0, steps)
        torch.testing.assert_close(x1, x0 + v, rtol=0, atol=1e-5)


def test_euler_uses_each_steps_start_time():
    # dx/dt = t: Euler with left end points gives sum_i i/n * 1/n = (n - 1) / (2 n), not the exact 1/2,
    # so this fails if the sampler evaluated at the step's end or midpoint
    x0 = torch.zeros(2, 2, 3, 1)
    seen = []

    def v(x, t):
        seen.append(t.clone())
        return t.view(-1, 1, 1, 1).expand_as(x)

    n = 8
    x1 = FM.euler_sample(v, x0, n)
    torch.testing.assert_close(x1, torch.full_like(x0, (n - 1) / (2 * n)), rtol=0, atol=1e-6)
    assert len(seen) == n and all(s.shape == (2,) for s in seen) and float(seen[0][0]) == 0.0


def test_true_velocity_has_zero_loss_and_path_ends_at_noise_and_data():
    g = torch.Generator().manual_seed(2)
    x0, x1 = torch.randn(4, 2, 6, 3, generator=g), torch.randn(4, 2, 6, 3, generator=g)
    t = FM.sample_t([torch.Generator().manual_seed(i) for i in range(4)])
    assert t.shape == (4,) and bool(((t > 0) & (t < 1)).all())
    assert torch.equal(FM.interpolate(x0, x1, torch.zeros(4)), x0)
    assert torch.equal(FM.interpolate(x0, x1, torch.ones(4)), x1)
    # following the target velocity from x_t for the remaining 1 - t lands on the data
    xt = FM.interpolate(x0, x1, t)
    torch.testing.assert_close(xt + (1 - t).view(-1, 1, 1, 1) * FM.target_velocity(x0, x1), x1)
    for w in (1.0, 3.0):
        assert torch.equal(FM.flow_loss(FM.target_velocity(x0, x1), x0, x1, w), torch.zeros(4))
    # a side-only error (e_L = -e_R) is scaled by the side weight; a mid-only one is not
    e = torch.randn(4, 1, 6, 3, generator=g)
    side, mid = torch.cat([e, -e], 1), torch.cat([e, e], 1)
    v = FM.target_velocity(x0, x1)
    torch.testing.assert_close(FM.flow_loss(v + side, x0, x1, 3.0), 3 * FM.flow_loss(v + side, x0, x1, 1.0))
    torch.testing.assert_close(FM.flow_loss(v + mid, x0, x1, 3.0), FM.flow_loss(v + mid, x0, x1, 1.0))


def test_guidance_scale_one_is_conditional_and_zero_is_unconditional():
    vc, vu = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 3, 4)
    torch.testing.assert_close(FM.guide(vc, vu, 1.0), vc)  # ViSAudio.velocity skips the guided pass there
    assert torch.equal(FM.guide(vc, vu, 0.0), vu)
    torch.testing.assert_close(FM.guide(vc, vu, 4.5), vu + 4.5 * (vc - vu))
