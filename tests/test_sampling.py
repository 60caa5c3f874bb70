"""Sleep phases and samplers: the chains sample the distributions theory says, draw only from the
phase's generator, and fail loudly where they cannot run."""
import itertools

import pytest
import torch

from dynets import Condition, SettleOptions
from dynets.models import LayeredHopfield
from dynets.models.base import EnergyModel
from dynets.sampling import Sample, SampleOptions, Sleep, noise_state, sample


class TinyBoltzmann(torch.nn.Module):
    """Fully connected binary units, one per state layer (so each is its own Gibbs block):
    E(s) = −½ sᵀWs − bᵀs, W symmetric with zero diagonal. Its gap is h_i = (Ws)_i + b_i."""

    unit_values = (0.0, 1.0)

    def __init__(self, n: int = 3, seed: int = 0, values=(0.0, 1.0)) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(n, n, generator=g, dtype=torch.float64)
        self.w = torch.nn.Parameter((w + w.T).fill_diagonal_(0.0))
        self.b = torch.nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64))
        self.n, self.unit_values = n, values

    def init_state(self, condition):
        return tuple(torch.zeros(condition.batch, 1, dtype=torch.float64) for _ in range(self.n))

    def energy(self, s: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((s @ self.w) * s).sum(-1) - s @ self.b

    def gibbs_blocks(self, condition):
        off, on = self.unit_values

        def field(i):
            def h(state):
                s = torch.cat(state, 1)
                # E(off) − E(on) for unit i: (on − off)·((Ws)_i + b_i), W's zero diagonal drops s_i itself.
                return [(on - off) * (s @ self.w[:, i:i + 1] + self.b[i])]
            return h

        return [((i,), field(i)) for i in range(self.n)]

    def exact(self, temperature: float) -> dict[tuple, float]:
        states = torch.tensor(list(itertools.product(self.unit_values, repeat=self.n)), dtype=torch.float64)
        p = torch.softmax(-self.energy(states).detach() / temperature, 0)
        return {tuple(s.tolist()): float(q) for s, q in zip(states, p)}


def empirical(state) -> dict[tuple, float]:
    s = torch.cat(state, 1)
    keys, counts = torch.unique(s, dim=0, return_counts=True)
    return {tuple(k.tolist()): c.item() / len(s) for k, c in zip(keys, counts)}


def total_variation(p: dict, q: dict) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def phase(batch: int, seed: int = 0, **kwargs) -> Condition:
    return Condition(batch_size=batch, generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("values", [(0.0, 1.0), (-1.0, 1.0)])
def test_gibbs_chains_sample_the_boltzmann_distribution(temperature, values):
    model = TinyBoltzmann(4, values=values)
    condition = phase(20000)
    out = sample(model, condition, noise_state(model, condition), sweeps=20, temperature=temperature)
    # 20000 independent chains: the TV distance of the empirical histogram (16 states) is ~0.01.
    assert total_variation(empirical(out.state), model.exact(temperature)) < 0.03


def test_gibbs_at_zero_temperature_is_the_asynchronous_update_and_stops_at_a_fixed_point():
    model = TinyBoltzmann(6, seed=3, values=(-1.0, 1.0))
    start = noise_state(model, phase(50))
    by_hand = torch.cat(start, 1).clone()
    for _ in range(3):
        for i in range(6):   # Hopfield (1982): each unit in turn takes the sign of its field
            h = by_hand @ model.w[:, i].detach() + model.b[i].detach()
            by_hand[:, i] = torch.where(h > 0, 1.0, torch.where(h < 0, -1.0, by_hand[:, i]))
    out = sample(model, Condition(batch_size=50), start, sweeps=3, temperature=0.0, record=True)
    assert torch.equal(torch.cat(out.state, 1), by_hand)
    energies = [model.energy(torch.cat(s, 1)).detach() for s in [start, *out.trajectory]]
    assert all((b <= a + 1e-12).all() for a, b in zip(energies, energies[1:]))   # never increases
    again = sample(model, Condition(batch_size=50), out.state, sweeps=1, temperature=0.0)
    assert again.changed.max() == 0 and torch.equal(torch.cat(again.state, 1), by_hand)


class Quadratic(EnergyModel):
    """E = ½ sᵀAs − bᵀs: its Boltzmann distribution at T is N(A⁻¹b, T·A⁻¹)."""

    in_features, out_features, needs_input = 0, 2, False

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor([1.0, -0.5], dtype=torch.float64))

    def energy(self, state, condition):
        s = state[0]
        return 0.5 * ((s @ self.a) * s).sum(1) - s @ self.b

    def init_state(self, condition):
        return (torch.zeros(condition.batch, 2, dtype=torch.float64),)


def test_langevin_samples_the_gaussian_of_a_quadratic_energy():
    model, temperature = Quadratic(), 0.5
    out = sample(model, phase(20000, seed=1), method="langevin", sweeps=600, step_size=0.01,
                 temperature=temperature)
    s = out.state[0]
    a_inv = torch.linalg.inv(model.a.detach())
    # Unadjusted Langevin's bias is O(ε) = 1 %; the sampling error of 20000 chains ~1 %.
    assert torch.allclose(s.mean(0), a_inv @ model.b.detach(), atol=0.03)
    assert torch.allclose(torch.cov(s.T), temperature * a_inv, atol=0.03)


def test_clamped_layers_are_held_and_the_rest_is_sampled_given_them():
    model = TinyBoltzmann(3, seed=1)
    clamp = torch.ones(20000, 1, dtype=torch.float64)
    out = sample(model, phase(20000, clamp={0: clamp}), sweeps=15)
    assert torch.equal(out.state[0], clamp)
    exact = model.exact(1.0)
    conditional = {k: v for k, v in exact.items() if k[0] == 1.0}
    norm = sum(conditional.values())
    assert total_variation(empirical(out.state), {k: v / norm for k, v in conditional.items()}) < 0.03


def test_a_seeded_chain_repeats_and_draws_nothing_from_the_global_generator():
    model = TinyBoltzmann(5)
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        condition = phase(64, seed=7)
        runs.append(torch.cat(sample(model, condition, noise_state(model, condition), sweeps=5).state, 1))
    assert torch.equal(*runs)
    other = phase(64, seed=8)
    assert not torch.equal(runs[0], torch.cat(sample(model, other, noise_state(model, other), sweeps=5).state, 1))


def test_sleep_starts():
    model = TinyBoltzmann(4)
    chain = tuple(torch.ones(8, 1, dtype=torch.float64) for _ in range(4))
    hold = Sleep("persistent", SampleOptions(sweeps=1, temperature=0.0))
    # At T = 0 the persistent chain continues from the given state deterministically:
    expected = sample(model, Condition(batch_size=8), chain, sweeps=1, temperature=0.0).state
    assert all(torch.equal(a, b) for a, b in zip(hold.dream(model, phase(8), chain=chain).state, expected))
    first = hold.dream(model, phase(8, seed=2))    # no chain yet: it starts from noise
    assert isinstance(first, Sample)
    with pytest.raises(ValueError, match="data="):
        Sleep("data").dream(model, phase(8))
    with pytest.raises(TypeError, match="prior_state"):
        Sleep("prior").dream(model, phase(8))
    with pytest.raises(ValueError, match="valid: noise, prior, persistent, data"):
        Sleep("dreamland")


def test_a_deterministic_dream_settles():
    model = Quadratic()
    eq = Sleep("noise", SettleOptions(method="fast_euler", step_size=0.2, atol=1e-8, max_time=200)).dream(model, phase(4))
    expected = torch.linalg.solve(model.a.detach(), model.b.detach())
    assert eq.converged and torch.allclose(eq.state[0], expected.expand(4, 2), atol=1e-6)


def test_bad_phases_fail_loudly():
    model = TinyBoltzmann(3)
    with pytest.raises(ValueError, match="generator"):
        sample(model, Condition(batch_size=4), sweeps=1, temperature=1.0)
    with pytest.raises(ValueError, match="valid: gibbs, langevin"):
        sample(model, phase(4), method="metropolis")
    with pytest.raises(ValueError, match="sweeps >= 1"):
        sample(model, phase(4), sweeps=0)
    with pytest.raises(ValueError, match="no input"):
        Sleep().dream(model, Condition(torch.zeros(4, 3)))
    hopfield = LayeredHopfield([4, 3, 2])
    with pytest.raises(TypeError, match="method='gibbs': it has no stochastic binary units .*capability GibbsBlocked"):
        sample(hopfield, Condition(torch.rand(4, 4), generator=torch.Generator()))
    with pytest.raises(ValueError, match="needs an input"):   # no free-running dynamics without input
        Sleep(run=SampleOptions(method="langevin")).dream(hopfield, phase(4))
