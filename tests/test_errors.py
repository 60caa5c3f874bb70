"""A user's mistake is one message naming the option to set, before anything trains; a bug keeps
its traceback; Ctrl-C says how to resume."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dynets.app import run as app

from dynets.app import builder, plots
from dynets.likelihood import Likelihood
from dynets.models import PredictiveCoding
from dynets.app.options import ConfigError, renamed, resolved
from dynets.evaluate import ReconstructionError
from dynets.app.fit import train_step

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
MODELS = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))
RULES = sorted(p.stem for p in (CONFIGS / "rule").glob("*.yaml"))
# 4x4 bars: binary (every model reads it) and labelled (two orientations); tiny splits and nets.
NET = ["model.sizes.1=4", "trainer.device=cpu", "logger=none", "trainer.epochs=1", "trainer.batch_size=8"]
SMALL = [*NET, "data=bars", "data.n_train=32", "data.n_val=8", "data.n_test=8"]


def composed(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return OmegaConf.to_container(compose("train", overrides=list(overrides)), resolve=True)


# ---- values of the wrong type, and mandatory ones left unset ------------------------------------

@pytest.mark.parametrize("override,message", [
    ("trainer.epochs=abc", "trainer.epochs='abc': expected a whole number >= 1"),
    ("trainer.batch_size=0", "trainer.batch_size=0: expected a whole number >= 1"),
    ("trainer.alignment=maybe", "trainer.alignment='maybe': expected true or false"),
    ("trainer.device=gpu", "trainer.device='gpu': expected auto, cpu, cuda or cuda:<index>"),
    ("trainer.summary_train_rows=0", "trainer.summary_train_rows=0: expected a whole number >= 1 or null"),
    ("trainer.sync_timing=yes", "trainer.sync_timing='yes': expected true or false"),
    ("optimizer.lr=fast", "optimizer.lr='fast': expected a positive number"),
    ("data=npz", "no value for data.path: set it on the command line, e.g. data.path=<value>"),
])
def test_a_bad_value_is_named_before_anything_is_built(override, message, monkeypatch):
    monkeypatch.setattr(builder, "instantiate", lambda node: pytest.fail("built before the config was checked"))
    with pytest.raises(ConfigError, match=re.escape(message)):
        app.build(composed(override))


def test_an_option_the_target_does_not_take_is_named():
    with pytest.raises(ConfigError, match="EquilibriumPropagation got an unexpected keyword argument 'bta' "
                                          r"\(its options: beta, variant"):
        app.build(composed("+rule.bta=0.3"))


# ---- model x rule ----------------------------------------------------------------------------

def pairs() -> dict[tuple[str, str], str | None]:
    """For each (model, rule) of configs/model x configs/rule: ``None`` if the pair builds and takes
    a training step, else its ConfigError's message (any other exception fails the test)."""
    outcome = {}
    for model in MODELS:
        # A conv net reads (C, H, W) images, which bars (vectors) are not: digits, one narrow convolution.
        small = [*NET[1:], "model.channels.1=2", "data=digits"] if model.startswith("conv") else SMALL
        config = composed(*small, f"model={model}")
        for rule in RULES:
            config["rule"] = resolved(config, "rule", rule)   # as hydra composes rule=<rule>
            try:
                data, net, learner, optimizer = app.build(config)
            except ConfigError as err:
                outcome[model, rule] = str(err)
                continue
            train_step(net, learner, optimizer, data.train.x[:8], data.train.y[:8])
            outcome[model, rule] = None
    return outcome


def test_every_model_and_rule_train_or_the_error_names_options_that_do():
    """Each pair of configs/model x configs/rule takes a training step, or fails with a ConfigError
    whose ``rule=`` options for this model and ``model=`` options for this rule all take one."""
    outcome = pairs()
    assert sum(message is None for message in outcome.values()) >= 30   # the table of docs/ is not empty
    for (model, rule), message in outcome.items():
        if message is None:
            continue
        assert message.startswith(f"rule={rule} cannot train model={model} ("), message
        named = re.search(rf"With model={model} use (.*); rule={rule} trains (.*)$", message)
        assert named, message
        rules, models = (re.findall(rf"{group}=(\w+)", text) for group, text in zip(("rule", "model"), named.groups()))
        assert rules and models, message
        assert all(outcome[model, other] is None for other in rules), message
        assert all(outcome[other, rule] is None for other in models), message


def test_a_label_rule_on_a_generative_model_names_the_rules_that_fit():
    with pytest.raises(ConfigError, match="rule=implicit cannot train model=helmholtz .*no label layer.*"
                                          "With model=helmholtz use rule=rws, rule=sleep or rule=wake_sleep"):
        app.build(composed(*SMALL, "model=helmholtz", "rule=implicit"))


