"""FairnessMonitor: held-out evaluation every k steps, train values, multipliers, history and checkpoints."""

from __future__ import annotations

import pytest
import torch

import fairopt as fo
from fairopt.validation import FairnessMonitor, FairnessReport, evaluate, multiplier_values
from tests.validation_data import linear_model, make_data

G = 2


class FakeOptimizer:
    """Anything with a `multipliers` attribute will do (kept loose on purpose)."""

    def __init__(self):
        self.multipliers = torch.tensor([0.0, 0.0])


def _train(monitor, steps=20, seed=0):
    data = make_data(400, G, seed=seed)
    model = linear_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    constraint = monitor.constraints[0]
    for step in range(steps):
        scores = model(data.x).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(scores, data.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        stats = fo.group_stats(scores.detach(), labels=data.y, groups=data.g, num_groups=G)
        if isinstance(monitor.multipliers, FakeOptimizer):
            monitor.multipliers.multipliers += constraint.evaluate(stats).violation.clamp(max=1.0)
        monitor.update(step, model, train_stats=stats)
    return model


@pytest.fixture()
def held_out():
    return {"held-out": make_data(500, G, seed=1).tensors(), "test": make_data(500, G, seed=2).tensors()}


def test_history_every_k_steps(held_out):
    constraint = fo.EqualizedOdds(0.02)
    monitor = FairnessMonitor(constraint, held_out, num_groups=G, every=5, multipliers=FakeOptimizer())
    model = _train(monitor, steps=16)
    assert monitor.steps == [0, 5, 10, 15]
    history = monitor.history()
    assert set(history["split"]) == {"train", "held-out", "test"}
    assert len(history) == 4 * 3 * constraint.num_entries(G)
    last = history[(history["step"] == 15) & (history["split"] == "held-out")]
    assert last["violation"].notna().all() and (last["violation"] >= 0).all()
    multipliers = monitor.multiplier_history()
    assert list(multipliers["step"].unique()) == [0, 5, 10, 15] and set(multipliers["index"]) == {0, 1}
    assert multipliers.groupby("index")["value"].apply(lambda v: v.is_monotonic_increasing).all()
    # a full report for any recorded step: at step 15 (the last update) it is the final model's evaluation
    report = monitor.report()
    assert isinstance(report, FairnessReport) and report.split == "held-out" and report.metadata["step"] == 15
    fresh = evaluate(model, held_out["held-out"], constraint, num_groups=G, split="held-out")
    assert report.statistics == fresh.statistics and report.constraints == fresh.constraints
    assert list(last["value"]) == [e.value for e in fresh.constraints[0].entries]
    assert monitor.report(step=0, split="train").split == "train"


def test_state_dict_round_trip(held_out):
    monitor = FairnessMonitor([fo.DemographicParity(0.1)], held_out, num_groups=G, every=10)
    _train(monitor, steps=21)
    restored = FairnessMonitor([fo.DemographicParity(0.1)], held_out, num_groups=G, every=10)
    restored.load_state_dict(monitor.state_dict())
    assert restored.history().equals(monitor.history()) and restored.steps == [0, 10, 20]
    assert restored.report(step=10) == monitor.report(step=10)
    other = FairnessMonitor([fo.DemographicParity(0.1)], held_out, group_names=["x", "y"], every=10)
    with pytest.raises(ValueError, match="groups"):
        other.load_state_dict(monitor.state_dict())


def test_multiplier_sources_are_loose():
    assert multiplier_values(torch.tensor([[1.0, 2.0]])) == [1.0, 2.0]
    assert multiplier_values({"a": torch.tensor(1.5), "b": [2, torch.tensor([3.0])]}) == [1.5, 2.0, 3.0]
    assert multiplier_values(lambda: torch.tensor([4.0])) == [4.0]

    class WithCallable:
        def multipliers(self):
            return [torch.tensor(5.0)]

    assert multiplier_values(WithCallable()) == [5.0]
    with pytest.raises(TypeError, match="cannot read multipliers"):
        multiplier_values("lambda")


def test_monitor_errors(held_out):
    with pytest.raises(ValueError, match="every"):
        FairnessMonitor(fo.EqualOpportunity(0.1), held_out, num_groups=G, every=0)
    with pytest.raises(ValueError, match="train_stats"):
        FairnessMonitor(fo.EqualOpportunity(0.1), {"train": held_out["test"]}, num_groups=G)
    with pytest.raises(ValueError, match="refers to group 5"):
        FairnessMonitor(fo.tpr(5) - fo.tpr(0) <= 0.1, held_out, num_groups=G)
    monitor = FairnessMonitor(fo.EqualOpportunity(0.1), held_out, num_groups=G, every=3)
    assert monitor.update(1, linear_model()) is False and monitor.history().empty
    with pytest.raises(KeyError, match="nothing recorded"):
        monitor.report(step=1)
