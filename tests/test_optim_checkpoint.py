"""Checkpoint and resume: a run stopped after k steps and resumed equals the uninterrupted run, bit for bit (CPU)."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

import fairopt
from fairopt.optim import ConstrainedOptimizer, IterateRecords
from fairopt.stats import RunningGroupStats, group_stats
from tests.optim_data import (
    mlp,
    single_thread,  # noqa: F401
    tabular,
    train_step,
)

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS, STOP, BATCH = 9, 4, 64
X, Y, A = tabular(512, seed=0)
XV, YV, AV = tabular(128, seed=1)
CONFIGS = {
    "lagrangian-momentum": {"method": fairopt.optim.Lagrangian(dual_optimizer_kwargs={"momentum": 0.5})},
    "lagrangian-alternating-nupi": {
        "method": fairopt.optim.Lagrangian(dual_optimizer="nupi", dual_optimizer_kwargs={"Kp": 1.0}),
        "dual_update": "alternating",
    },
    "augmented-lagrangian-growth": {"method": fairopt.optim.AugmentedLagrangian(penalty=0.2, penalty_growth=1.5)},
    "proxy-lagrangian-swap": {"method": "proxy_lagrangian"},
    "proxy-lagrangian-external-additive": {
        "method": fairopt.optim.ProxyLagrangian(regret="external", regret_update="additive"),
    },
    "penalty": {"method": fairopt.optim.Penalty(coefficients=2.0)},
    "window-every-3": {"dual_every": 3, "running": "window"},
    "count-window-margin": {"method": "proxy_lagrangian", "dual_min_count": 40, "dual_max_window": 4, "margin": 0.01},
    "heldout-ema-records": {"dual_source": "heldout", "dual_every": 2, "running": "ema", "records": True},
}


def run(config: dict, checkpoint: bytes | None = None, stop: int | None = None):
    """Train from scratch (or from ``checkpoint``) up to STEPS, or up to ``stop`` and return a checkpoint."""
    config = dict(config)
    model = mlp(X.shape[1], seed=0)
    base = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(base, step_size=3, gamma=0.5)
    running = config.pop("running", None)
    if running is not None:
        config["running"] = RunningGroupStats(2, mode=running, decay=0.7, window=2)
    records = IterateRecords() if config.pop("records", False) else None
    if config.get("dual_source") == "heldout":
        config["heldout"] = lambda: {"scores": model(XV).squeeze(-1), "labels": YV, "groups": AV}
    opt = ConstrainedOptimizer(base, [fairopt.EqualizedOdds(0.02)], 2, dual_lr=0.3, records=records, **config)
    start = 0
    if checkpoint is not None:
        state = torch.load(io.BytesIO(checkpoint), weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = opt.num_steps
    for step in range(start, STEPS if stop is None else stop):
        rows = slice((step * BATCH) % X.shape[0], (step * BATCH) % X.shape[0] + BATCH)
        train_step(opt, model, X[rows], Y[rows], A[rows])
        scheduler.step()
        if records is not None and step % 2 == 1:
            with torch.no_grad():
                opt.record(group_stats(model(XV).squeeze(-1), labels=YV, groups=AV, num_groups=2), model=model)
    if stop is not None:
        buffer = io.BytesIO()
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": scheduler.state_dict()}
        torch.save(state, buffer)
        return buffer.getvalue()
    return model, opt


@pytest.mark.parametrize("name", list(CONFIGS))
def test_resume_from_a_checkpoint_is_bitwise_identical(name):
    config = CONFIGS[name]
    model, opt = run(config)
    resumed_model, resumed_opt = run(config, checkpoint=run(config, stop=STOP))
    for (key, p), q in zip(model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(p, q), key
    assert torch.equal(opt.multipliers, resumed_opt.multipliers)
    assert torch.equal(opt.objective_weight, resumed_opt.objective_weight)
    assert resumed_opt.num_steps == STEPS
    if name != "penalty":
        assert opt.multipliers.abs().sum() > 0  # the dual moved: the test compares something
    if opt.records is not None:
        assert len(resumed_opt.records) == len(opt.records) == STEPS // 2
        assert resumed_opt.records.objectives().tolist() == opt.records.objectives().tolist()
        assert (resumed_opt.records.values() == opt.records.values()).all()


def test_load_state_dict_refuses_a_state_of_another_problem():
    model = mlp(X.shape[1])
    lagrangian = ConstrainedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), [fairopt.EqualizedOdds(0.02)], 2, dual_min_count=None
    )
    state = lagrangian.state_dict()
    other_method = ConstrainedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), [fairopt.EqualizedOdds(0.02)], 2, method="proxy_lagrangian"
    )
    with pytest.raises(ValueError, match="method="):
        other_method.load_state_dict(state)
    other_constraints = ConstrainedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), [fairopt.DemographicParity(0.02)], 2
    )
    with pytest.raises(ValueError, match="num_constraints"):
        other_constraints.load_state_dict(state)
    with_running = ConstrainedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        [fairopt.EqualizedOdds(0.02)],
        2,
        running=RunningGroupStats(2),
    )
    with pytest.raises(ValueError, match="running statistics"):
        with_running.load_state_dict(state)


def test_margin_count_window_and_multiplier_trace_are_restored():
    model = mlp(X.shape[1])
    opt = ConstrainedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), [fairopt.EqualizedOdds(0.02)], 2, dual_lr=0.3, margin=0.02
    )
    for step in range(5):
        rows = slice(step * BATCH, (step + 1) * BATCH)
        train_step(opt, model, X[rows], Y[rows], A[rows])
    state = pickle.loads(pickle.dumps(opt.state_dict()))
    fresh = ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [fairopt.EqualizedOdds(0.02)], 2)
    fresh.load_state_dict(state)
    assert fresh.margin is not None and fresh.margin.tolist() == [0.02, 0.02]
    assert fresh.dual_window == opt.dual_window and fresh.dual_window is not None
    torch.testing.assert_close(fresh.dual_statistics.running.value.table, opt.dual_statistics.running.value.table)
    assert len(fresh._trace) == len(opt._trace) == 5
    for mine, theirs in zip(fresh._trace, opt._trace):
        assert torch.equal(mine, theirs)
    assert any(bool(t.abs().sum() > 0) for t in opt._trace)  # the multipliers moved: the comparison means something
