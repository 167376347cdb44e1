"""fairopt.optim.ConstrainedOptimizer: construction errors, step semantics, dual schedules, ecosystem."""

from __future__ import annotations

import math
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fairopt
from fairopt.optim import ConstrainedOptimizer, IterateRecords
from fairopt.stats import GroupStats, RunningGroupStats, group_stats
from tests.optim_data import (
    mlp,
    single_thread,  # noqa: F401
    tabular,
    train,
    train_step,
)

pytestmark = pytest.mark.usefixtures("single_thread")

DP = fairopt.DemographicParity(0.0)


def make_opt(params, constraints=None, num_groups=2, **kwargs):
    optimizer = torch.optim.SGD(params, lr=kwargs.pop("lr", 0.1))
    return ConstrainedOptimizer(optimizer, [DP] if constraints is None else constraints, num_groups, **kwargs)


def dp_hinge(scores, groups, tolerance):
    """Demographic parity (max - min over 2 groups) with the hinge proxy, written out independently."""
    upper, lower, rate = [], [], []
    for g in (0, 1):
        s = scores[groups == g].double()
        upper.append(torch.relu(1 + s).mean())
        lower.append(1 - torch.relu(1 - s).mean())
        rate.append((s > 0).double().mean())
    proxy = torch.stack(upper).max() - torch.stack(lower).min() - tolerance
    hard = torch.stack(rate).max() - torch.stack(rate).min() - tolerance
    return hard, proxy


# construction ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dual_lr", [0.0, -0.1, math.nan, math.inf])
def test_nonpositive_dual_lr_is_refused_at_construction(dual_lr):
    with pytest.raises(ValueError, match="dual_lr"):
        make_opt([nn.Parameter(torch.zeros(1))], dual_lr=dual_lr)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "sgda"}, "method must be one of"),
        ({"dual_update": "extragradient"}, "dual_update"),
        ({"dual_value": "soft"}, "dual_value"),
        ({"method": "lagrangian", "regret": "swap"}, "regret= does not apply"),
        ({"method": "proxy_lagrangian", "dual_optimizer": "nupi"}, "dual_optimizer= does not apply"),
        ({"method": "proxy_lagrangian", "multiplier_bound": 1.0}, "multiplier_bound= does not apply"),
        ({"method": "lagrangian", "penalty": 2.0}, "penalty= does not apply"),
        ({"method": "penalty", "dual_source": "heldout"}, "no dual player"),
        ({"heldout": lambda: None}, "dual_source='heldout'"),
        ({"dual_every": 0}, "dual_every"),
        ({"method": "augmented_lagrangian", "penalty_growth": 0.5}, "penalty_growth"),
        ({"dual_optimizer": "adagrad"}, "dual_optimizer must be one of"),
        ({"method": fairopt.optim.Lagrangian(dual_optimizer=lambda p: torch.optim.SGD(p, lr=0.1))}, "maximization"),
        ({"multiplier_bound": -1.0}, "bound"),
        ({"method": "proxy_lagrangian", "regret": "internal"}, "regret must be one of"),
    ],
)
def test_bad_options_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_opt([nn.Parameter(torch.zeros(1))], **kwargs)


def test_constraints_are_checked_against_num_groups():
    with pytest.raises(ValueError, match="refers to group 3"):
        make_opt([nn.Parameter(torch.zeros(1))], [fairopt.tpr(3) - fairopt.tpr(0) <= 0.05], num_groups=3)
    with pytest.raises(ValueError, match="num_groups"):
        make_opt([nn.Parameter(torch.zeros(1))], num_groups=0)
    with pytest.raises(TypeError, match=r"fairopt\.Constraint"):
        make_opt([nn.Parameter(torch.zeros(1))], ["demographic_parity"])
    with pytest.raises(ValueError, match="empty"):
        make_opt([nn.Parameter(torch.zeros(1))], [])
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        ConstrainedOptimizer(nn.Linear(2, 1), [DP], 2)


