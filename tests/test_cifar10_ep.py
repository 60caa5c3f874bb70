"""+experiment=cifar10_ep: the published CIFAR-10 run's settings reach the built objects, and the run
learns on CPU (small channels) from a synthetic CIFAR file whose classes can be told apart."""
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from dynets import Condition
from dynets.app.run import build, build_scheduler
from dynets.costs import CrossEntropy
from dynets.rules import write_grads

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LRS = [0.25, 0.15, 0.1, 0.08, 0.05]   # the published --lrs


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory):
    """CIFAR-10 python batches of 20 images each; class k brightens rows 3k..3k+2 (crop shifts by ≤ 4
    rows and flips keep rows, so the class stays visible after augmentation)."""
    folder, rng = tmp_path_factory.mktemp("cifar"), np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = np.arange(20) % 10
        images = rng.integers(0, 100, (20, 3, 32, 32))
        for image, k in zip(images, labels):
            image[:, 3 * k:3 * k + 3] += 150
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": images.reshape(20, -1).astype(np.uint8), b"labels": list(labels)}, handle)
    return folder


def built(folder, *overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("train", overrides=["+experiment=cifar10_ep", f"data.path={folder}", "trainer.device=cpu",
                                          "logger=none", *overrides])
    with open_dict(cfg):
        cfg.pop("hydra", None)
    config = OmegaConf.to_container(cfg, resolve=True)
    return config, build(config)


def test_the_published_settings_reach_the_built_objects(cifar_folder):
    config, (data, model, rule, optimizer) = built(cifar_folder, "model.channels=[3,4,4,4,4]")
    assert model.shapes == [(4, 16, 16), (4, 8, 8), (4, 4, 4), (4, 1, 1)] and model.out_shape == (10,)
    assert model.softmax and [tuple(c.conv.padding) for c in model.couplings[:4]] == [(1, 1)] * 3 + [(0, 0)]
    u = torch.linspace(-1, 3, 9)
    torch.testing.assert_close(model.act.rho(u), 0.5 * (1 + F.hardtanh(u - 1)))   # my_hard_sig
    assert (rule.beta, rule.variant, type(rule.cost)) == (1.0, "centered", CrossEntropy)
    assert (rule.settle.max_time, rule.nudged_settle.max_time) == (250.0, 25.0)   # --T1, --T2
    assert rule.nudged_settle.atol == rule.settle.atol and rule.nudged_settle.method == rule.settle.method
    groups = optimizer.param_groups
    assert [g["lr"] for g in groups] == LRS and all(g["weight_decay"] == 3e-4 and g["momentum"] == 0.9 for g in groups)
    assert [len(g["params"]) for g in groups] == [2] * 5   # each layer's weight and bias, in the published order
    assert groups[0]["params"][0] is model.couplings[0].conv.weight
    assert groups[4]["params"][1] is model.couplings[4].linear.bias
    scheduler = build_scheduler(config, optimizer)
    assert (scheduler.T_max, scheduler.eta_min) == (100, 1e-5)
    optimizer.step(), scheduler.step()   # one epoch: each layer's rate on the cosine from its own start
    cosine = lambda lr: 1e-5 + (lr - 1e-5) * (1 + math.cos(math.pi / 100)) / 2
    assert [g["lr"] for g in groups] == pytest.approx([cosine(lr) for lr in LRS], rel=1e-12)
    assert data.train.augment is not None
    assert (config["trainer"]["epochs"], config["trainer"]["batch_size"]) == (120, 128)
    assert abs(data.test.x.mean().item()) < 1.0 and data.test.x.max() < 1.0   # normalised: (x − mean)/(3·std)


def test_it_learns_on_cpu_from_a_synthetic_cifar_file(cifar_folder):
    """Ten EP steps of the experiment's rule and optimizer (small channels) lower the free phase's
    cross-entropy on the batch at every check. At the default init the deep states are small (the
    slope-½ ρ halves each drive), so learning starts slowly: 2.302 -> 2.296 measured; a wrong sign
    or a broken phase raises it."""
    _, (data, model, rule, optimizer) = built(cifar_folder, "model.channels=[3,8,8,8,8]")
    torch.manual_seed(0)
    x, labels = data.train.augment(data.train.x[:40], None), data.train.y[:40]

    def loss() -> float:
        eq = rule.settle(model, model.prepare(Condition(x, cost=CrossEntropy())))
        return F.cross_entropy(model.output(eq.state), labels).item()

    losses = [loss()]
    for step in range(10):
        write_grads(model, rule.update(model, x, labels).grads)
        optimizer.step()
        losses += [loss()] if step % 5 == 4 else []
    assert losses[0] > losses[1] > losses[2] and losses[0] - losses[2] > 0.004, losses
