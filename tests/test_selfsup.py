"""Self-supervised methods and their probes: learning without labels, sleep interleaving, the probes' mathematics."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict
from sklearn.linear_model import LogisticRegression

from dynets.app.run import build
from dynets.data import Dataset, Split, digits
from dynets.models.helmholtz import Helmholtz
from dynets.models.hopfield import LayeredHopfield
from dynets.models.pc import PredictiveCoding
from dynets.models.readback import ReadBackHopfield
from dynets.app.run import check_self_supervised
from dynets.data import binarised, unlabelled
from dynets.evaluate import ReconstructionError, pick_layer, settled
from dynets.studies.probe import fit_logistic, knn_predict
from dynets.rules.chl import ContrastiveHebbian
from dynets.rules.ep import EquilibriumPropagation
from dynets.rules.interleave import SleepInterleaved
from dynets.rules.pc import PredictiveCodingRule
from dynets.rules.wake_sleep import WakeSleep
from dynets.studies.selfsup import Method, Probes, probe, train_method
from dynets.settle import SettleOptions
from dynets.app.fit import fit

from test_configs import CONFIGS

GS = SettleOptions(method="gauss_seidel", step_size=1.0, atol=1e-3, max_time=100.0)
PC_SETTLE = SettleOptions(method="conjugate_gradient", step_size=1.0, atol=1e-3, max_time=200.0,
                          check_every=2)   # configs/probe.yaml's pc_settle
PROBES = Probes(weight_decays=(1e-3,), max_iter=50, k=5)


@pytest.fixture(scope="module")
def small():
    """400 digits for training, the rest of digits' splits as they are."""
    data = digits().flat()
    return replace(data, train=Split(data.train.x[:400], data.train.y[:400]))


METHODS = {
    "pc": Method(lambda: PredictiveCoding([64, 32], "tanh", "generative"),
                 lambda: PredictiveCodingRule(variant="unsupervised", settle=PC_SETTLE),
                 lambda ps: torch.optim.Adam(ps, lr=1e-3)),
    "ep": Method(lambda: ReadBackHopfield([64, 32]), lambda: EquilibriumPropagation(beta=0.5, settle=GS, allow_unconverged=True),
                 lambda ps: torch.optim.Adam(ps, lr=1e-3)),
    "chl": Method(lambda: ReadBackHopfield([64, 32]), lambda: ContrastiveHebbian(settle=GS, allow_unconverged=True), lambda ps: torch.optim.Adam(ps, lr=1e-3)),
    "helmholtz": Method(lambda: Helmholtz([64, 32]), lambda: SleepInterleaved(WakeSleep(), ratio=1.0),
                        lambda ps: torch.optim.SGD(ps, lr=0.1), binarize=True),
}


def train(method: Method, data, epochs=2, seed=0):
    torch.manual_seed(seed)
    model, rule = method.model(), method.rule()
    before = ReconstructionError(rule.settle)(model, data.val)["reconstruction"]
    fit(model, rule, unlabelled(data), method.optimizer(list(model.parameters())), epochs=epochs, batch_size=32,
        seed=seed, evaluate=ReconstructionError(rule.settle), select="val_reconstruction", goal="minimize")
    return model, before, ReconstructionError(rule.settle)(model, data.val)["reconstruction"]


@pytest.mark.parametrize("name", list(METHODS))
def test_reconstruction_error_falls_in_a_short_run(name, small):
    data = binarised(small) if METHODS[name].binarize else small
    _, before, after = train(METHODS[name], data)
    assert after < 0.8 * before