def test_a_constraint_that_no_data_can_violate_warns():
    """tpr(1) - tpr(0) <= 5 (5 meant as percentage points) is at most 1 on any data: training is unconstrained."""
    tpr, sel = fairopt.tpr, fairopt.selection_rate
    with pytest.warns(UserWarning, match=r"'tpr\[1\] - tpr\[0\] <= 5' can never be violated: its expression is at "
                      r"most 1 on any data and its bound is 5") as caught:  # fmt: skip
        fairopt.optim.ConstraintSet(tpr(1) - tpr(0) <= 5, 2)
    assert caught[0].filename == __file__
    assert "proxy" not in str(caught[0].message)  # the sigmoid's rates are in [0, 1] too
    # a hinge proxy's rates can exceed 1: the warning says that proxy-reading methods may still push on them
    with pytest.warns(UserWarning, match=r"can never be violated.*; only the hinge proxy's rates, which can exceed 1"):
        fairopt.optim.ConstraintSet(tpr(1) - tpr(0) <= 5, 2, proxy="hinge")
    with pytest.warns(UserWarning, match="EqualizedOdds.*can never be violated") as caught:  # through the optimizer
        make_opt(mlp(3).parameters(), [fairopt.EqualizedOdds(1.0)], num_groups=3)
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for reachable in (tpr(1) - tpr(0) <= 0.99, fairopt.DisparateImpact(0.8), sel.per_group() >= 0.8 * sel(),
                          fairopt.BoundedGroupLoss(5.0), (tpr(1) - tpr(0)) / (sel(1) - sel(0)) <= 2):  # fmt: skip
            fairopt.optim.ConstraintSet(reachable, 2)


def test_a_constraint_that_no_table_of_g_groups_defines_is_refused():
    model = mlp(3)
    # a gap needs two groups: with one, every step would skip it and training would be silently unconstrained
    with pytest.raises(ValueError, match=r"'EqualizedOdds.*cannot be computed with num_groups=1: its entries "
                       r"\['max_g tpr\[g\] - min_g tpr\[g\]', 'max_g fpr\[g\] - min_g fpr\[g\]'\]"):  # fmt: skip
        make_opt(model.parameters(), constraints=[fairopt.EqualizedOdds(0.05)], num_groups=1)
    with pytest.raises(ValueError, match=r"selection_rate\[0\] - selection_rate\[overall\]"):
        fairopt.optim.ConstraintSet(fairopt.DemographicParity(0.1, convention="vs_overall"), 1)
    with pytest.raises(ValueError, match=r"'DemographicParity.*pairwise\)' has no entries with num_groups=1"):
        fairopt.optim.ConstraintSet(fairopt.DemographicParity(0.1, convention="pairwise"), 1)
    # a ratio whose denominator is 0 on some tables (every cell 1: equal rates) is defined on others: accepted
    tpr, sel = fairopt.tpr, fairopt.selection_rate
    assert fairopt.optim.ConstraintSet((tpr(1) - tpr(0)) / (sel(1) - sel(0)) <= 2, 2).num_constraints == 1
    # what one group can have: a floor on its rate, a rate of its own
    assert (
        fairopt.optim.ConstraintSet([fairopt.RateBound("tpr", min=0.8), fairopt.tpr(0) >= 0.5], 1).num_constraints == 2
    )
    assert fairopt.optim.ConstraintSet(fairopt.EqualizedOdds(0.05), 2).num_constraints == 2


def test_method_names_accept_hyphens_and_report_themselves():
    opt = make_opt([nn.Parameter(torch.zeros(1))], method="proxy-lagrangian")
    assert opt.method == "proxy_lagrangian"
    assert "proxy_lagrangian" in repr(opt) and opt.num_constraints == 1
    assert opt.entry_names(["men", "women"]) == [
        "DemographicParity(tolerance=0, max_min): max_g selection_rate[g] - min_g selection_rate[g]"
    ]


