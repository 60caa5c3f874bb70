"""Loggers: what they write is read back; wandb runs offline for real and survives a dead server."""
import json
import logging
import math
import socket
import struct
import sys
from pathlib import Path

import pytest
import wandb
from wandb.proto import wandb_internal_pb2

from dynets.app.loggers import JsonLinesLogger, WandbLogger, flatten, percent
from dynets.app.health import report

CONFIG = {"seed": 3, "rule": {"_target_": "dynets.rules.EquilibriumPropagation", "beta": 0.25, "variant": "centered"},
          "model": {"sizes": [16, 8]}}
EPOCHS = [{"train_loss": 0.9, "val_accuracy": 0.5}, {"train_loss": 0.4, "val_accuracy": 0.75},
          {"train_loss": 0.3, "val_accuracy": 0.625}]
SUMMARY = {"val_accuracy": 0.75, "best_epoch": 2}   # the best epoch, not the last: must win over history


def test_flatten_gives_override_names():
    assert flatten(CONFIG) == {"seed": 3, "rule._target_": "dynets.rules.EquilibriumPropagation", "rule.beta": 0.25,
                               "rule.variant": "centered", "model.sizes": [16, 8]}


def test_json_lines_are_complete_after_every_epoch(tmp_path):
    logger = JsonLinesLogger(tmp_path / "sub" / "metrics.jsonl")
    logger.start(CONFIG, tmp_path)
    logger.log({"train_loss": 0.5, "val_accuracy": math.nan}, 1)
    lines = (tmp_path / "sub" / "metrics.jsonl").read_text().splitlines()   # read before finish: nothing buffered
    logger.log({"train_loss": 0.25, "val_accuracy": 0.5}, 2)
    assert [json.loads(line) for line in lines] == [{"epoch": 1, "train_loss": 0.5, "val_accuracy": None}]
    assert json.loads((tmp_path / "sub" / "metrics.jsonl").read_text().splitlines()[1]) == {
        "epoch": 2, "train_loss": 0.25, "val_accuracy": 0.5}


def wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` file: LevelDB log format (7-byte header ``:W&B``, 0xBEE1,
    version 0; 32 KiB blocks of chunks with a ``<IHB`` crc/length/type header; type 1 is a
    whole record, 2/3/4 its first/middle/last piece), each a ``wandb_internal_pb2.Record``."""
    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    block, pos, piece, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:   # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        piece, pos = piece + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(piece))
            piece = b""
    return records


def read_offline_run(run_dir: Path) -> dict:
    """Config, history rows by step, and final summary of the one offline run under ``run_dir``."""
    wandb.teardown()   # run.finish() returns before wandb's service has flushed the file; this waits for it
    [run_file] = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    config, history, summary = {}, {}, {}
    key = lambda item: item.key or "/".join(item.nested_key)
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update if i.key != "_wandb"})
        elif kind == "history":
            row = {key(i): json.loads(i.value_json) for i in record.history.item}
            history[row.pop("_step")] = row
        elif kind == "summary":
            summary.update({key(i): json.loads(i.value_json) for i in record.summary.update})
    return {"config": config, "history": history, "summary": summary, "files": run_file.parent / "files"}


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    """wandb reads its environment once per process: start each test from a clean one, with
    nothing written outside ``tmp_path``."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH",
                 "WANDB_RUN_ID", "WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "home" / name))
    wandb.teardown()
    yield monkeypatch
    wandb.teardown()


def write_png(path: Path) -> None:
    from PIL import Image
    Image.new("RGB", (6, 4), (200, 30, 30)).save(path)


def run_logger(logger: WandbLogger, run_dir: Path) -> None:
    logger.start(CONFIG, run_dir)
    for epoch, metrics in enumerate(EPOCHS, 1):
        logger.log(metrics, epoch)
    logger.finish(SUMMARY)


def test_offline_run_holds_config_metrics_summary_and_plots(wandb_env, tmp_path):
    write_png(tmp_path / "learning_curves.png")
    run_logger(WandbLogger(project="test"), tmp_path)
    run = read_offline_run(tmp_path)
    assert run["config"] == flatten(CONFIG)
    assert {step: {k: row[k] for k in EPOCHS[0]} for step, row in run["history"].items()} == dict(enumerate(EPOCHS, 1))
    assert {k: run["summary"][k] for k in SUMMARY} == SUMMARY
    image = {k.split("/")[-1]: v for k, v in run["history"][len(EPOCHS)].items() if k.startswith("plots/learning_curves/")}
    assert image["_type"] == "image-file" and (image["width"], image["height"]) == (6, 4)
    assert (run["files"] / image["path"]).read_bytes() == (tmp_path / "learning_curves.png").read_bytes()


def test_a_resumed_run_continues_its_wandb_run(wandb_env, tmp_path):
    first = WandbLogger(project="test")
    first.start(CONFIG, tmp_path)
    run_id = first.run.id
    first.finish(SUMMARY)
    again = WandbLogger(project="test")
    again.start(CONFIG, tmp_path)
    assert again.run.id == run_id
    again.finish(SUMMARY)
    other = tmp_path / "other"
    other.mkdir()
    fresh = WandbLogger(project="test")
    fresh.start(CONFIG, other)
    assert fresh.run.id != run_id
    fresh.finish(SUMMARY)


def test_sweep_parameters_do_not_hide_the_config(wandb_env, tmp_path):
    """A sweep locks ``rule=ep``; a nested ``rule`` dict in the config would be dropped."""
    params = tmp_path / "sweep.yaml"
    params.write_text("rule:\n  value: ep\nrule.beta:\n  value: 0.25\n")
    wandb_env.setenv("WANDB_SWEEP_ID", "abc123")
    wandb_env.setenv("WANDB_SWEEP_PARAM_PATH", str(params))
    run_logger(WandbLogger(project="test"), tmp_path)
    config = read_offline_run(tmp_path)["config"]
    assert config["rule"] == "ep" and config["rule.variant"] == "centered" and config["rule.beta"] == 0.25


def test_unreachable_server_falls_back_to_offline(wandb_env, tmp_path, caplog):
    """A server that accepts connections and never answers: init gives up after its timeout."""
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(16)
        wandb_env.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{blackhole.getsockname()[1]}")
        wandb_env.setenv("WANDB_API_KEY", "x" * 40)
        wandb_env.setenv("WANDB_SILENT", "true")   # skips the login banner's own 10 s query of the server
        with caplog.at_level(logging.WARNING, logger="dynets"):
            run_logger(WandbLogger(project="test", mode="online", init_timeout=2), tmp_path)
    assert "wandb.init(mode='online') failed" in caplog.text
    assert {k: read_offline_run(tmp_path)["summary"][k] for k in SUMMARY} == SUMMARY


class BrokenRun:
    """A run whose every call raises, as when wandb's service dies mid-run."""

    def __init__(self):
        self.summary = self

    def log(self, *args, **kwargs):
        raise ConnectionError("service gone")

    update = finish = log


def test_errors_while_logging_are_warnings(wandb_env, tmp_path, caplog):
    logger = WandbLogger(project="test")
    logger.run, logger.run_dir = BrokenRun(), tmp_path
    with caplog.at_level(logging.WARNING, logger="dynets"):
        logger.log({"train_loss": 1.0}, 1)
        logger.finish(SUMMARY)
    assert [r.getMessage().split(" failed")[0] for r in caplog.records] == [
        "wandb log", "wandb log of plots", "wandb summary", "wandb finish"]


def test_missing_wandb_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match="pip install wandb, or use logger=console"):
        WandbLogger()


def test_unknown_mode_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: offline, online, disabled"):
        WandbLogger(mode="onilne")


@pytest.mark.parametrize("fraction,text", [(0.00079, "0.079%"), (0.058, "5.8%"), (0.996, "99.6%"), (1.0, "100%"),
                                           (0.99996, "99.996%"), (0.0, "0%")])
def test_percent_keeps_two_digits_and_never_rounds_to_all_or_none(fraction, text):
    assert percent(fraction) == text


def test_unconverged_warning_gives_the_shortfall(caplog):
    with caplog.at_level(logging.WARNING, logger="dynets"):
        report(3, {"train_converged": 1 - 0.996}, [])
    assert "epoch 3: 99.6% of the samples did not reach the settle tolerance" in caplog.text


def test_unconverged_warning_says_how_many_updates_were_written_from_them(caplog):
    with caplog.at_level(logging.WARNING, logger="dynets"):
        report(3, {"train_converged": 0.9}, [])
        assert "allow_unconverged" not in caplog.text   # refused: none written
        report(4, {"train_converged": 0.9, "train_unconverged_updates": 0.25}, [])
    assert "epoch 4: 10.0% of the samples" in caplog.text
    assert "rule.allow_unconverged=true: 25.0% of the updates came from such phases" in caplog.text


def test_the_console_line_is_short_and_in_a_fixed_order(caplog):
    from dynets.app.loggers import ConsoleLogger
    metrics = {"align_cos/layers.0.weight": 0.9, "optimizer_time_s": 0.25, "epoch_time_s": 1.5,
               "train_steps_nudged_+": 4.0, "val_accuracy": 0.9, "train_loss": 0.25, "train_steps_free": 7.0,
               "val_pinned": 0.3, "settle_time_s": 1.0}
    with caplog.at_level(logging.INFO, logger="dynets"):
        ConsoleLogger().log(metrics, 3)
    assert caplog.messages == ["epoch 3  train_loss=0.25  val_accuracy=0.9  train_steps_free=7  epoch_time_s=1.5  "
                               "settle_time_s=1  optimizer_time_s=0.25"]