def test_the_representation_never_sees_a_label(small):
    """Poisoned test labels change only the final test accuracies; poisoned train and validation
    labels too leave the trained representation bit-identical."""
    g = torch.Generator().manual_seed(1)
    poison = lambda s: Split(s.x, s.y[torch.randperm(len(s), generator=g)])
    test_poisoned = replace(small, test=poison(small.test))
    all_poisoned = replace(small, train=poison(small.train), val=poison(small.val), test=poison(small.test))
    runs = [train_method(METHODS["ep"], d, epochs=1, batch_size=32, seed=0, probes=PROBES)
            for d in (small, test_poisoned, all_poisoned)]
    (model, rows), (model_t, rows_t), (model_a, _) = runs
    for other in (model_t, model_a):
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    final = ("linear_test", "knn_test", "train_time_s")
    for row, row_t in zip(rows, rows_t):
        assert {k: v for k, v in row.items() if k not in final} == {k: v for k, v in row_t.items() if k not in final}
    assert rows[1]["linear_test"] != rows_t[1]["linear_test"]   # the poison reached the report


def _fit_run(rule, data, model_fn, epochs=1):
    torch.manual_seed(0)
    model = model_fn()
    fit(model, rule, unlabelled(data), torch.optim.SGD(model.parameters(), lr=0.05), epochs=epochs, batch_size=32,
        seed=0, evaluate=ReconstructionError(rule.settle), select="val_reconstruction", goal="minimize")
    return model.state_dict()


def test_sleep_ratio_zero_is_wake_training_bit_for_bit(small):
    pc = lambda: PredictiveCoding([64, 16], "tanh", "generative")
    wake = lambda: PredictiveCodingRule(variant="unsupervised", settle=PC_SETTLE)
    plain = _fit_run(wake(), small, pc)
    zero = _fit_run(SleepInterleaved(wake(), ratio=0.0, start="prior"), small, pc)
    slept = _fit_run(SleepInterleaved(wake(), ratio=1.0, start="replay", noise=0.1), small, pc)
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    assert not torch.equal(plain["layers.0.weight"], slept["layers.0.weight"])


def test_helmholtz_sleep_trains_recognition_only_when_its_ratio_is_positive(small):
    data = binarised(small)
    machine = lambda: Helmholtz([64, 16], seed=0)
    zero = _fit_run(SleepInterleaved(WakeSleep(), ratio=0.0), data, machine)
    slept = _fit_run(SleepInterleaved(WakeSleep(), ratio=1.0), data, machine)
    init = machine().state_dict()
    assert torch.equal(zero["recognition.0.weight"], init["recognition.0.weight"])
    assert not torch.equal(slept["recognition.0.weight"], init["recognition.0.weight"])
    x = data.train.x[:32]   # one step: the same wake update of G either way; only sleep trains R
    grads = [SleepInterleaved(WakeSleep(), ratio=ratio).update(machine(), x).grads for ratio in (0.0, 1.0)]
    assert torch.equal(grads[0]["generative.0.weight"], grads[1]["generative.0.weight"])
    assert "recognition.0.weight" not in grads[0] and "recognition.0.weight" in grads[1]


def test_a_fractional_ratio_sleeps_at_that_rate(small):
    rule = SleepInterleaved(PredictiveCodingRule(variant="unsupervised", settle=GS), ratio=0.25, start="prior")
    model = PredictiveCoding([64, 8], "tanh", "generative")
    x = small.train.x[:16]   # no labels: the unsupervised variant needs none
    assert [rule.update(model, x).metrics["sleeps"] for _ in range(8)] == [0, 0, 0, 1, 0, 0, 0, 1]


def test_linear_probe_matches_sklearn():
    """Same objective as sklearn's multinomial L2 logistic regression with C = 1/(n·wd): the
    predicted probabilities agree (the bias is defined only up to a shift)."""
    g = torch.Generator().manual_seed(0)
    z, y, wd = torch.randn(300, 5, generator=g), torch.randint(0, 3, (300,), generator=g), 1e-2
    W, b = fit_logistic(z, y, 3, wd, max_iter=500)
    ref = LogisticRegression(C=1 / (len(z) * wd), tol=1e-10, max_iter=5000).fit(z.double().numpy(), y.numpy())
    ours = torch.softmax(z.double() @ W + b, 1).numpy()
    assert np.abs(ours - ref.predict_proba(z.double().numpy())).max() < 1e-5