# step errors ----------------------------------------------------------------------------------------------------
def test_step_refuses_bad_losses():
    x, y, a = tabular(64, seed=0)
    model = mlp(x.shape[1])
    opt = make_opt(model.parameters())
    scores = model(x).squeeze(-1)
    with pytest.raises(TypeError, match=r"not loss.item\(\)"):
        opt.step(loss=1.0, scores=scores, labels=y, groups=a)
    with pytest.raises(ValueError, match="scalar"):
        opt.step(
            loss=F.binary_cross_entropy_with_logits(scores, y, reduction="none"), scores=scores, labels=y, groups=a
        )
    with pytest.raises(ValueError, match="does not require grad"):
        opt.step(loss=torch.tensor(0.5), scores=scores, labels=y, groups=a)
    nan_loss = F.binary_cross_entropy_with_logits(scores, y) * math.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        opt.step(loss=nan_loss, scores=scores, labels=y, groups=a)
    assert opt.num_steps == 0
    loss = F.binary_cross_entropy_with_logits(scores, y)
    with pytest.raises(ValueError, match=r"scores is required .*pass scores=\.\.\. to step\(\)"):
        opt.step(loss=loss, scores=None, labels=y, groups=a)
    with pytest.raises(TypeError, match=r"scores must be a torch\.Tensor, got ndarray"):
        opt.step(loss=loss, scores=scores.detach().numpy(), labels=y, groups=a)
    assert opt.num_steps == 0
    loss.backward()  # the plain-optimizer habit: step() calls backward itself
    with (
        pytest.raises(RuntimeError, match=r"do not call loss.backward\(\) before opt.step") as caught,
        pytest.warns(UserWarning, match=r"found gradients in .grad already"),
    ):
        opt.step(loss=loss, scores=scores, labels=y, groups=a)
    assert "a second time" in str(caught.value.__cause__)  # torch's own message stays attached


def _equalized_odds_batch() -> tuple[ConstrainedOptimizer, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An equalized-odds optimizer over 2 groups and one batch of 64 rows: ``(opt, scores, loss, labels, groups)``."""
    x, y, a = tabular(64, seed=0)
    model = mlp(x.shape[1])
    scores = model(x).squeeze(-1)
    loss = F.binary_cross_entropy_with_logits(scores, y)
    return make_opt(model.parameters(), [fairopt.EqualizedOdds(0.05)]), scores, loss, y, a


def test_detached_scores_are_refused_they_would_train_unconstrained():
    """The constraints reach the model only through the scores' graph: detached scores (or scores computed under
    no_grad) used to run silently, unconstrained, while the multipliers grew."""
    opt, scores, loss, y, a = _equalized_odds_batch()
    with pytest.raises(ValueError, match=r"scores carry no autograd graph .*not \.detach\(\)"):
        opt.step(loss=loss, scores=scores.detach(), labels=y, groups=a)
    assert opt.num_steps == 0 and opt.multipliers.sum() == 0
    # bool predictions have no graph either, but the fault is the dtype: said as such, not "detached"
    with pytest.raises(TypeError, match=r"scores must be floating point logits, got torch.bool: pass the model's"):
        opt.step(loss=loss, scores=scores > 0, labels=y, groups=a)
    assert opt.num_steps == 0 and opt.multipliers.sum() == 0
    opt.step(loss=loss, scores=scores, labels=y, groups=a)  # the same batch, corrected
    assert opt.num_steps == 1


def test_the_first_step_warns_once_when_gradients_are_in_grad_already():
    """loss.backward(retain_graph=True) before step() doubled the loss's gradient without a word."""
    x, y, a = tabular(64, seed=0)
    model = mlp(x.shape[1])
    opt = make_opt(model.parameters(), [fairopt.EqualizedOdds(0.05)])

    def step(backward_first: bool) -> None:
        scores = model(x).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(scores, y)
        if backward_first:
            loss.backward(retain_graph=True)
        opt.step(loss=loss, scores=scores, labels=y, groups=a)

    with pytest.warns(UserWarning, match=r"the first step\(\) found gradients in .grad already") as caught:
        step(True)
    assert caught[0].filename == __file__  # the user's line
    opt.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step(True)  # once per optimizer
        opt = make_opt(model.parameters(), [fairopt.EqualizedOdds(0.05)])
        opt.zero_grad()
        step(False)  # no gradients before the first step: nothing to say
        opt = make_opt(model.parameters(), [fairopt.EqualizedOdds(0.05)])
        opt.zero_grad(set_to_none=False)  # zeros in .grad: nothing counts twice
        step(False)
    # step_accumulated looks before its first micro-batch (whose gradients are then there by design)
    opt = make_opt(model.parameters(), [fairopt.EqualizedOdds(0.05)])
    F.binary_cross_entropy_with_logits(model(x).squeeze(-1), y).backward()

    def forward(rows: slice) -> dict[str, torch.Tensor]:
        scores = model(x[rows]).squeeze(-1)
        return {"loss": F.binary_cross_entropy_with_logits(scores, y[rows]), "scores": scores, "labels": y[rows],
                "groups": a[rows]}  # fmt: skip

    with pytest.warns(UserWarning, match=r"found gradients in .grad already") as caught:
        opt.step_accumulated([slice(0, 32), slice(32, 64)], forward)
    assert len(caught) == 1 and caught[0].filename == __file__
    opt.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step_accumulated([slice(0, 32), slice(32, 64)], forward)


