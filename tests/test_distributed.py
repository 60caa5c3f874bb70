"""Data-parallel training: two gloo processes on CPU step exactly as one process on the whole batch."""
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from dynets import SettleOptions

from dynets.app.run import distributed
from dynets.data import Dataset, Split
from dynets.models import LayeredHopfield
from dynets.rules import EquilibriumPropagation
from dynets.app.fit import fit, train_step

# A fixed number of settle steps (atol=0): a shard and the whole batch settle for as long,
# so the only differences left are float rounding.
FIXED = SettleOptions(method="fast_euler", atol=0.0, max_time=10.0)


def setup(init_seed=0):
    torch.manual_seed(init_seed)
    model = LayeredHopfield([5, 7, 3]).double()
    return model, EquilibriumPropagation(0.5, settle=FIXED, allow_unconverged=True), torch.optim.Adam(model.parameters(), lr=0.05)


def batches():
    """Odd sizes, so that the shards are uneven (3 and 4 rows), and a 1-row batch (one shard empty)."""
    g = torch.Generator().manual_seed(2)
    return [(torch.rand(n, 5, generator=g, dtype=torch.float64), torch.randint(3, (n,), generator=g))
            for n in (7, 9, 1)]


def steps(init_seed=0):
    model, rule, optimizer = setup(init_seed)
    for x, y in batches():
        train_step(model, rule, optimizer, x, y)
    return [p.detach().clone() for p in model.parameters()]


def tiny_data():
    g = torch.Generator().manual_seed(4)
    x, y = torch.rand(50, 5, generator=g, dtype=torch.float64), torch.randint(3, (50,), generator=g)
    return Dataset("tiny", Split(x[:31], y[:31]), Split(x[31:41], y[31:41]), Split(x[41:], y[41:]), 5, 3)


class Recorder:
    """A logger that keeps every epoch's metrics (but their timing)."""

    def __init__(self):
        self.epochs = []

    def log(self, metrics, step):
        self.epochs.append({k: v for k, v in metrics.items() if not k.endswith("_time_s")})

    def finish(self, summary):
        pass


def training(run_dir=None, init_seed=0):
    model, rule, optimizer = setup(init_seed)
    recorder = Recorder()
    summary = fit(model, rule, tiny_data(), optimizer, epochs=2, batch_size=8, seed=1, run_dir=run_dir,
                  loggers=[recorder])
    summary.pop("wall_time_s")
    return summary, recorder.epochs, [p.detach().clone() for p in model.parameters()]


def worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    assert distributed.init_from_env()
    try:
        run_dir = out / "run"
        run_dir.mkdir(exist_ok=True)
        # Each rank its own init seed: fit must start every replica from rank 0's weights.
        torch.save({"steps": steps(), "fit": training(run_dir, init_seed=rank)}, out / f"rank{rank}.pt")
    finally:
        distributed.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    context = mp.start_processes(worker, args=(free_port(), out), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 120   # a hung rendezvous fails the test instead of the suite
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail("the two gloo processes did not finish")
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_two_processes_step_as_one_on_the_whole_batch(two_ranks):
    _, ranks = two_ranks
    for a, b, ref in zip(ranks[0]["steps"], ranks[1]["steps"], steps()):
        assert torch.equal(a, b)   # the replicas stay identical
        torch.testing.assert_close(a, ref, rtol=1e-12, atol=1e-14)


def test_two_processes_fit_as_one(two_ranks):
    out, ranks = two_ranks
    summary, epochs, params = training()
    for rank in ranks:
        got_summary, _, got_params = rank["fit"]
        assert got_summary == pytest.approx(summary, rel=1e-12)
        for a, b in zip(got_params, params):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    # The rules compute their accuracy in float32: shard means of it differ from whole-batch ones at 1e-8.
    assert [e == pytest.approx(r, rel=1e-6) for e, r in zip(ranks[0]["fit"][1], epochs)] == [True, True]
    assert ranks[1]["fit"][1] == []   # only rank 0 logs
    assert sorted(p.name for p in (out / "run").iterdir()) == ["checkpoint.pt", "checkpoint_prev.pt", "summary.json"]


@pytest.mark.parametrize("n", range(0, 9))
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_shards_cover_the_batch_in_order(n, size):
    bounds = [distributed.shard_bounds(n, r, size) for r in range(size)]
    assert [i for lo, hi in bounds for i in range(lo, hi)] == list(range(n))
    assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1
