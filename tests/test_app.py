"""The app without hydra: configs as plain data become objects; a run that cannot work fails
before training; a resumed run keeps what its checkpoint needs."""
import functools
import logging
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dynets import SettleOptions
from dynets.app.run import build, check_config, instantiate
from dynets.app.checkpoint import CheckpointError
from dynets.app.options import ConfigError
from dynets.models.base import DynamicalModel
from dynets.rules import EquilibriumPropagation

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def composed(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return OmegaConf.to_container(compose("train", overrides=list(overrides)), resolve=True)


def test_instantiate_builds_nested_targets_and_partials():
    rule = instantiate({"_target_": "dynets.rules.EquilibriumPropagation", "beta": 0.25,
                        "settle": {"_target_": "dynets.SettleOptions", "method": "fast_euler", "atol": 1e-4}})
    assert isinstance(rule, EquilibriumPropagation) and rule.beta == 0.25
    assert rule.settle == SettleOptions(method="fast_euler", atol=1e-4)
    make = instantiate({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.5, "momentum": 0.9})
    assert isinstance(make, functools.partial)
    optimizer = make([torch.nn.Parameter(torch.zeros(2))])
    assert (optimizer.defaults["lr"], optimizer.defaults["momentum"]) == (0.5, 0.9)
    assert instantiate({"a": [1, {"b": 2}]}) == {"a": [1, {"b": 2}]}   # plain data stays plain
    with pytest.raises(ConfigError, match="'dynets.rules.Nope' cannot be imported"):
        instantiate({"_target_": "dynets.rules.Nope"})


class Leaky(DynamicalModel):
    """ds/dt = −s + Wx: a dynamical model with no energy, which EP cannot train."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.sizes, self.in_features, self.out_features = sizes, sizes[0], sizes[-1]
        self.layers = torch.nn.ModuleList([torch.nn.Linear(sizes[0], sizes[-1])])

    def dynamics(self, condition):
        return lambda t, state: (self.layers[0](condition.x) - state[0],)

    def init_state(self, condition):
        return (condition.x.new_zeros(len(condition.x), self.out_features),)


def test_build_refuses_a_rule_that_cannot_train_the_model():
    config = composed()
    config["model"] = {"_target_": f"{__name__}.Leaky", "sizes": ["${shape.features}", "${shape.classes}"]}
    with pytest.raises(ConfigError, match=r"EquilibriumPropagation needs a model with an energy .*\(capability Energy: .*energy\(state, "
                                        r"condition\).*; Leaky has none"):
        build(config)
    config["rule"] = composed("rule=implicit")["rule"]   # the exact gradient needs no energy
    data, model, rule, optimizer = build(config)
    assert isinstance(model, Leaky) and model.sizes == [data.n_features, data.n_classes]


class Pixels(Leaky):
    """Leaky reading ``(channels, in_size, in_size)`` images: a model whose input is not a vector."""

    def __init__(self, channels: int, in_size: int, classes: int) -> None:
        super().__init__([channels * in_size * in_size, classes])
        self.image = (channels, in_size, in_size)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.image


def test_build_gives_an_mlp_flat_data_and_an_image_model_images():
    import dynets
    images = dynets.data.digits()
    data, model, _, _ = build(composed())
    assert data.sample_shape == (64,) and torch.equal(data.train.x, images.flat().train.x)
    config = composed("rule=implicit")
    config["model"] = {"_target_": f"{__name__}.Pixels", "channels": "${shape.channels}",
                       "in_size": "${shape.in_size}", "classes": "${shape.classes}"}
    data, model, _, _ = build(config)
    assert model.image == (1, 8, 8) and torch.equal(data.train.x, images.train.x)


def test_build_names_both_shapes_when_the_model_does_not_fit_the_data():
    with pytest.raises(ConfigError, match=r"model=hopfield on data=digits.*\(1, 8, 8\).*\(784,\)"):
        build(composed("model.sizes=[784,32,10]"))


@pytest.mark.parametrize("override,difference", [
    ("data.seed=1", "data.seed: 0 -> 1"),
    ("data.val_fraction=0.2", "data.val_fraction: 0.1 -> 0.2"),
    ("data=npz", "data._target_: dynets.data.digits -> dynets.data.npz"),
    ("model.activation=tanh", "model.activation: hard_sigmoid -> tanh"),
    ("model.activation=tanh data.seed=1", "a different model (model.activation: hard_sigmoid -> tanh) and different data "
                                      "(data.seed: 0 -> 1). Pass that run's model and data overrides again"),
])
def test_resume_refuses_another_split_or_model_and_lists_the_differences(override, difference):
    saved = composed()
    changed = composed(*override.split(), *(["data.path=x.npz"] if override == "data=npz" else []))
    with pytest.raises(CheckpointError, match="run/checkpoint.pt was trained with .*" + re.escape(difference)):
        check_config(saved, changed, "run/checkpoint.pt")


def test_resume_allows_other_changes_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="dynets"):
        check_config(composed(), composed("seed=3", "trainer.epochs=30", "logger=none"), "run/checkpoint.pt")
    assert "differs from the one run/checkpoint.pt was trained with: seed: 0 -> 3" in caplog.text
    assert "epochs" not in caplog.text and "logger" not in caplog.text   # expected on resume: no warning