def _same(a: object, b: object) -> bool:
    """Equal nested states: dicts, lists, tensors (exactly), anything else by ==."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    return a == b


@pytest.mark.parametrize(
    ("method", "heldout", "dual_every"),
    [
        ("lagrangian", False, 1),
        ("lagrangian", False, 3),  # the failed step is the third: its dual step is due, and the phase taken back
        ("augmented_lagrangian", False, 1),
        ("penalty", False, 1),
        ("proxy_lagrangian", False, 1),
        ("proxy_lagrangian", True, 1),
        ("proxy_lagrangian", True, 3),
    ],
)
def test_a_step_whose_backward_fails_leaves_the_optimizer_as_it_was(method, heldout, dual_every):
    """After the plain-optimizer habit (loss.backward() before step), step() raises; the optimizer must not have
    counted the step, put the batch in its dual window or moved the multipliers, so that a corrected retry runs
    exactly as a run without the mistake (bit for bit)."""
    x, y, a = tabular(256, seed=0)
    batches = [(x[i : i + 64], y[i : i + 64], a[i : i + 64]) for i in range(0, 256, 64)]
    xv, yv, av = tabular(128, seed=1)

    def run(mistake: bool) -> tuple[ConstrainedOptimizer, nn.Module]:
        torch.manual_seed(0)
        model = mlp(x.shape[1])
        source = {"heldout": lambda: {"scores": model(xv).squeeze(-1), "labels": yv, "groups": av}} if heldout else {}
        source = {**source, "dual_source": "heldout"} if heldout else source
        opt = make_opt(model.parameters(), [fairopt.EqualizedOdds(0.02)], method=method, dual_lr=0.5,
                       dual_every=dual_every, **source)  # fmt: skip
        for i, (xb, yb, ab) in enumerate(batches):
            opt.zero_grad()
            scores = model(xb).squeeze(-1)
            loss = F.binary_cross_entropy_with_logits(scores, yb)
            if mistake and i == 2:
                before, before_multipliers = opt.state_dict(), opt.multipliers.clone()
                loss.backward()
                with pytest.raises(RuntimeError, match=r"do not call loss.backward\(\) before opt.step"):
                    opt.step(loss=loss, scores=scores, labels=yb, groups=ab)
                after = opt.state_dict()
                assert after["num_steps"] == before["num_steps"] == 2
                assert torch.equal(opt.multipliers, before_multipliers)
                assert _same(after["dual_statistics"], before["dual_statistics"])
                opt.zero_grad()  # the corrected retry
                scores = model(xb).squeeze(-1)
                loss = F.binary_cross_entropy_with_logits(scores, yb)
            opt.step(loss=loss, scores=scores, labels=yb, groups=ab)
        return opt, model

    clean, clean_model = run(False)
    retried, retried_model = run(True)
    assert retried.num_steps == clean.num_steps == 4
    moved = bool((clean.multipliers != (1.0 if method == "penalty" else 0.0)).any())
    assert torch.equal(retried.multipliers, clean.multipliers) and (moved or method == "penalty")
    assert all(torch.equal(p, q) for p, q in zip(clean_model.parameters(), retried_model.parameters()))


def test_a_bad_heldout_batch_raises_before_the_model_moves():
    """heldout()'s batch is checked and measured before the backward: an invalid one changes nothing."""
    x, y, a = tabular(64, seed=0)
    model = mlp(x.shape[1])
    bad = {"scores": model(x).squeeze(-1).detach(), "labels": y + 2, "groups": a}
    opt = make_opt(model.parameters(), [fairopt.EqualizedOdds(0.05)], method="proxy_lagrangian",
                   dual_source="heldout", heldout=lambda: bad)  # fmt: skip
    before = [p.detach().clone() for p in model.parameters()]
    for returned in (bad, {"scores": bad["scores"], "group": a}, [1, 2]):
        bad_value = returned
        opt.heldout = lambda: bad_value  # noqa: B023 (read at once, in the step)
        scores = model(x).squeeze(-1)
        with pytest.raises((ValueError, TypeError), match=r"labels must be 0 or 1|heldout\(\) must return"):
            opt.step(loss=F.binary_cross_entropy_with_logits(scores, y), scores=scores, labels=y, groups=a)
        opt.zero_grad()
        assert opt.num_steps == 0 and opt.dual_statistics.num_pending == 0
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_step_names_the_missing_tensor_and_the_constraint_that_needs_it():
    opt, scores, loss, y, a = _equalized_odds_batch()
    with pytest.raises(ValueError, match=r"labels are required by 'EqualizedOdds"):
        opt.step(loss=loss, scores=scores, groups=a)
    with pytest.raises(ValueError, match="groups is required"):
        opt.step(loss=loss, scores=scores, labels=y, groups=None)
    with pytest.raises(ValueError, match=r"groups must be ids in \[0, 2\)"):
        opt.step(loss=loss, scores=scores, labels=y, groups=a + 1)
    bounded = make_opt(opt.optimizer.param_groups[0]["params"], [fairopt.BoundedGroupLoss(0.3)])
    with pytest.raises(ValueError, match="example_losses"):
        bounded.step(loss=loss, scores=scores, labels=y, groups=a)


