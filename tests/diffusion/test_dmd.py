"""Distribution matching distillation (diffusion/dmd.py): the direction against the Gaussian closed form, the
surrogate's gradient, a generator pulled onto the real distribution, the one-step generator as `ddim`'s step."""
import pytest
import torch

from diffusion.distill import distilled_config, make_student
from diffusion.dmd import check_one_step_pair, dmd_direction, dmd_loss, one_step_generate
from diffusion.samplers import ddim
from tests.factories import tiny_score


def gaussian_denoiser(mean: float, var: float):
    """Exact D(x_t; sigma) = E[x0 | x_t] for x0 ~ N(mean, var I), x_t = x0 + sigma eps."""
    return lambda xt, sigma: mean + var / (var + sigma ** 2) * (xt - mean)


def test_direction_is_the_closed_form_score_difference_scaled_by_the_real_error():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 4, 4, generator=g)
    sigma, s2 = 0.7, 0.25
    xt = x + sigma * torch.randn(x.shape, generator=g)
    real, fake = gaussian_denoiser(0.0, s2), gaussian_denoiser(0.5, s2)
    d = dmd_direction(x, real(xt, sigma), fake(xt, sigma))
    # D_fake - D_real = (theta - mu) sigma^2 / (s^2 + sigma^2), the same in every pixel; scale per sample
    scale = (x - real(xt, sigma)).abs().flatten(1).mean(1).view(-1, 1, 1, 1)
    torch.testing.assert_close(d, 0.5 * sigma ** 2 / (s2 + sigma ** 2) / scale.expand_as(x))
    assert torch.equal(dmd_direction(x, real(xt, sigma), real(xt, sigma)), torch.zeros_like(x))


def test_the_surrogate_loss_has_the_direction_as_its_gradient():
    x = torch.randn(3, 1, 5, 5, requires_grad=True)
    direction = torch.randn(3, 1, 5, 5)
    loss = dmd_loss(x, direction)
    loss.backward()
    torch.testing.assert_close(x.grad, direction / x.numel())
    torch.testing.assert_close(loss, 0.5 * direction.square().mean())


def test_dmd_steps_move_a_gaussian_generator_onto_the_real_mean():
    """Generator x = theta + s z against real N(mu, s^2): with exact denoisers of both distributions, gradient descent
    on the DMD surrogate drives theta to mu (from either side), and stops there."""
    mu, s2 = 0.3, 0.04
    for start in (-1.0, 1.5):
        theta = torch.tensor(start, requires_grad=True)
        opt = torch.optim.SGD([theta], lr=0.05)
        g = torch.Generator().manual_seed(1)
        for _ in range(200):
            x = theta + s2 ** 0.5 * torch.randn(16, 1, 4, 4, generator=g)
            sigma = float(torch.empty(()).uniform_(0.05, 2.0, generator=g))
            xt = x.detach() + sigma * torch.randn(x.shape, generator=g)
            fake = gaussian_denoiser(theta.item(), s2)       # the fake network, exact: the generator's own law
            d = dmd_direction(x.detach(), gaussian_denoiser(mu, s2)(xt, sigma), fake(xt, sigma))
            opt.zero_grad()
            dmd_loss(x, d).backward()                         # theta's gradient: the mean of d
            opt.step()
        assert abs(theta.item() - mu) < 0.02, (start, theta.item())


def one_step_student(teacher, steps=1):
    return make_student(teacher, distilled_config(steps, 16, (0.0, 4.0))).eval()


def test_one_step_generation_is_ddims_single_step():
    teacher = tiny_score(num_classes=10, image_size=8, precond="edm")
    student = one_step_student(teacher)
    with torch.no_grad():
        student.net.guidance_embed[-1].weight.normal_(0, 0.5)      # w reaches the output, as after training
    z, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 5, 9])
    w = torch.tensor([1.0, 1.5, 2.0, 3.0])
    with torch.no_grad():
        steps = list(ddim(student, z * student.sde.std_max, labels, num_steps=1, guidance=w))
        direct = one_step_generate(student, z, labels, w)
    torch.testing.assert_close(direct, steps[-1].x)
    assert not torch.allclose(direct[:1], one_step_generate(student, z[:1], labels[:1], 3.0))


def test_pairs_that_dmd_cannot_train_are_named():
    teacher = tiny_score(num_classes=10, image_size=8, precond="edm")
    check_one_step_pair(one_step_student(teacher), teacher)
    with pytest.raises(ValueError, match="one-step distilled student"):
        check_one_step_pair(one_step_student(teacher, steps=4), teacher)
    with pytest.raises(ValueError, match="one-step distilled student"):
        check_one_step_pair(teacher, teacher)
    with pytest.raises(ValueError, match="not a student"):
        check_one_step_pair(one_step_student(teacher), one_step_student(teacher))
    with pytest.raises(ValueError, match="sigma"):
        check_one_step_pair(one_step_student(teacher), tiny_score(num_classes=10, image_size=8, sigma=10.0))
    with pytest.raises(ValueError, match="image size"):
        check_one_step_pair(one_step_student(teacher), tiny_score(num_classes=10, image_size=16, precond="edm"))
