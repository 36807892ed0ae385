"""Distribution matching distillation (diffusion/dmd.py): the direction against the Gaussian closed form, the
surrogate's gradient, a generator pulled onto the real distribution, the generator as the student's own sampler."""
import pytest
import torch

from diffusion.distill import distilled_config, make_student
from diffusion.dmd import check_student_pair, dmd_direction, dmd_loss, student_generate
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
    student = make_student(teacher, distilled_config(steps, 16, (0.0, 4.0))).eval()
    with torch.no_grad():
        student.net.guidance_embed[-1].weight.normal_(0, 0.5)      # w reaches the output, as after training
    return student


@pytest.mark.parametrize("steps, eta", [(1, 0.0), (2, 0.0), (2, 0.5), (4, 1.0)])
def test_the_generator_is_the_students_own_sampler(steps, eta):
    """student_generate (differentiable) lands where `ddim` at that eta lands from the same noise, step noise
    included: ddim draws its ancestral noise from the generator in step order, the test hands the same draws in."""
    teacher = tiny_score(num_classes=10, image_size=8, precond="edm")
    student = one_step_student(teacher, steps)
    z, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 5, 9])
    w = torch.tensor([1.0, 1.5, 2.0, 3.0])
    g = torch.Generator().manual_seed(7)
    noises = torch.stack([torch.randn(z.shape, generator=g) for _ in range(steps - 1)], 1) if steps > 1 else None
    with torch.no_grad():
        walk = list(ddim(student, z * student.sde.std_max, labels, num_steps=steps, guidance=w, eta=eta,
                         generator=torch.Generator().manual_seed(7)))
    direct = student_generate(student, z, labels, w, eta, noises)
    torch.testing.assert_close(direct.detach(), walk[-1].x)
    direct.sum().backward()                                     # differentiable through every step
    assert student.net.conv_in.weight.grad.abs().sum() > 0


def test_an_ancestral_generator_needs_its_step_noise():
    student = one_step_student(tiny_score(num_classes=10, image_size=8, precond="edm"), 2)
    with pytest.raises(ValueError, match="needs the noises"):
        student_generate(student, torch.randn(1, 1, 8, 8), torch.tensor([1]), 1.5, eta=0.5)
    student_generate(student, torch.randn(1, 1, 8, 8), torch.tensor([1]), 1.5, eta=0.0)   # deterministic: none needed


def test_pairs_that_dmd_cannot_train_are_named():
    teacher = tiny_score(num_classes=10, image_size=8, precond="edm")
    check_student_pair(one_step_student(teacher), teacher)
    check_student_pair(one_step_student(teacher, steps=4), teacher)
    with pytest.raises(ValueError, match="few-step distilled student"):
        check_student_pair(teacher, teacher)
    with pytest.raises(ValueError, match="few-step distilled student"):
        check_student_pair(make_student(teacher, distilled_config(None, 16, (0.0, 4.0))), teacher)   # stage 1's
    with pytest.raises(ValueError, match="not a student"):
        check_student_pair(one_step_student(teacher), one_step_student(teacher))
    with pytest.raises(ValueError, match="sigma"):
        check_student_pair(one_step_student(teacher), tiny_score(num_classes=10, image_size=8, sigma=10.0))
    with pytest.raises(ValueError, match="image size"):
        check_student_pair(one_step_student(teacher), tiny_score(num_classes=10, image_size=16, precond="edm"))