def test_label_free_constraints_need_no_labels_and_loss_constraints_use_example_losses():
    x, y, a = tabular(256, seed=1)
    model = mlp(x.shape[1])
    opt = make_opt(model.parameters(), dual_lr=0.5)
    scores = model(x).squeeze(-1)
    result = opt.step(loss=F.binary_cross_entropy_with_logits(scores, y), scores=scores, groups=a)
    hard, _ = dp_hinge(scores.detach(), a, 0.0)
    assert result.value.hard.item() == pytest.approx(hard.item(), abs=1e-12)

    bounded = make_opt(model.parameters(), [fairopt.BoundedGroupLoss(0.1)], dual_lr=1.0)
    scores = model(x).squeeze(-1)
    losses = F.binary_cross_entropy_with_logits(scores, y, reduction="none")
    result = bounded.step(loss=losses.mean(), scores=scores, labels=y, groups=a, example_losses=losses)
    expected = torch.stack([losses[a == g].mean() for g in (0, 1)]).double().detach() - 0.1
    torch.testing.assert_close(result.value.hard, expected)
    torch.testing.assert_close(result.multipliers, expected.clamp(min=0))


# the step: primal on proxies, dual on hard values ----------------------------------------------------------------
@pytest.mark.parametrize("dual_update", ["simultaneous", "alternating"])
def test_one_step_descends_on_the_proxy_lagrangian_and_ascends_on_hard_values(dual_update):
    x, y, a = tabular(128, seed=2)
    model = mlp(x.shape[1], seed=3)
    reference = mlp(x.shape[1], seed=3)
    lr, eta, tolerance = 0.1, 0.7, 0.0
    opt = ConstrainedOptimizer(
        torch.optim.SGD(model.parameters(), lr=lr), [DP], 2, dual_lr=eta, dual_update=dual_update, proxy="hinge"
    )
    result = train_step(opt, model, x, y, a)

    scores = reference(x).squeeze(-1)
    hard, proxy = dp_hinge(scores, a, tolerance)
    lam = max(0.0, eta * hard.item())  # projected gradient ascent on the hard violation
    lam_in_primal = lam if dual_update == "alternating" else 0.0
    objective = F.binary_cross_entropy_with_logits(scores, y) + lam_in_primal * proxy
    objective.backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= lr * p.grad
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert result.multipliers.item() == pytest.approx(lam, abs=1e-12)
    assert result.value.hard.item() == pytest.approx(hard.item(), abs=1e-12)
    assert result.value.proxy.item() == pytest.approx(proxy.item(), abs=1e-6)
    assert result.dual_value is not None and result.objective.item() == pytest.approx(objective.item(), rel=1e-5)


