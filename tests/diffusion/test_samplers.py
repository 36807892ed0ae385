"""Every sampler against exact answers for Gaussian data N(mu, s^2 I).

For such data p_t = N(mu, (s^2 + std(t)^2) I), so the exact score is -(x - mu) / (s^2 + std(t)^2) and no
trained network is needed. The probability-flow ODE is then linear: it maps x(1) to
    mu + (x(1) - mu) * sqrt(s^2 + std(t)^2) / sqrt(s^2 + std(1)^2),
so a deterministic sampler's output can be checked sample by sample. The ODE samplers stop at std_min and
take one Tweedie step D(x; std_min) = mu + s^2 (x - mu) / (s^2 + std_min^2) to t = 0, so their exact final map is
    mu + (x(1) - mu) * s^2 / (sqrt(s^2 + std_min^2) sqrt(s^2 + std(1)^2))
(which differs from the t = 0 flow by a factor s / sqrt(s^2 + std_min^2) = 0.998 for s = 0.5).
"""
import math

import pytest
import torch

from diffusion.samplers import SAMPLERS, Step, get_sampler, karras_sigmas, register_sampler, sample, sampler_spec
from diffusion.sde import VESDE

MU, S = 2.0, 0.5
SHAPE = (2000, 1, 4, 4)
FIXED_STEP = ["dpmpp_2m", "dpmpp_2m_sde", "heun", "euler_maruyama", "predictor_corrector", "ddim", "euler_ancestral"]
ODE = ["dpmpp_2m", "heun", "rk45"]
STOCHASTIC = ["euler_maruyama", "predictor_corrector", "dpmpp_2m_sde", "euler_ancestral"]
ENDS_WITH_TWEEDIE = {"dpmpp_2m_sde", "euler_ancestral"}   # stochastic, but the last step returns D: no noise added


class GaussianScore:
    """Exact score of N(mu, s^2 I) data under the VE SDE; counts calls and records what it was given."""

    def __init__(self, mu=MU, s=S, sigma=25.0):
        self.sde = VESDE(sigma)
        self.mu, self.s = mu, s
        self.calls, self.labels, self.guidances, self.ts = 0, [], [], []

    def __call__(self, x, t, labels=None, guidance=1.0):
        self.calls += 1
        self.labels.append(labels)
        self.guidances.append(guidance)
        self.ts.append(t)
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype
        var = self.s**2 + self.sde.marginal_std(t.double()).to(x.dtype) ** 2
        return -(x - self.mu) / var[:, None, None, None]

    def denoise(self, x, sigma, labels=None, guidance=1.0):
        """D(x; sigma) = x + sigma^2 s(x, t(sigma)), through __call__ (which counts and records the call)."""
        t = torch.full((x.shape[0],), self.sde.t_from_std(float(sigma)), dtype=x.dtype)
        return x + float(sigma) ** 2 * self(x, t, labels, guidance)

    def tweedie(self, x, t):
        """E[x(0) | x(t) = x] = (s^2 x + std^2 mu) / (s^2 + std^2)."""
        v = self.sde.marginal_std(float(t)) ** 2
        return (self.s**2 * x + v * self.mu) / (self.s**2 + v)