def test_data_a_model_cannot_read_is_named():
    with pytest.raises(ConfigError, match="model=helmholtz on data=digits: Helmholtz needs binary data"):
        app.build(composed("model=helmholtz", "rule=wake_sleep", "trainer.device=cpu"))


# ---- model x evaluation ------------------------------------------------------------------------

@pytest.mark.parametrize("model,evaluation", [("hopfield", None), ("pc", None), ("asymmetric", None),
                                              ("boltzmann", Likelihood), ("helmholtz", Likelihood),
                                              ("readback", ReconstructionError)])
def test_the_default_evaluation_follows_the_model(model, evaluation):
    node = composed(f"model={model}")["evaluate"]
    assert (node and app.locate(node["_target_"])) == evaluation


@pytest.mark.parametrize("overrides,message", [
    (["model=hopfield", "evaluate=likelihood"], "evaluate=likelihood cannot evaluate model=hopfield .*use evaluate=accuracy"),
    (["model=boltzmann", "rule=boltzmann", "evaluate=accuracy"],
     "evaluate=accuracy cannot evaluate model=boltzmann .*no label layer.*use evaluate=likelihood"),
    (["model=helmholtz", "rule=wake_sleep", "evaluate=accuracy"],
     "evaluate=accuracy cannot evaluate model=helmholtz .*use evaluate=likelihood or evaluate=reconstruction"),
    (["model=readback", "evaluate=accuracy"], "evaluate=accuracy cannot evaluate model=readback .*use evaluate=reconstruction"),
])
def test_an_evaluation_that_does_not_fit_fails_before_training(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        app.train(composed(*SMALL, *overrides), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()   # not one epoch trained


def test_a_metric_the_evaluation_does_not_give_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match="trainer.select=kl_bits is not a metric of evaluate=likelihood on "
                                          "data=digits: select one of val_nll_bits"):   # no exact distribution: no KL
        app.train(composed(*NET, "model=boltzmann", "rule=boltzmann", "data=digits"), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()   # not one epoch trained


# ---- plots ---------------------------------------------------------------------------------------

def test_self_supervised_runs_write_their_plots(tmp_path):
    config = composed("task=self_supervised", "model.sizes.1=4", "trainer.epochs=1", "trainer.device=cpu", "logger=none")
    app.train(config, tmp_path)
    assert {"settling.png", "learning_curves.png", "receptive_fields.png"} <= {p.name for p in tmp_path.iterdir()}


def test_generative_pc_draws_the_weights_from_its_code_to_the_pixels(tmp_path, monkeypatch):
    """μ_0 = W_0 f(v_1) + b_0: hidden unit j draws column j of W_0 (16 pixels as 4x4); W_0's rows
    (9 hidden weights each, a square too) are not images."""
    model = PredictiveCoding([16, 9], arrangement="generative")
    drawn = []
    grid = plots.receptive_field_grid
    monkeypatch.setattr(plots, "receptive_field_grid", lambda weight, *a: drawn.append(weight) or grid(weight, *a))
    plots.receptive_fields(model, tmp_path / "rf.png")
    torch.testing.assert_close(drawn[0], model.layers[0].weight.T)


# ---- the command line ------------------------------------------------------------------------------

def test_a_user_error_on_the_command_line_is_one_message(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), f"hydra.run.dir={tmp_path}",
                          "trainer.epochs=abc", "logger=none"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 1
    assert out.stderr.strip() == "error: trainer.epochs='abc': expected a whole number >= 1"


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch, capsys):
    def interrupted(config, run_dir):
        (Path(run_dir) / "checkpoint.pt").touch()   # an epoch has ended
        raise KeyboardInterrupt
    monkeypatch.setattr(app, "main", interrupted)
    with pytest.raises(SystemExit) as exit_:
        app.run({}, tmp_path, ["rule.beta=0.2", "model.sizes.1=16", "resume=true"], "python scripts/train.py")
    assert exit_.value.code == 130
    hint = f"python scripts/train.py rule.beta=0.2 model.sizes.1=16 resume={tmp_path}"
    assert capsys.readouterr().err.strip().endswith(hint)


def test_ctrl_c_before_the_first_epoch_has_nothing_to_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(app, "main", lambda config, run_dir: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(SystemExit):
        app.run({}, tmp_path, [], "python scripts/train.py")
    assert "holds no checkpoint to resume from; run the command again" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(app, "main", lambda config, run_dir: {}["no such key"])
    with pytest.raises(KeyError):
        app.run({}, tmp_path, [], "python scripts/train.py")


def test_the_renamed_feedback_option_names_what_replaced_it():
    message = renamed(["model=asymmetric", "model.feedback=learned"])
    assert message.startswith("model.feedback=learned: model.feedback is gone")
    assert "model.feedback_mode=random, tied or learned" in message and "model.feedback_gain" in message