def test_dual_every_k_reads_the_sum_of_the_pending_batches():
    x, y, a = tabular(300, seed=3)
    model = mlp(x.shape[1])
    opt = ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), [DP], 2, dual_lr=0.5, dual_every=3)
    results = [
        train_step(opt, model, x[i * 100 : (i + 1) * 100], y[i * 100 : (i + 1) * 100], a[i * 100 : (i + 1) * 100])
        for i in range(3)
    ]
    assert [r.dual_value is None for r in results] == [True, True, False]
    assert results[0].multipliers.item() == results[1].multipliers.item() == 0.0
    with torch.no_grad():
        table = group_stats(model(x).squeeze(-1), labels=y, groups=a, num_groups=2, proxy="hinge")
    expected = max(0.0, 0.5 * DP.evaluate(table).hard.item())
    assert expected > 0
    assert results[2].multipliers.item() == pytest.approx(expected, abs=1e-12)


def test_running_ema_feeds_the_dual():
    x, y, a = tabular(200, seed=4)
    model = mlp(x.shape[1])
    running = RunningGroupStats(2, mode="ema", decay=0.5)
    opt = ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), [DP], 2, dual_lr=0.5, running=running)
    halves = [(x[:100], y[:100], a[:100]), (x[100:], y[100:], a[100:])]
    for batch in halves:
        result = train_step(opt, model, *batch)
    with torch.no_grad():
        t1, t2 = (
            group_stats(model(b[0]).squeeze(-1), labels=b[1], groups=b[2], num_groups=2, proxy="hinge") for b in halves
        )
    lam1 = max(0.0, 0.5 * DP.evaluate(t1).hard.item())
    lam2 = max(0.0, lam1 + 0.5 * DP.evaluate(GroupStats(0.5 * t1.table + t2.table)).hard.item())
    assert result.multipliers.item() == pytest.approx(lam2, abs=1e-12)
    assert running.num_updates == 2


def test_heldout_callable_is_read_every_k_steps_and_train_batches_never_reach_the_dual():
    x, y, a = tabular(400, seed=5)
    xv, yv, av = tabular(200, seed=6)
    model = mlp(x.shape[1])
    calls = []

    def heldout():
        calls.append(opt.num_steps)
        return {"scores": model(xv).squeeze(-1), "labels": yv, "groups": av}

    opt = ConstrainedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0),
        [DP],
        2,
        dual_lr=0.5,
        dual_source="heldout",
        dual_every=2,
        heldout=heldout,
    )
    results = [train_step(opt, model, x, y, a) for _ in range(4)]
    assert calls == [2, 4]
    with torch.no_grad():
        g_val = DP.evaluate(
            group_stats(model(xv).squeeze(-1), labels=yv, groups=av, num_groups=2, proxy="hinge")
        ).hard.item()
    assert results[1].multipliers.item() == pytest.approx(max(0.0, 0.5 * g_val), abs=1e-12)
    assert results[3].multipliers.item() == pytest.approx(max(0.0, 1.0 * g_val), abs=1e-12)
    assert results[3].dual_value.hard.item() == pytest.approx(g_val, abs=1e-12)


def test_observe_heldout_then_update_duals():
    x, y, a = tabular(200, seed=7)
    model = mlp(x.shape[1])
    opt = make_opt(model.parameters(), dual_lr=0.5, dual_source="heldout")
    train_opt = make_opt(model.parameters())
    with pytest.raises(ValueError, match="dual_source='heldout'"):
        train_opt.observe_heldout(scores=model(x).squeeze(-1), labels=y, groups=a)
    assert opt.update_duals() is None
    train_step(opt, model, x, y, a)  # primal only: no held-out statistics yet
    assert opt.multipliers.item() == 0.0
    with torch.no_grad():
        s = model(x).squeeze(-1)
    opt.observe_heldout(scores=s[:100], labels=y[:100], groups=a[:100])
    opt.observe_heldout(scores=s[100:], labels=y[100:], groups=a[100:])
    value = opt.update_duals()
    expected = DP.evaluate(group_stats(s, labels=y, groups=a, num_groups=2, proxy="hinge")).hard.item()
    assert value.hard.item() == pytest.approx(expected, abs=1e-12)
    assert opt.multipliers.item() == pytest.approx(max(0.0, 0.5 * expected), abs=1e-12)
    stats = group_stats(s, labels=y, groups=a, num_groups=2, proxy="hinge")
    opt.update_duals(stats)  # explicit table, e.g. a full validation pass
    assert opt.multipliers.item() == pytest.approx(max(0.0, 1.0 * expected), abs=1e-12)


