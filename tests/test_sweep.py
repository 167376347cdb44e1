"""fairopt.sweep: members trained in one vectorized run equal the same members trained alone; the batched evaluator
equals the NumPy one; per-member multipliers; resume; the frontier's pick; bad inputs (CLI exit 2)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fairopt
from fairopt import fpr, maximum, pairwise, selection_rate, tpr
from fairopt.constraints.evaluation import linearize
from fairopt.models import create_model
from fairopt.sweep import (
    BatchedEvaluator,
    FrontierPoint,
    Member,
    SplitEstimate,
    StackedModel,
    SweepResult,
    SweepTrainer,
    check_tolerances,
    pick_member,
    sweep,
)

G, D, N, B = 2, 5, 480, 48


@pytest.fixture(scope="module")
def toy() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen)
    a = torch.randint(0, G, (N,), generator=gen)
    y = ((x[:, 0] + 0.9 * a + 0.4 * torch.randn(N, generator=gen)) > 0.5).float()  # group 1: more positives
    return x, y, a


def _orders(seeds: tuple[int, ...], steps: int) -> dict[int, list[torch.Tensor]]:
    """Each seed's own batch order (rows of one batch per step)."""
    out = {}
    for s in seeds:
        gen = torch.Generator().manual_seed(100 + s)
        out[s] = [torch.randperm(N, generator=gen)[:B] for _ in range(steps)]
    return out


def _train_sweep(trainer: SweepTrainer, toy, orders, steps: range, heldout_orders=None) -> None:
    x, y, a = toy
    for t in steps:
        idx = torch.stack([orders[m.seed][t] for m in trainer.members])  # (M, B): members of one seed share a batch
        held = None
        if heldout_orders is not None:
            hidx = torch.stack([heldout_orders[m.seed][t] for m in trainer.members])
            held = (x[hidx], y[hidx], a[hidx])
        trainer.step(x[idx], y[idx], a[idx], heldout=held)


OPTIONS = {"lr": 5e-3, "dual_lr": 0.5, "dual_min_count": 20.0, "dual_max_window": 8}


def _members() -> list[Member]:
    return [
        Member("proxy_lagrangian", 0.02, seed=0),
        Member("proxy_lagrangian", 0.1, seed=0),
        Member("proxy_lagrangian", 0.02, seed=1),
        Member("penalty", 0.02, seed=1, penalty_coefficient=3.0),
    ]


def _trainer(members: list[Member], model: str = "mlp", dual_source: str = "train") -> SweepTrainer:
    models = [create_model(model, D, seed=m.seed) for m in members]
    return SweepTrainer(models, members, fairopt.EqualizedOdds(0.05), G, dual_source=dual_source, **OPTIONS)  # type: ignore[arg-type]


# the batched evaluator -------------------------------------------------------------------------------------------
EXPRESSIONS = [
    fairopt.EqualizedOdds(0.05).expr,
    fairopt.DemographicParity(0.05, convention="vs_overall").expr,
    fairopt.EqualOpportunity(0.1, convention="pairwise").expr,
    fairopt.DisparateImpact(0.8).expr,
    (tpr(1) - tpr(0)) * fpr(2),
    tpr(1) / (selection_rate() + 0.1),
    abs(pairwise(tpr.per_group(), symmetric=True)).max(),
    maximum(tpr.per_group(), 0.3),
    tpr((0, 2)) - fpr(1),
]