def prior(model, seed=0, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    return model.sde.prior_sample(shape, g), g


def exact_ode_map(model, x1):
    s, e, big = model.s, model.sde.std_min, model.sde.std_max
    return model.mu + (x1 - model.mu) * s**2 / (math.sqrt(s**2 + e**2) * math.sqrt(s**2 + big**2))


@pytest.mark.parametrize("name,steps,tol", [("dpmpp_2m", 40, 0.012), ("heun", 40, 0.012), ("rk45", None, 2e-4)])
def test_ode_samplers_follow_the_exact_flow(name, steps, tol):
    model = GaussianScore()
    x1, g = prior(model)
    x, nfe = sample(name, model, x1.clone(), num_steps=steps, generator=g)
    # sample by sample against the exact affine map (tolerance measured: dpmpp/heun 0.006, rk45 1.5e-5)
    assert (x - exact_ode_map(model, x1)).abs().max() < tol
    # and the population moments of the t = 0 flow: mean mu (1 - s/r), std s std(1)/r, r = sqrt(s^2 + std(1)^2);
    # standard errors for 32000 values: mean ~0.003, std ~0.4%
    r = math.sqrt(S**2 + model.sde.std_max**2)
    assert float(x.mean()) == pytest.approx(MU * (1 - S / r), abs=0.02)
    assert float(x.std()) == pytest.approx(S * model.sde.std_max / r, rel=0.02)
    assert nfe == model.calls


@pytest.mark.parametrize("name", ["dpmpp_2m", "heun"])
def test_second_order_convergence(name):
    # a 2nd-order solver's error falls ~4x when the step count doubles (measured 4.3x for 20 -> 40)
    model = GaussianScore()
    x1, _ = prior(model)
    exact = exact_ode_map(model, x1)
    errs = [float((sample(name, model, x1.clone(), num_steps=n)[0] - exact).abs().max()) for n in (20, 40)]
    assert errs[1] < errs[0] / 3, errs


@pytest.mark.parametrize("name,shape", [("euler_maruyama", SHAPE), ("predictor_corrector", (64, 1, 28, 28))])
def test_sde_samplers_reach_the_data_distribution(name, shape):
    # Euler-Maruyama needs many steps on this SDE (at 30 steps its std is ~10% low).
    # Predictor-corrector sizes each sample's Langevin step from that sample's own ||noise|| / ||score||,
    # a state-dependent step that is unbiased only where those norms concentrate: at MNIST's d = 784 the
    # std is right (measured +0.9%), at d = 16 it is ~+13% (measured), so it is tested at 28 x 28.
    model = GaussianScore()
    x1, g = prior(model, shape=shape)
    x, nfe = sample(name, model, x1, num_steps=500, generator=g)
    # >= 32000 values: standard errors ~0.003 (mean), ~0.4% (std)
    assert float(x.mean()) == pytest.approx(MU, abs=0.02)
    assert float(x.std()) == pytest.approx(S, rel=0.04)
    assert nfe == model.calls == sampler_spec(name).nfe_for(500)


def test_dpmpp_2m_sde_reaches_the_data_distribution_in_few_steps():
    # With the exact denoiser a first-order step would be the exact Gaussian posterior q(x_sigma' | x_sigma, x0 = D),
    # right marginals at any step count; the 2nd-order term extrapolates D - D_old, which now carries noise, and
    # widens the result at few steps (measured std +7.9% at 10 steps, +2.6% at 20, +0.7% at 50, -0.05% at 200).
    # Euler-Maruyama at 30 steps is ~10% low (above).
    for steps, rel in ((20, 0.04), (50, 0.015)):
        model = GaussianScore()
        x1, g = prior(model)
        x, nfe = sample("dpmpp_2m_sde", model, x1, num_steps=steps, generator=g)
        assert float(x.mean()) == pytest.approx(MU, abs=0.02)
        assert float(x.std()) == pytest.approx(S, rel=rel)
        assert nfe == model.calls == steps


def test_euler_ancestral_converges_to_the_data_distribution():
    # first order: with the exact denoiser its std is measured 26% low at 10 steps, 6% at 50, 1.7% at 200
    errors = []
    for steps in (20, 50, 200):
        model = GaussianScore()
        x1, g = prior(model)
        x, nfe = sample("euler_ancestral", model, x1, num_steps=steps, generator=g)
        assert float(x.mean()) == pytest.approx(MU, abs=0.02) and nfe == model.calls == steps
        errors.append(abs(float(x.std()) / S - 1))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.03, errors


def test_ancestral_steps_keep_the_marginal_std_and_eta_0_is_ddim():
    """One ancestral step from sigma to sigma' with D = 0 and x ~ N(0, sigma^2): x' ~ N(0, sigma'^2) at any eta."""
    class Zero:
        sde = VESDE(25.0)

        def denoise(self, x, sigma, labels=None, guidance=1.0):
            return torch.zeros_like(x)

    sigmas = karras_sigmas(Zero.sde.std_min, Zero.sde.std_max, 2).tolist()         # sigma_0 > sigma_1 > 0
    x = sigmas[0] * torch.randn(200_000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    for eta in (0.0, 0.5, 1.0):
        first, last = get_sampler("ddim")(Zero(), x, num_steps=2, eta=eta, generator=torch.Generator().manual_seed(1))
        assert float(first.x.std()) == pytest.approx(sigmas[1], rel=0.01), eta
        assert float(last.x.abs().max()) == 0.0                                          # the last step returns D
    model = GaussianScore()
    x1, _ = prior(model, shape=(8, 1, 4, 4))
    det, _ = sample("ddim", model, x1.clone(), num_steps=7)
    anc0, _ = sample("euler_ancestral", model, x1.clone(), num_steps=7, eta=0.0,
                     generator=torch.Generator().manual_seed(3))
    assert torch.equal(det, anc0)
    with pytest.raises(ValueError, match="eta"):
        sample("euler_ancestral", model, x1.clone(), num_steps=7, eta=2.0)


def test_dpmpp_2m_sde_at_eta_0_is_dpmpp_2m():
    model = GaussianScore()
    x1, _ = prior(model, shape=(8, 1, 4, 4))
    ode, _ = sample("dpmpp_2m", model, x1.clone(), num_steps=7)
    sde, _ = sample("dpmpp_2m_sde", model, x1.clone(), num_steps=7, eta=0.0, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(ode, sde, atol=1e-6)
    with pytest.raises(ValueError, match="eta"):
        sample("dpmpp_2m_sde", model, x1.clone(), num_steps=7, eta=1.5)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_sde_samplers_stay_stable_at_few_steps_on_sharp_data(name):
    # Sharp data (s = 0.01, below std_min-scale detail, like MNIST's near-binary pixels): near t -> 0 a drift step
    # multiplies x - mu by ~1 - dt / t. Evaluating at t = eps with the grid's dt (the seed tutorial's grid) gave
    # 1 - dt/eps = -50 at 20 steps: measured std 13 (EM) and 13 (PC) instead of 0.01. Landing on eps instead:
    # measured std 0.051 / 0.051 at 20 steps and 0.0090 / 0.0091 at 100 steps.
    s = 0.01
    for steps, bound in ((20, 10 * s), (100, 0.3 * s)):
        model = GaussianScore(s=s)
        x1, g = prior(model, shape=(500, 1, 4, 4))
        x, _ = sample(name, model, x1, num_steps=steps, generator=g)
        assert float(x.mean()) == pytest.approx(MU, abs=0.01)
        if name in ENDS_WITH_TWEEDIE:  # ends with a Tweedie step at std_min (like the ODE solvers), noise-free:
            e = model.sde.std_min   # std s^2 / sqrt(s^2 + std_min^2) = 0.0030 here (measured 0.0029-0.0030)
            assert float(x.std()) == pytest.approx(s**2 / math.sqrt(s**2 + e**2), rel=0.1), (steps, float(x.std()))
        elif steps == 20:
            assert float(x.std()) < bound, (steps, float(x.std()))
        else:
            assert abs(float(x.std()) - s) < bound, (steps, float(x.std()))


def test_corrector_step_has_the_requested_snr():
    # Langevin corrector x' = x + e s + sqrt(2 e) z with e = 2 (snr ||z|| / ||s||)^2 per sample, so that
    # ||e s|| / ||sqrt(2 e) z|| = snr (Song et al. 2021, algorithm 5). z is the sampler's first draw from the generator.
    class Recording(GaussianScore):
        def __call__(self, x, t, labels=None, guidance=1.0):
            seen.append(x.clone())
            return super().__call__(x, t, labels, guidance)

    model, snr, seen = Recording(), 0.2, []
    x1, _ = prior(model, shape=(6, 1, 4, 4))
    next(get_sampler("predictor_corrector")(model, x1.clone(), num_steps=3, snr=snr,
                                            generator=torch.Generator().manual_seed(3)))
    z = torch.randn(x1.shape, generator=torch.Generator().manual_seed(3))
    s = GaussianScore()(x1, torch.ones(6))
    e = 2 * (snr * z.flatten(1).norm(dim=1) / s.flatten(1).norm(dim=1)) ** 2
    grad_step, noise_step = e[:, None, None, None] * s, torch.sqrt(2 * e)[:, None, None, None] * z
    assert torch.allclose(seen[1], x1 + grad_step + noise_step, atol=1e-4)


@pytest.mark.parametrize("name", FIXED_STEP)
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_step_records(name, steps):
    model = GaussianScore()
    x1, g = prior(model, shape=(8, 1, 4, 4))
    records = list(get_sampler(name)(model, x1, num_steps=steps, generator=g))
    assert len(records) == steps
    assert all(isinstance(r, Step) for r in records)
    assert [r.i for r in records] == list(range(steps))
    assert [r.final for r in records] == [False] * (steps - 1) + [True]
    nfes = [r.nfe for r in records]
    assert nfes == sorted(nfes) and nfes[-1] == model.calls == sampler_spec(name).nfe_for(steps)
    ts = [r.t for r in records]
    assert ts == sorted(ts, reverse=True) and all(0 <= t < 1 for t in ts)
    assert all(r.x.shape == r.x0.shape == x1.shape for r in records)


@pytest.mark.parametrize("name", ["euler_maruyama", "dpmpp_2m", "heun"])
def test_first_denoised_estimate_is_tweedie_at_t1(name):
    model = GaussianScore()
    x1, g = prior(model, shape=(8, 1, 4, 4))
    first = next(get_sampler(name)(model, x1.clone(), num_steps=5, generator=g))
    assert torch.allclose(first.x0, model.tweedie(x1, 1.0), atol=1e-5)


def test_rk45_steps_report_tweedie_of_their_own_x():
    model = GaussianScore()
    x1, _ = prior(model, shape=(64, 1, 4, 4))
    records = list(get_sampler("rk45")(model, x1))
    assert len(records) > 3 and records[-1].final and not any(r.final for r in records[:-1])
    for r in records[:-1]:  # x0 from the solver's last derivative, which it evaluated at (t, x)
        assert torch.allclose(r.x0, model.tweedie(r.x, r.t), atol=1e-4)
    assert records[-1].nfe == model.calls and records[-1].t == 0.0
    assert torch.equal(records[-1].x, records[-1].x0)


def test_rk45_tolerance_sets_the_cost():
    loose, tight = GaussianScore(), GaussianScore()
    x1, _ = prior(loose, shape=(16, 1, 4, 4))
    xa, nfe_loose = sample("rk45", loose, x1.clone(), rtol=1e-3, atol=1e-3)
    xb, nfe_tight = sample("rk45", tight, x1.clone(), rtol=1e-6, atol=1e-6)
    assert nfe_loose < nfe_tight
    assert (xb - exact_ode_map(tight, x1)).abs().max() < (xa - exact_ode_map(loose, x1)).abs().max() + 1e-6
    with pytest.raises(RuntimeError, match="max_nfe"):
        sample("rk45", GaussianScore(), x1.clone(), rtol=1e-9, atol=1e-9, max_nfe=20)


@pytest.mark.parametrize("name", STOCHASTIC + ODE)
def test_seed_controls_stochastic_samplers_only(name):
    """Same seed, same output; another seed changes a stochastic sampler's output but not an ODE solver's."""
    model = GaussianScore()
    x1 = VESDE().prior_sample((8, 1, 4, 4), torch.Generator().manual_seed(0))
    def run(seed):
        return sample(name, model, x1.clone(), num_steps=10, generator=torch.Generator().manual_seed(seed))[0]
    assert torch.equal(run(1), run(1))
    if name in STOCHASTIC:
        assert not torch.allclose(run(1), run(2))
    else:
        assert torch.equal(run(1), run(2))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_labels_and_guidance_reach_every_call(name):
    model = GaussianScore()
    x1, g = prior(model, shape=(4, 1, 4, 4))
    labels = torch.tensor([0, 3, 5, 9])
    sample(name, model, x1, labels, num_steps=3, generator=g, guidance=2.5)
    assert model.calls > 0
    assert all(lab is labels for lab in model.labels)
    assert model.guidances == [2.5] * model.calls


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_dtype_is_kept(name):
    model = GaussianScore()
    x1 = model.sde.prior_sample((4, 1, 2, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    x, _ = sample(name, model, x1, num_steps=3, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float64 and x.shape == x1.shape


@pytest.mark.parametrize("name", FIXED_STEP)
@pytest.mark.parametrize("bad", [0, -1, 2.5, True, None, "10", float("nan"), float("inf")])
def test_bad_num_steps_raises(name, bad):
    with pytest.raises(ValueError, match="num_steps"):
        sample(name, GaussianScore(), torch.zeros(2, 1, 2, 2), num_steps=bad)


def test_registry_and_nfe_bookkeeping():
    assert list(SAMPLERS) == ["dpmpp_2m", "dpmpp_2m_sde", "heun", "euler_maruyama", "predictor_corrector", "rk45", "ddim",
                              "euler_ancestral"]
    with pytest.raises(ValueError, match="dpmpp_2m"):
        get_sampler("ddpm")
    rk45 = sampler_spec("rk45")
    assert rk45.adaptive and rk45.nfe_for(10) is None and rk45.max_nfe == 2000 and rk45.typical_nfe
    with pytest.raises(ValueError, match="adaptive"):
        rk45.steps_for(100)
    assert [sampler_spec(n).nfe_for(10) for n in FIXED_STEP] == [10, 10, 19, 10, 20, 10, 10]
    for name in FIXED_STEP:
        spec = sampler_spec(name)
        assert not spec.adaptive and spec.description and spec.fn is get_sampler(name)
        for n in (1, 2, 10, 33):
            assert spec.steps_for(spec.nfe_for(n)) == n
            assert spec.nfe_for(spec.steps_for(spec.nfe_for(n) + 1)) <= spec.nfe_for(n) + 1
    with pytest.raises(ValueError, match="already registered"):
        register_sampler("heun", description="again")(lambda *a, **k: iter(()))


def test_the_sigma_grid_is_a_value_the_solvers_take():
    """A given `sigmas` grid replaces the Karras default; the default grid gives the same result as passing it."""
    model = GaussianScore()
    x1, _ = prior(model, shape=(8, 1, 4, 4))
    default = karras_sigmas(model.sde.std_min, model.sde.std_max, 6)
    for name in ("dpmpp_2m", "dpmpp_2m_sde", "heun"):
        g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
        a, _ = sample(name, model, x1.clone(), num_steps=6, generator=g())
        b, _ = sample(name, model, x1.clone(), num_steps=6, generator=g(), sigmas=default)
        assert torch.equal(a, b)
        uniform = torch.cat([torch.linspace(model.sde.std_max, model.sde.std_min, 6, dtype=torch.float64),
                             torch.zeros(1, dtype=torch.float64)])
        c, _ = sample(name, model, x1.clone(), num_steps=6, generator=g(), sigmas=uniform)
        assert not torch.allclose(a, c)
        for bad in (default[:-1], default.flip(0), torch.tensor([9.0, 1.0, 1.0, 0.5, 0.2, 0.1, 0.0])):
            with pytest.raises(ValueError, match="sigmas"):
                sample(name, model, x1.clone(), num_steps=6, sigmas=bad)


def test_karras_sigmas():
    s = karras_sigmas(0.03, 9.8, 10, rho=7.0)
    assert s.shape == (11,) and s[-1] == 0
    assert float(s[0]) == pytest.approx(9.8) and float(s[-2]) == pytest.approx(0.03)
    assert bool((s[:-1] > s[1:]).all())
    # rho = 1 is a uniform grid
    assert torch.allclose(karras_sigmas(1.0, 5.0, 5, rho=1.0)[:-1], torch.linspace(5.0, 1.0, 5, dtype=torch.float64))


def _reference_dpmpp_2m(score_model, x, labels, num_steps, guidance):
    """DPM-Solver++(2M) as Lu et al. (2022) write it (algorithm 2, VE: alpha = 1), the data prediction taken from
    the score by Tweedie, D = x + sigma^2 s(x, t(sigma)): an independent reference for the library's solver."""
    sde = score_model.sde
    sigmas = karras_sigmas(sde.std_min, sde.std_max, num_steps).tolist()
    old, h_last = None, None
    for i in range(num_steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        t = torch.full((x.shape[0],), math.log1p(2 * math.log(sde.sigma) * s**2) / (2 * math.log(sde.sigma)))
        d = x + s**2 * score_model(x, t, labels, guidance=guidance)
        if s_next == 0:
            x = d
        else:
            h = math.log(s / s_next)
            dd = d if old is None else (1 + 1 / (2 * h_last / h)) * d - 1 / (2 * h_last / h) * old
            x = (s_next / s) * x - math.expm1(-h) * dd
            h_last = h
        old = d
    return x


@pytest.mark.parametrize("precond", ["song", "edm"])
def test_dpmpp_2m_matches_the_reference_on_a_network(precond):
    """dpmpp_2m (and dpmpp_2m_sde at eta = 0) on a small random ScoreModel, guided, against the textbook solver."""
    from factories import tiny_score

    model = tiny_score(num_classes=10, precond=precond)
    x1, _ = prior(model, seed=1, shape=(3, 1, 28, 28))
    labels = torch.tensor([1, 4, 7])
    with torch.no_grad():
        ref = _reference_dpmpp_2m(model, x1.clone(), labels, 6, 2.0)
    for name, extra in (("dpmpp_2m", {}), ("dpmpp_2m_sde", {"eta": 0.0})):
        out, nfe = sample(name, model, x1.clone(), labels, num_steps=6, guidance=2.0, **extra)
        assert nfe == 6
        assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), (name, float((out - ref).abs().max()))