def test_sync_hook_receives_the_dual_table_and_all_reduce_works_without_a_process_group():
    x, y, a = tabular(200, seed=8)
    model = mlp(x.shape[1])
    seen = []

    def sync(stats):
        seen.append(stats)
        return GroupStats.all_reduce(stats)

    opt = make_opt(model.parameters(), dual_lr=0.5, sync=sync)
    result = train_step(opt, model, x, y, a)
    assert len(seen) == 1 and isinstance(seen[0], GroupStats)
    assert result.multipliers.item() == pytest.approx(max(0.0, 0.5 * result.value.hard.item()), abs=1e-12)


# undefined entries, bounds ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("lagrangian", {"method": fairopt.optim.Lagrangian(dual_optimizer_kwargs={"momentum": 0.9})}),
        ("lagrangian", {"method": fairopt.optim.Lagrangian(dual_optimizer="nupi", dual_optimizer_kwargs={"Kp": 2.0})}),
        ("augmented_lagrangian", {}),
        ("proxy_lagrangian", {}),
        ("proxy_lagrangian", {"method": fairopt.optim.ProxyLagrangian(regret="external", regret_update="additive")}),
    ],
)
def test_an_absent_group_does_not_move_its_multipliers(method, kwargs):
    x, y, a = tabular(300, seed=9)
    a = a + (torch.arange(300) % 3 == 0).long() * (2 - a)  # three groups
    equal_opportunity = fairopt.EqualOpportunity(0.0, convention="vs_overall")  # entries: |tpr_g - tpr|
    model = mlp(x.shape[1])
    # Each dual step reads its batch alone (no count window, which would keep group 2's earlier rows).
    kwargs = {"method": method, **kwargs}  # a method object replaces the name
    opt = make_opt(model.parameters(), [equal_opportunity], num_groups=3, dual_lr=0.5, dual_min_count=None, **kwargs)
    for _ in range(3):
        train_step(opt, model, x, y, a)
    before = opt.multipliers
    state_before = getattr(opt.player, "matrix", None)
    present = a != 2
    for _ in range(3):
        result = train_step(opt, model, x[present], y[present], a[present])
        assert not result.value.defined[2] and result.value.defined[:2].all()
    after = opt.multipliers
    if method == "proxy_lagrangian":
        # the frozen row of the λ-player's state is untouched; λ_2 is a fixed point of the whole matrix
        assert torch.equal(opt.player.matrix[3], state_before[3])
    else:
        assert after[2] == before[2] and before[2] > 0
    assert not torch.equal(after[:2], before[:2])


def test_multiplier_bound_caps_multipliers():
    x, y, a = tabular(200, seed=10)
    model = mlp(x.shape[1])
    opt = make_opt(
        model.parameters(),
        [fairopt.DemographicParity(0.0)],
        dual_lr=10.0,
        method=fairopt.optim.Lagrangian(multiplier_bound=0.3),
        lr=0.0,
    )
    result = train(opt, model, x, y, a, steps=3)
    assert result.multipliers.item() == 0.3


# penalty baseline ---------------------------------------------------------------------------------------------------
def test_penalty_adds_fixed_weights_on_the_positive_part_of_the_proxy():
    x, y, a = tabular(128, seed=11)
    model = mlp(x.shape[1])
    opt = make_opt(model.parameters(), method=fairopt.optim.Penalty(coefficients=3.0))
    result = train_step(opt, model, x, y, a)
    expected = result.loss + 3.0 * result.value.proxy.clamp(min=0).sum()
    assert result.objective.item() == pytest.approx(expected.item(), rel=1e-6)
    assert result.multipliers.item() == 3.0 and result.dual_value is None
    with pytest.raises(ValueError, match="no dual player"):
        opt.update_duals()