@pytest.mark.parametrize("expr", EXPRESSIONS, ids=str)
def test_the_batched_evaluator_equals_the_numpy_evaluator_member_by_member(expr):
    gen = torch.Generator().manual_seed(1)
    tables = []
    for m in range(4):
        s = torch.randn(150, generator=gen, dtype=torch.float64)
        y = (torch.rand(150, generator=gen) < 0.4).long()
        a = torch.randint(0, 3, (150,), generator=gen)
        if m == 1:
            a[a == 2] = 0  # group 2 absent: its rates are undefined for this member only
        if m == 2:
            y[a == 0] = 0  # group 0 has no positives: its TPR is undefined
        tables.append(fairopt.group_stats(s, labels=y, groups=a, num_groups=3, proxy="hinge").table)
    stacked = torch.stack(tables).requires_grad_(True)
    out = BatchedEvaluator(stacked).bounds(expr)
    cu, cl = (
        torch.randn(out.proxy_upper.shape, generator=gen, dtype=torch.float64),
        torch.randn(out.proxy_lower.shape, generator=gen, dtype=torch.float64),
    )
    (grad,) = torch.autograd.grad((cu * out.proxy_upper).sum() + (cl * out.proxy_lower).sum(), stacked)
    for m in range(4):
        lin = linearize(expr, stacked[m].detach().numpy())
        np.testing.assert_array_equal(out.defined[m].numpy(), lin.defined)
        np.testing.assert_allclose(out.hard[m].numpy(), lin.hard, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(out.proxy_upper[m].detach().numpy(), lin.proxy_upper, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(out.proxy_lower[m].detach().numpy(), lin.proxy_lower, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(grad[m].reshape(-1).numpy(), lin.vjp(cu[m].numpy(), cl[m].numpy()), atol=1e-12)


def test_a_hand_computed_gap_on_two_member_tables():
    # member 0: TPR 3/4 vs 1/4 (gap 0.5); member 1: 2/4 vs 2/4 (gap 0). Rows: tn fp fn tp ...
    t = torch.zeros(2, 2, 9, dtype=torch.float64)
    t[0, 0, 2:4], t[0, 1, 2:4] = torch.tensor([1.0, 3.0]), torch.tensor([3.0, 1.0])
    t[1, 0, 2:4], t[1, 1, 2:4] = torch.tensor([2.0, 2.0]), torch.tensor([2.0, 2.0])
    t[:, :, 0] = 5.0  # negatives, so every FPR is defined (0)
    out = BatchedEvaluator(t).bounds(fairopt.EqualOpportunity(0.0).expr)
    np.testing.assert_allclose(out.hard.numpy(), [[0.5], [0.0]])


# one run = the members trained alone ----------------------------------------------------------------------------
@pytest.mark.parametrize("dual_source", ["train", "heldout"])
def test_each_vmapped_member_equals_the_same_member_trained_alone(toy, dual_source):
    members, steps = _members(), 25
    orders = _orders((0, 1), steps)
    held = {s: [o.flip(0) for o in order[::-1]] for s, order in orders.items()} if dual_source == "heldout" else None
    trainer = _trainer(members, dual_source=dual_source)
    trainer.margin = np.array([[0.01, 0.02]] * len(members))
    _train_sweep(trainer, toy, orders, range(steps), held)
    x, y, a = toy
    for j, m in enumerate(members):
        model = create_model("mlp", D, seed=m.seed)
        is_pl = m.method == "proxy_lagrangian"
        extra = {}
        if dual_source == "heldout" and is_pl:  # the validation batches of the member's seed, in the same order
            batches = iter(held[m.seed])  # type: ignore[index]

            def heldout(batches=batches, model=model):
                rows = next(batches)
                return {"scores": model(x[rows]), "labels": y[rows], "groups": a[rows]}

            extra = {"dual_source": "heldout", "heldout": heldout}
        method = "proxy_lagrangian" if is_pl else fairopt.Penalty(coefficients=m.penalty_coefficient)
        alone = fairopt.ConstrainedOptimizer(
            torch.optim.Adam(model.parameters(), lr=OPTIONS["lr"]), [fairopt.EqualizedOdds(m.tolerance)], G,
            method=method, dual_lr=OPTIONS["dual_lr"], dual_min_count=OPTIONS["dual_min_count"],
            dual_max_window=OPTIONS["dual_max_window"], margin=[0.01, 0.02], validate_args=False, **extra,
        )  # fmt: skip
        for idx in orders[m.seed]:
            scores = model(x[idx])
            alone.zero_grad()
            alone.step(loss=F.binary_cross_entropy_with_logits(scores, y[idx]), scores=scores, labels=y[idx],
                       groups=a[idx])  # fmt: skip
        mine = trainer.model.member_state(j)
        for name, p in model.named_parameters():
            torch.testing.assert_close(mine[name], p.detach(), rtol=1e-5, atol=1e-6, msg=f"{m.label}: {name}")
        torch.testing.assert_close(trainer.multipliers[j], alone.multipliers.double(), rtol=1e-9, atol=1e-12)
        assert float(trainer.objective_weights[j]) == pytest.approx(float(alone.objective_weight), abs=1e-12)


def test_a_sweep_of_penalty_members_only(toy):
    members = [Member("penalty", 0.05, penalty_coefficient=c) for c in (0.5, 2.0)]
    trainer = _trainer(members)
    _train_sweep(trainer, toy, _orders((0,), 3), range(3))
    torch.testing.assert_close(trainer.multipliers, torch.tensor([[0.5, 0.5], [2.0, 2.0]], dtype=torch.float64))


def test_the_dual_source_and_the_heldout_batches_must_agree(toy):
    x, y, a = toy
    members = _members()
    idx = torch.stack([torch.arange(B)] * len(members))
    with pytest.raises(ValueError, match="heldout="):
        _trainer(members, dual_source="heldout").step(x[idx], y[idx], a[idx])
    with pytest.raises(ValueError, match="dual_source='heldout'"):
        _trainer(members).step(x[idx], y[idx], a[idx], heldout=(x[idx], y[idx], a[idx]))


def test_each_member_has_its_own_multipliers(toy):
    members, steps = _members(), 25
    trainer = _trainer(members)
    _train_sweep(trainer, toy, _orders((0, 1), steps), range(steps))
    lam = trainer.multipliers
    assert lam.shape == (4, 2)
    # the stricter bound pushes harder on the same seed and batches; the penalty coefficients never move
    assert (lam[0] > lam[1]).all()
    torch.testing.assert_close(lam[3], torch.tensor([3.0, 3.0], dtype=torch.float64))
    assert not torch.equal(lam[0], lam[2])  # same tolerance, other seed: another game


def test_resume_from_state_dict_continues_bit_for_bit(toy, tmp_path):
    x, y, a = toy
    members, steps = _members(), 20
    orders = _orders((0, 1), steps)
    full = _trainer(members)
    _train_sweep(full, toy, orders, range(10))
    full.record(full.evaluate(x, y, a))
    path = tmp_path / "sweep.pt"
    torch.save(full.state_dict(), path)
    _train_sweep(full, toy, orders, range(10, steps))
    resumed = _trainer(members)
    resumed.load_state_dict(torch.load(path, weights_only=True))
    assert resumed.num_steps == 10 and len(resumed.records[2]) == 1
    _train_sweep(resumed, toy, orders, range(10, steps))
    for name, p in full.model.params.items():
        torch.testing.assert_close(resumed.model.params[name], p, rtol=0, atol=0)
    torch.testing.assert_close(resumed.multipliers, full.multipliers, rtol=0, atol=0)
    with pytest.raises(ValueError, match="saved for members"):
        _trainer(members[:3]).load_state_dict(full.state_dict())


def test_records_keep_each_members_own_state(toy):
    x, y, a = toy
    members = _members()
    trainer = _trainer(members)
    _train_sweep(trainer, toy, _orders((0, 1), 5), range(5))
    trainer.record(trainer.evaluate(x, y, a))
    for j in range(len(members)):
        rec = trainer.records[j][0]
        assert rec.step == 5
        torch.testing.assert_close(rec.state["net.0.weight"], trainer.model.params["net.0.weight"][j].detach())


# the frontier ----------------------------------------------------------------------------------------------------
def _point(label: str, acc: float, upper: float | None, constant: bool = False) -> FrontierPoint:
    est = SplitEstimate(acc, acc - 0.01, acc + 0.01, None if upper is None else upper - 0.02, 0.0, upper, "x")
    return FrontierPoint(label, "proxy_lagrangian", 0.05, 0, None, "best iterate", est, est, constant=constant)


def test_the_pick_is_the_most_accurate_member_whose_heldout_upper_bound_meets_the_target():
    points = [_point("a", 0.80, 0.04), _point("b", 0.85, 0.06), _point("c", 0.83, 0.05), _point("d", 0.9, None)]
    assert pick_member(points, 0.05) == 2  # b is more accurate but its upper bound 0.06 > 0.05; d is undefined
    assert pick_member([*points, _point("e", 0.95, 0.0, constant=True)], 0.05) == 2  # a constant classifier: never
    assert pick_member(points, 0.06) == 1
    assert pick_member(points, 0.03) is None
    result = SweepResult(points, 0.05, 2, "max_g tpr[g] - min_g tpr[g]")
    assert "**picked**" in result.to_markdown().splitlines()[6]
    # the verdict is each member's against its own tolerance, not against the bound the table names: say so
    assert "| test verdict at its tolerance |" in result.to_markdown().splitlines()[2]
    assert json.loads(result.to_json())["points"][3]["audit"]["value"] is None


def test_sweep_end_to_end_on_german(tmp_path):
    result = sweep([0.05, 0.1], dataset="german", model="logistic", epochs=2, penalty_coefficients=(1.0,),
                   constraint="demographic_parity", records_per_run=4, train_size=None)  # fmt: skip
    assert [p.label for p in result.points] == [
        "proxy_lagrangian tol=0.05 seed=0", "proxy_lagrangian tol=0.1 seed=0", "penalty c=1 seed=0"
    ]  # fmt: skip
    for p in result.points:
        assert 0.5 < p.audit.accuracy < 1 and p.audit.accuracy_lower < p.audit.accuracy < p.audit.accuracy_upper
        assert p.audit.lower <= p.audit.value <= p.audit.upper
        assert p.test.value is not None
    if result.picked is not None:
        assert result.points[result.picked].audit.upper <= result.bound
    written = result.write(tmp_path, plots=False)
    assert json.loads(written[0].read_text())["bound"] == 0.05


def test_sweep_json_records_a_csv_datasets_label_column_and_positive_values(tmp_path):
    """sweep.json must be enough to run the sweep again: for a csv dataset that includes --target and
    --positive-label, and the sensitive columns used."""
    pd = pytest.importorskip("pandas")
    from fairopt.bench.config import DEFAULT_SENSITIVE

    rng = np.random.default_rng(0)
    n = 600
    s = rng.choice(["a", "b"], n)
    x = rng.normal(size=n) + (s == "a")
    frame = pd.DataFrame({"x": x, "s": s, "approved": np.where(x + rng.normal(size=n) > 0.5, "yes", "no")})
    path = tmp_path / "people.csv"
    frame.to_csv(path, index=False)
    result = sweep([0.1], dataset=f"csv:{path}", csv_target="approved", csv_positive_label=("yes",),
                   csv_sensitive=("s",), model="logistic", epochs=1, penalty_coefficients=(), records_per_run=2,
                   constraint="demographic_parity", train_size=None)  # fmt: skip
    written = result.write(tmp_path / "out", plots=False)
    config = json.loads(next(p for p in written if p.suffix == ".json").read_text())["config"]
    assert config["dataset"] == f"csv:{path}"
    assert config["csv_target"] == "approved" and config["csv_positive_label"] == ["yes"]
    assert config["sensitive"] == ["s"] and config["model"] == "logistic" and config["epochs"] == 1
    # sweep.json is sweep()'s arguments: running it again gives the same frontier, to the last digit
    bound = json.loads(next(p for p in written if p.suffix == ".json").read_text())["bound"]
    again = sweep(config.pop("tolerances"), bound=bound, **config)
    assert [(p.label, p.audit, p.test) for p in again.points] == [(p.label, p.audit, p.test) for p in result.points]
    german = sweep([0.1], dataset="german", model="logistic", epochs=1, penalty_coefficients=(), records_per_run=2,
                   constraint="demographic_parity", train_size=None)  # fmt: skip
    assert german.config["sensitive"] == DEFAULT_SENSITIVE["german"] and "csv_target" not in german.config


def test_members_below_the_majority_label_baseline_are_noted():
    """An untrained model (lr 1e-7) is worse on German credit than predicting 'good' (70% of the held-out rows) for
    everyone, a classifier that meets demographic parity trivially: the notes must say so, naming the members."""
    result = sweep([0.05, 0.1], dataset="german", model="logistic", epochs=1, penalty_coefficients=(),
                   records_per_run=2, constraint="demographic_parity", train_size=None, lr=1e-7)  # fmt: skip
    [note] = [n for n in result.notes if "below" in n and "held-out accuracy" in n]
    assert note.startswith("2 member(s) have a held-out accuracy below 0.700, that of predicting 1 for every")
    assert all(p.label in note for p in result.points) and all(p.audit.accuracy < 0.7 for p in result.points)
    trained = sweep([0.1], dataset="german", model="logistic", epochs=20, penalty_coefficients=(), records_per_run=2,
                    constraint="demographic_parity", train_size=None)  # fmt: skip
    assert trained.points[0].audit.accuracy == pytest.approx(0.76)  # 76 of the 100 held-out rows
    assert not any("held-out accuracy below" in n for n in trained.notes)


def test_the_sweep_notes_groups_with_few_rows():
    """As fairopt bench does (bench.study.data_notes): COMPAS by race has 1 Native American row in the held-out
    split, which makes every gap over the groups swing."""
    result = sweep([0.1], dataset="compas", sensitive=("race",), model="logistic", epochs=1, penalty_coefficients=(),
                   records_per_run=2, constraint="equal_opportunity", train_size=None)  # fmt: skip
    small = [n for n in result.notes if n.startswith("warning: group ")]
    assert [n.split("'")[1] for n in small] == ["race=Asian", "race=Native American"]
    assert "held-out 1," in small[1] and "fewer than 30 rows" in small[1]


def test_sweep_with_heldout_duals_on_german():
    result = sweep([0.05, 0.1], dataset="german", model="logistic", epochs=1, penalty_coefficients=(), seeds=(0, 1),
                   constraint="demographic_parity", records_per_run=2, train_size=None, heldout_duals=True)  # fmt: skip
    assert result.config["heldout_duals"] is True and result.config["seeds"] == (0, 1)
    assert [p.seed for p in result.points] == [0, 0, 1, 1]
    assert all(p.selection.startswith("best iterate on validation") for p in result.points)


# bad input -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tolerances", "message"),
    [([], "empty"), ([0.05, 0.0], "> 0"), ([-0.1], "> 0"), ([0.05, 0.05], "repeats 0.05"), ([float("nan")], "> 0")],
)
def test_bad_tolerances_are_refused_with_what_to_change(tolerances, message):
    with pytest.raises(ValueError, match=message):
        check_tolerances(tolerances)


def test_bad_members_are_refused():
    with pytest.raises(ValueError, match="finite number > 0"):
        Member("proxy_lagrangian", 0.0)
    with pytest.raises(ValueError, match="penalty_coefficient"):
        Member("penalty", 0.05)
    with pytest.raises(ValueError, match="unknown sweep method"):
        Member("lagrangian", 0.05)
    with pytest.raises(ValueError, match="repeated sweep members"):
        _trainer([Member("proxy_lagrangian", 0.05), Member("proxy_lagrangian", 0.05)])


def test_a_model_that_cannot_be_vmapped_is_refused_with_what_to_change():
    bn = nn.Sequential(nn.Linear(D, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    with pytest.raises(ValueError, match="GroupNorm"):
        StackedModel([bn, bn])
    StackedModel([bn.eval(), bn.eval()])  # eval mode reads its running statistics: fine
    drop = nn.Sequential(nn.Linear(D, 4), nn.Dropout(0.5), nn.Linear(4, 1))
    with pytest.raises(ValueError, match="Dropout"):
        StackedModel([drop])


def test_sweep_refuses_p_rule_and_bad_options():
    with pytest.raises(ValueError, match="p_rule"):
        sweep([0.8], constraint="p_rule")
    with pytest.raises(ValueError, match="empty"):
        sweep([])
    with pytest.raises(ValueError, match="unknown model"):
        sweep([0.05], model="resnet")


@pytest.mark.parametrize("tolerances", ["0.05,0.05", "0,0.1", "", "0.05,abc"])
def test_the_cli_exits_2_on_bad_tolerances(tolerances, capsys):
    from fairopt.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--tolerances", tolerances])
    assert exit_info.value.code == 2
    assert "--tolerances" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--bound", "2"], r"--bound must be in \[0, 1\] .*got 2\.0"),
        (["--bound", "-1"], r"--bound must be in \[0, 1\]"),
        (["--no-penalty", "--penalty-coefficients", "1"], "pass one of the two"),
        (["--epochs", "0"], "invalid epochs: 0; it must be >= 1"),
        (["--margin-z", "-1"], r"invalid margin_z: -1\.0; it must be >= 0"),
        (["--dataset", "digits"], r"a sweep trains tabular models .*image studies are fairopt bench's"),
        (["--dataset", "celeba:faces"], r"a sweep trains tabular models"),
        (["--dataset", "csv:nofile.csv"], r"--dataset csv:nofile\.csv: no such file"),
    ],
)
def test_the_cli_exits_2_on_a_bound_out_of_range_and_contradictory_penalty_options(options, message, capsys, tmp_path):
    from fairopt.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--tolerances", "0.05", "--quiet", "--out", str(tmp_path), *options])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("name", ["mlp", "logistic", "sequential"])
def test_the_direct_linear_path_equals_vmap_bit_for_bit(name):
    gen = torch.Generator().manual_seed(3)
    if name == "sequential":
        torch.manual_seed(0)
        models = [nn.Sequential(nn.Linear(D, 7), nn.ReLU(), nn.Linear(7, 1, bias=False)) for _ in range(3)]
    else:
        models = [create_model(name, D, seed=s) for s in range(3)]
    direct, generic = StackedModel(models), StackedModel(models)
    assert direct._plan is not None
    generic._plan = None  # force torch.func.vmap(functional_call)
    x = torch.randn(3, 11, D, generator=gen)
    out, expected = direct(x), generic(x)
    assert out.shape == (3, 11)
    assert torch.equal(out, expected)
    assert torch.equal(direct(x[0], shared=True), generic(x[0], shared=True))
    grads = torch.autograd.grad(out.square().sum(), list(direct.params.values()))
    expected_grads = torch.autograd.grad(expected.square().sum(), list(generic.params.values()))
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-7)
    # anything else than Linear and ReLU layers (here a LayerNorm) takes the vmap path
    assert StackedModel([nn.Sequential(nn.Linear(D, 4), nn.LayerNorm(4), nn.Linear(4, 1))])._plan is None


def test_the_cli_help_names_only_the_data_the_sweep_takes(capsys):
    """The data options are shared with fairopt bench, whose help also describes image datasets; the sweep trains
    tabular models only, so its help must not offer celeba:DIR, images:CSV or digits."""
    from fairopt.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "csv:PATH: the label column" in text
    assert not any(kind in text for kind in ("celeba", "images:CSV", "digits"))
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "celeba:DIR: any of the 40 attributes" in " ".join(capsys.readouterr().out.split())
