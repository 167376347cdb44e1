"""Diagnostics: illusion of fairness on memorized training data, generalization gap, leveling down."""

from __future__ import annotations

import pytest
import torch

import fairopt as fo
from fairopt.validation import (
    ILLUSION_FLAG,
    FairnessReport,
    GeneralizationGap,
    Verdict,
    evaluate,
    generalization_gap,
    leveling_down,
)
from tests.validation_data import linear_model, make_data, stats_from_cells

G = 3
CONSTRAINTS = [fo.EqualOpportunity(0.05), fo.ErrorRateParity(0.05), fo.DemographicParity(0.5)]


@pytest.fixture(scope="module")
def splits():
    return {
        name: make_data(n, G, seed=s) for name, n, s in (("train", 300, 10), ("held-out", 600, 11), ("test", 600, 12))
    }


def nearest_neighbour(train):
    """A memorizing model: the label of the nearest training example, as a logit of +-4."""

    def predict(x):
        nearest = torch.cdist(x, train.x).argmin(dim=1)
        return 8.0 * train.y[nearest] - 4.0

    return predict


def overfit_mlp(data, steps=250):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.Adam(net.parameters(), lr=3e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threads only add synchronization (30x slower on a busy 2-core machine)
    try:
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(net(data.x).squeeze(1), data.y).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return net


def _flagged(report):
    return {c.kind: [ILLUSION_FLAG in e.flags for e in c.entries] for c in report.constraints}


def test_the_training_split_by_its_spellings_and_a_misspelt_train_warns(splits):
    """ "training" or " Train_" is the training split (the illusion check runs); a name spelled nearly like "train"
    ("trian") warns, since a misspelt "train" turns the check off; other names are the caller's own and quiet."""
    import warnings

    train = splits["train"]
    model = nearest_neighbour(train)
    for split in ("training", " Train_"):
        report = evaluate(model, train.tensors(), CONSTRAINTS, num_groups=G, split=split)
        assert any(ILLUSION_FLAG in e.flags for c in report.constraints for e in c.entries)
    with pytest.warns(UserWarning, match=r"split 'trian' is not the training split: did you mean 'train'\? \(only"):
        report = evaluate(model, train.tensors(), CONSTRAINTS, num_groups=G, split="trian")
    assert not any(ILLUSION_FLAG in e.flags for c in report.constraints for e in c.entries)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for split in ("dev-2", "held-out", "heldout", "holdout", "calibration", "tset", "valid", "test1", None):
            fo.FairnessReport.from_stats(report.stats, CONSTRAINTS, split=split)


def test_illusion_flag_fires_on_a_memorizing_model(splits):
    train = splits["train"]
    report = evaluate(nearest_neighbour(train), train.tensors(), CONSTRAINTS, num_groups=G, split="train")
    assert all(row.rates["error_rate"].value == 0.0 for row in report.groups)
    eo, erp, dp = report.constraints
    for result in (eo, erp):  # error-based: trivially met on memorized data, so not "satisfied"
        entry = result.entries[0]
        assert entry.value == pytest.approx(0.0, abs=1e-12)
        assert entry.verdict is Verdict.CANNOT_TELL and ILLUSION_FLAG in entry.flags
        assert "illusion of fairness" in entry.reason and "held-out" in entry.reason
    assert not any(ILLUSION_FLAG in e.flags for e in dp.entries)  # selection rates are not error-based
    (warning,) = [w for w in report.warnings if "illusion of fairness" in w]
    # the warning names the flagged entries itself (a loop that prints the warnings alone still sees which)
    named = [e.name for r in (eo, erp) for e in r.entries if ILLUSION_FLAG in e.flags]
    assert warning.startswith(f"illusion of fairness on {', '.join(named)}: ")
    assert not any(e.name in warning for e in dp.entries if e.name not in named)
    # the same model on new data: real errors, no flag
    test = evaluate(nearest_neighbour(train), splits["test"].tensors(), CONSTRAINTS, num_groups=G, split="test")
    assert not any(any(v) for v in _flagged(test).values())


def test_illusion_flag_fires_on_an_overfit_mlp_on_tiny_data():
    tiny = make_data(48, 2, seed=21)
    net = overfit_mlp(tiny)
    report = evaluate(net, tiny.tensors(), [fo.EqualizedOdds(0.1)], num_groups=2, split="train")
    assert max(row.rates["error_rate"].value for row in report.groups) <= 0.01
    assert all(ILLUSION_FLAG in e.flags for e in report.constraints[0].entries)


def test_no_illusion_flag_with_non_trivial_training_error(splits):
    train = splits["train"]
    report = evaluate(linear_model(), train.tensors(), CONSTRAINTS, num_groups=G, split="train")
    assert min(row.rates["error_rate"].value for row in report.groups) > 0.1
    assert not any(any(v) for v in _flagged(report).values())


def test_illusion_threshold_and_violated_entries():
    # training errors 0.1% and 0.9%; TPR gap 0.016 > tolerance 0.005 with large n: violated stays violated
    cells = [[10_000, 0, 20, 9_980], [10_000, 0, 180, 9_820]]
    stats = stats_from_cells(cells)
    violated = FairnessReport.from_stats(stats, fo.EqualOpportunity(0.005), split="train")
    assert violated.constraints[0].entries[0].verdict is Verdict.VIOLATED
    met = FairnessReport.from_stats(stats, fo.EqualOpportunity(0.1), split="train")
    assert ILLUSION_FLAG in met.constraints[0].entries[0].flags
    strict = FairnessReport.from_stats(
        stats, fo.EqualOpportunity(0.1), split="train", options=fo.validation.ReportOptions(max_train_error=0.001)
    )
    assert strict.constraints[0].entries[0].verdict is Verdict.SATISFIED


def test_generalization_gap_side_by_side(splits):
    train = splits["train"]
    gap = generalization_gap(
        nearest_neighbour(train),
        {name: data.tensors() for name, data in splits.items()},
        [fo.EqualOpportunity(0.05), fo.EqualizedOdds(0.05, convention="vs_overall")],
        num_groups=G,
    )
    assert gap.splits == ("train", "held-out", "test")
    table = gap.table()
    assert len(table) == 1 + 2 * G
    assert {"train_value", "held-out_value", "test_value", "test_verdict", "gap"} <= set(table.columns)
    first = table.iloc[0]
    assert first["train_value"] == pytest.approx(0.0, abs=1e-12) and first["test_value"] > 0.0
    assert first["gap"] == pytest.approx(first["test_value"] - first["train_value"])
    assert first["train_verdict"] == "cannot tell"  # the illusion flag on the training split
    text = gap.to_markdown()
    assert "| constraint | entry | train | held-out | test | gap (test - train) |" in text
    # what the cells are, in the glossary's terms: expression values (g + tolerance), not constraint values g
    assert "Expression values with 95% intervals and verdicts (each against its constraint's bound)" in text
    assert "illusion of fairness" in text
    # the overall error rate first, with its own gap: a nearest neighbour has none on its training rows
    errors = {name: r.overall.rates["error_rate"].value for name, r in gap.reports.items()}
    assert errors["train"] == 0.0 and errors["test"] > 0.05
    row = next(line for line in text.splitlines() if line.startswith("| (overall error rate, not a constraint) |"))
    assert row.split(" | ")[2].startswith("0.000 [0.000, ") and row.endswith(f"| {errors['test']:.3f} |")
    assert GeneralizationGap.from_json(gap.to_json()) == gap
    named = generalization_gap(
        nearest_neighbour(train),
        {name: data.tensors() for name, data in splits.items()},
        [fo.tpr(1) - fo.tpr(0) <= 0.05],
        group_names=[f"g{i}" for i in range(G)],
    )
    # a comparison's label with the group names, as FairnessReport.to_markdown shows it (was "tpr[1] - tpr[0] ...")
    assert "| tpr[g1] - tpr[g0] <= 0.05 | tpr[g1] - tpr[g0] |" in named.to_markdown()


def test_generalization_gap_errors(splits):
    with pytest.raises(ValueError, match="at least two splits"):
        generalization_gap(linear_model(), {"test": splits["test"].tensors()}, CONSTRAINTS, num_groups=G)
    with pytest.raises(ValueError, match="split="):
        generalization_gap(
            linear_model(),
            {k: v.tensors() for k, v in splits.items()},
            CONSTRAINTS,
            num_groups=G,
            split="x",
        )


def _report(tpr_by_group, n=10_000):
    """Two groups, 50% positives, FPR 0.1, given TPRs; accuracy follows from them."""
    cells = []
    for tpr in tpr_by_group:
        pos = neg = n // 2
        tp, fp = round(tpr * pos), round(0.1 * neg)
        cells.append([neg - fp, fp, pos - tp, tp])
    return FairnessReport.from_stats(stats_from_cells(cells), group_names=["A", "B"])


def test_leveling_down_flags_a_gap_closed_by_harming_the_better_off():
    reference = _report([0.90, 0.60])
    leveled = _report([0.64, 0.62])  # A lost 0.26, B gained 0.02
    result = leveling_down(leveled, reference, rates=["tpr"])
    (finding,) = result.findings
    assert finding.better_off == "A" and finding.worse_off == "B"
    assert finding.reference_gap == pytest.approx(0.30) and finding.current_gap == pytest.approx(0.02)
    assert finding.better_off_change == pytest.approx(-0.26) and finding.worse_off_change == pytest.approx(0.02)
    assert finding.leveling_down and not finding.strict and result.flagged == (finding,)
    assert "better-off group got worse" in finding.reason
    changes = result.table()
    assert changes.loc[changes["group"] == "A", "change"].iloc[0] == pytest.approx(-0.26)
    assert "leveling down" in result.to_markdown()


def test_leveling_down_not_flagged_when_the_worse_off_improves():
    reference = _report([0.90, 0.60])
    improved = _report([0.88, 0.85])
    (finding,) = leveling_down(improved, reference, rates=["tpr"]).findings
    assert not finding.leveling_down and "worse-off group improved" in finding.reason


def test_leveling_down_strict_and_lower_is_better():
    reference = _report([0.90, 0.60])
    worse_for_all = _report([0.58, 0.55])
    (finding,) = leveling_down(worse_for_all, reference, rates=["tpr"]).findings
    assert finding.leveling_down and finding.strict
    # FPR: lower is better; equal FPRs in both reports: no gap, nothing flagged
    result = leveling_down(worse_for_all, reference, rates=["fpr", "accuracy"])
    assert [f.rate for f in result.findings] == ["false_positive_rate", "accuracy"]
    assert not result.findings[0].leveling_down
    assert result.findings[1].leveling_down  # accuracy gap closed by A's loss too
    with pytest.raises(ValueError, match="different groups"):
        leveling_down(worse_for_all, FairnessReport.from_stats(stats_from_cells([[1, 1, 1, 1]] * 2)))


def test_which_constraints_are_error_based():
    from fairopt.validation.diagnose.illusion import ERROR_BASED_RATES, referenced_rates

    assert referenced_rates(fo.EqualizedOdds(0.1)) == {"true_positive_rate", "false_positive_rate"}
    assert referenced_rates(fo.DisparateImpact(0.8)) == {"selection_rate"}
    assert referenced_rates(fo.tpr((0, 1)) - fo.fnr(2) <= 0.1) == {"true_positive_rate", "false_negative_rate"}
    assert referenced_rates(fo.FunctionConstraint(lambda v: v.tpr, 2)) is None  # unknown: treated as error-based
    assert not ({"selection_rate", "base_rate"} & ERROR_BASED_RATES) and "mean_loss" in ERROR_BASED_RATES