# ecosystem -----------------------------------------------------------------------------------------------------------
def test_lr_scheduler_on_the_wrapped_optimizer():
    x, y, a = tabular(128, seed=12)
    model = mlp(x.shape[1])
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(base, step_size=2, gamma=0.1)
    opt = ConstrainedOptimizer(base, [DP], 2, dual_lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for _ in range(4):
            train_step(opt, model, x, y, a)
            scheduler.step()
    assert base.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert opt.dual_optimizer is not None and opt.dual_optimizer.param_groups[0]["maximize"]


def test_grad_scaler_and_clipping_match_the_unscaled_unclipped_reference():
    x, y, a = tabular(128, seed=17)
    runs = []
    for options in ({}, {"grad_scaler": torch.amp.GradScaler("cpu", init_scale=1024.0)}):
        model = mlp(x.shape[1], seed=4)
        opt = ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [DP], 2, dual_lr=0.5, **options)
        train(opt, model, x, y, a, steps=3)
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(runs[0], runs[1])  # power-of-two scaling is exact

    model = mlp(x.shape[1], seed=4)
    opt = ConstrainedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0),
        [DP],
        2,
        max_grad_norm=1e-3,
        grad_scaler=torch.amp.GradScaler("cpu"),
    )
    train_step(opt, model, x, y, a)
    norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert norm.item() == pytest.approx(1e-3, rel=1e-4)
    with pytest.raises(ValueError, match="max_grad_norm"):
        make_opt(model.parameters(), max_grad_norm=0.0)


def test_autocast_bf16_on_cpu_trains_under_the_constraint():
    x, y, a = tabular(512, seed=13)
    gaps = {}
    for method in ("penalty", "lagrangian"):  # penalty with weight 0: unconstrained training, same loop
        model = mlp(x.shape[1], hidden=32)
        kwargs = {"method": fairopt.optim.Penalty(coefficients=0.0)} if method == "penalty" else {"dual_lr": 0.5}
        opt = ConstrainedOptimizer(torch.optim.Adam(model.parameters(), lr=0.02), [DP], 2, **kwargs)
        for _ in range(60):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                scores = model(x).squeeze(-1)
                loss = F.binary_cross_entropy_with_logits(scores.float(), y)
            assert scores.dtype == torch.bfloat16
            opt.zero_grad()
            result = opt.step(loss=loss, scores=scores, labels=y, groups=a)
        assert torch.isfinite(result.multipliers).all() and (result.multipliers >= 0).all()
        gaps[method] = result.value.hard.item()
    assert gaps["penalty"] > 0.2 and gaps["lagrangian"] < 0.05


def test_compiled_model_trains_like_the_eager_model():
    x, y, a = tabular(128, seed=14)
    eager, compiled = mlp(x.shape[1], seed=1), mlp(x.shape[1], seed=1)
    runs = []
    for model, forward in ((eager, eager), (compiled, torch.compile(compiled, backend="aot_eager"))):
        opt = ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [DP], 2, dual_lr=0.5)
        for _ in range(4):
            scores = forward(x).squeeze(-1)
            opt.zero_grad()
            result = opt.step(loss=F.binary_cross_entropy_with_logits(scores, y), scores=scores, labels=y, groups=a)
        runs.append(result)
    for p, q in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(p, q)
    torch.testing.assert_close(runs[0].multipliers, runs[1].multipliers)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="inductor needs a C++ compiler")
def test_inductor_compiled_model_trains_like_the_eager_model():
    """torch.compile with the inductor backend builds C++ kernels: ~10-20 s on a 2-core CPU, hence marked slow."""
    x, y, a = tabular(128, seed=15)
    eager, compiled = mlp(x.shape[1], seed=1), mlp(x.shape[1], seed=1)
    runs = []
    for model, forward in ((eager, eager), (compiled, torch.compile(compiled))):
        opt = ConstrainedOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1), [fairopt.EqualizedOdds(0.02)], 2, dual_lr=0.5
        )
        runs.append(train(opt, forward, x, y, a, steps=4))
    for p, q in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(runs[0].multipliers, runs[1].multipliers, rtol=1e-4, atol=1e-6)


def test_record_uses_the_heldout_error_rate_by_default():
    x, y, a = tabular(200, seed=16)
    model = mlp(x.shape[1])
    opt = make_opt(model.parameters(), records=IterateRecords())
    train_step(opt, model, x, y, a)
    with torch.no_grad():
        scores = model(x).squeeze(-1)
        stats = group_stats(scores, labels=y, groups=a, num_groups=2)
    opt.record(stats, model=model)
    record = opt.records[0]
    assert record.step == 1
    assert record.objective == pytest.approx(((scores > 0).float() != y).double().mean().item(), abs=1e-12)
    assert record.values.tolist() == pytest.approx(opt.evaluate(stats).hard.tolist(), abs=1e-12)
    with pytest.raises(ValueError, match="records="):
        make_opt(model.parameters()).record(stats, model=model)