def test_the_linear_probe_selects_its_weight_decay_on_validation_not_on_test():
    """Two separable classes, 60 % of train in class 0. A small decay separates them; a huge
    one leaves W ≈ 0, so the bias predicts class 0 everywhere (50 % on balanced data). The
    test split is the validation inputs with every label flipped, so test prefers the huge
    decay and validation the small one: the probe must report the small one."""
    g = torch.Generator().manual_seed(0)

    def split(n0, n1):
        y = torch.cat([torch.zeros(n0, dtype=torch.long), torch.ones(n1, dtype=torch.long)])
        return Split(torch.stack([2.0 * y - 1, torch.zeros(len(y))], 1) + 0.5 * torch.randn(len(y), 2, generator=g), y)

    train, val = split(120, 80), split(100, 100)
    data = Dataset("flipped", train, val, Split(val.x, 1 - val.y), n_features=2, n_classes=2)
    result = probe({"train": train.x, "val": val.x, "test": val.x}, data, Probes(weight_decays=(1e3, 1e-4), k=5))
    assert result["weight_decay"] == 1e-4 and result["linear_val"] > 0.9
    assert result["linear_test"] == pytest.approx(1 - result["linear_val"], abs=1e-12)


def test_knn_matches_a_brute_force_vote():
    g = torch.Generator().manual_seed(0)
    bank, labels, queries = torch.randn(50, 4, generator=g), torch.randint(0, 3, (50,), generator=g), torch.randn(20, 4, generator=g)
    mean = bank.mean(0).numpy()
    expected = []
    for q in queries.numpy():
        sims = [float(np.dot(q - mean, b - mean) / np.linalg.norm(q - mean) / np.linalg.norm(b - mean)) for b in bank.numpy()]
        votes = np.zeros(3)
        for i in np.argsort(sims)[::-1][:5]:
            votes[labels[i]] += sims[i]
        expected.append(int(np.argmax(votes)))
    assert knn_predict(Split(bank, labels), queries, k=5, chunk=7).tolist() == expected


def test_readback_reconstruction_is_its_top_layer_at_the_free_equilibrium():
    torch.manual_seed(0)
    model, x = ReadBackHopfield([6, 4]), torch.rand(5, 6)
    state, recon = settled(model, x, GS)
    assert torch.equal(recon, state[-1]) and recon.shape == x.shape
    h = state[0]   # the read-back's fixed point is ρ(W h + b) given the code
    assert torch.allclose(recon, model.decode(h), atol=1e-3)


def test_a_probe_on_a_missing_layer_names_the_layers():
    model = PredictiveCoding([6, 5, 4], "tanh", "generative")
    state, _ = settled(model, torch.rand(3, 6), GS)
    with pytest.raises(ValueError, match=r"layer 2 does not exist.*layers 0\.\.1.*0: 5 units, 1: 4 units"):
        pick_layer(model, state, 2)


def test_a_labelled_method_is_refused_naming_those_that_fit():
    with pytest.raises(ValueError, match="learn without labels: generative predictive coding.*ReadBackHopfield"):
        check_self_supervised(LayeredHopfield([4, 3, 2]), EquilibriumPropagation())
    with pytest.raises(ValueError, match="ReadBackHopfield"):
        check_self_supervised(PredictiveCoding([4, 3], "tanh", "generative"), PredictiveCodingRule(variant="centered"))
    check_self_supervised(PredictiveCoding([4, 3], "tanh", "generative"),
                          SleepInterleaved(PredictiveCodingRule(variant="unsupervised")))


def _config(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.trainer.device = "cpu"
    return OmegaConf.to_container(cfg, resolve=True)


def test_the_app_refuses_a_labelled_method_under_task_self_supervised():
    with pytest.raises(ValueError, match="methods that learn without labels"):
        build(_config(["task=self_supervised", "model=hopfield"]))
    data, model, _, _ = build(_config(["task=self_supervised"]))
    assert isinstance(model, ReadBackHopfield) and int(data.train.y.abs().sum()) == 0   # no label reaches training
