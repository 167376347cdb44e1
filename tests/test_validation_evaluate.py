"""Streaming evaluation: values equal fairlearn's MetricFrame, streaming equals one-shot, any data layout."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    false_negative_rate,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, precision_score, zero_one_loss
from torch.utils.data import DataLoader, TensorDataset

import fairopt as fo
from fairopt._batch_checks import LabelValueError
from fairopt.validation import FairnessReport, Verdict, collect_stats, evaluate
from tests.validation_data import all_reduce_worker, elementwise_model, linear_model, make_data

G = 4
NAMES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def data():
    return make_data(3000, G, seed=1)


@pytest.fixture(scope="module")
def model():
    return linear_model()


def _fairlearn_frames(data, model):
    with torch.no_grad():
        scores = model(data.x).squeeze(1).double()
    y_true = data.y.numpy().astype(int)
    y_pred = (scores > 0).numpy().astype(int)
    proba = torch.sigmoid(scores).numpy()
    w = data.w.numpy()
    sf = pd.Series(np.array(NAMES)[data.g.numpy()], name="group")
    metrics = {
        "selection_rate": selection_rate,
        "true_positive_rate": true_positive_rate,
        "false_positive_rate": false_positive_rate,
        "false_negative_rate": false_negative_rate,
        "error_rate": zero_one_loss,
        "precision": precision_score,
        "base_rate": lambda y_true, y_pred, sample_weight: np.average(y_true, weights=sample_weight),
    }
    params = {k: {"sample_weight": w} for k in metrics}
    rates = MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_pred, sensitive_features=sf, sample_params=params)
    loss = MetricFrame(
        metrics={
            "mean_loss": lambda y_true, y_pred, sample_weight: log_loss(y_true, y_pred, sample_weight=sample_weight)
        },
        y_true=y_true,
        y_pred=proba,
        sensitive_features=sf,
        sample_params={"mean_loss": {"sample_weight": w}},
    )
    return rates, loss, (y_true, y_pred, sf, w)


def test_group_table_equals_fairlearn_metricframe_with_weights(data, model):
    report = evaluate(model, data.tensors(), num_groups=G, group_names=NAMES, batch_size=512)
    rates, loss, _ = _fairlearn_frames(data, model)
    table = report.group_table()
    for rate in rates.by_group.columns:
        ours = table.loc[NAMES, rate].to_numpy(dtype=float)
        assert np.allclose(ours, rates.by_group.loc[NAMES, rate].to_numpy(dtype=float), rtol=0, atol=1e-12), rate
        assert float(table.loc["overall", rate]) == pytest.approx(float(rates.overall[rate]), abs=1e-12)
    assert np.allclose(table.loc[NAMES, "mean_loss"].to_numpy(dtype=float), loss.by_group["mean_loss"], atol=1e-9)
    assert float(table.loc["overall", "mean_loss"]) == pytest.approx(float(loss.overall["mean_loss"]), abs=1e-9)
    # weighted counts, and the unweighted number of examples
    assert np.allclose(table.loc[NAMES, "count"], [data.w[data.g == i].sum().item() for i in range(G)])
    assert table.loc[NAMES, "examples"].tolist() == [int((data.g == i).sum()) for i in range(G)]


def test_constraint_values_equal_fairlearn_differences(data, model):
    constraints = [
        fo.EqualizedOdds(0.1),
        fo.DemographicParity(0.1),
        fo.DisparateImpact(0.8),
    ]
    report = evaluate(model, data.tensors(), constraints, group_names=NAMES)
    rates, _, (y_true, y_pred, sf, w) = _fairlearn_frames(data, model)
    eo, dp, di = report.constraints
    assert max(e.value for e in eo.entries) == pytest.approx(
        equalized_odds_difference(y_true, y_pred, sensitive_features=sf, sample_weight=w), abs=1e-12
    )
    assert dp.entries[0].value == pytest.approx(
        demographic_parity_difference(y_true, y_pred, sensitive_features=sf, sample_weight=w), abs=1e-12
    )
    sel = rates.by_group["selection_rate"]
    assert di.entries[0].value == pytest.approx(0.8 * sel.max() - sel.min(), abs=1e-12)
    assert {e.verdict for c in report.constraints for e in c.entries} <= set(Verdict)


def _assert_same_report(a: FairnessReport, b: FairnessReport) -> None:
    """Counts are exact integers or float64 sums: equal up to summation order."""
    assert np.allclose(np.array(a.statistics), np.array(b.statistics), rtol=1e-12, atol=1e-9)
    assert np.allclose(np.array(a.moments), np.array(b.moments), rtol=1e-12, atol=1e-9)
    assert [[e.verdict for e in c.entries] for c in a.constraints] == [
        [e.verdict for e in c.entries] for c in b.constraints
    ]
    for c_a, c_b in zip(a.constraints, b.constraints):
        for e_a, e_b in zip(c_a.entries, c_b.entries):
            assert (e_a.value, e_a.lower, e_a.upper) == pytest.approx((e_b.value, e_b.lower, e_b.upper), abs=1e-9)


@pytest.mark.parametrize("layout", ["dataloader", "list_of_tuples", "list_of_dicts", "dataset", "generator"])
def test_streaming_equals_one_shot(data, layout):
    model = elementwise_model
    constraints = [fo.EqualizedOdds(0.05, convention="vs_overall"), fo.BoundedGroupLoss(0.7)]
    one_shot = evaluate(model, data.tensors(), constraints, group_names=NAMES, batch_size=10_000)
    dataset = TensorDataset(*data.tensors())
    batches = list(DataLoader(dataset, batch_size=123))
    source = {
        "dataloader": DataLoader(dataset, batch_size=123, shuffle=True, generator=torch.Generator().manual_seed(0)),
        "list_of_tuples": batches,
        "list_of_dicts": [{"inputs": x, "labels": y, "groups": g, "weights": w} for x, y, g, w in batches],
        "dataset": dataset,
        "generator": (b for b in batches),
    }[layout]
    streamed = evaluate(model, source, constraints, group_names=NAMES, batch_size=77)
    _assert_same_report(one_shot, streamed)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=1, max_size=6))
def test_any_batching_gives_the_same_table(cuts):
    data = make_data(500, 3, seed=5)
    edges = np.unique(np.clip(np.cumsum(cuts), 0, 500)).tolist()
    edges = [0, *[e for e in edges if 0 < e < 500], 500]
    batches = [tuple(t[a:b] for t in data.tensors()) for a, b in itertools.pairwise(edges)]
    whole, whole_m = collect_stats(elementwise_model, data.tensors(), 3)
    parts, parts_m = collect_stats(elementwise_model, batches, 3)
    assert torch.allclose(whole.table, parts.table, rtol=1e-12, atol=1e-9)
    assert torch.allclose(whole_m.table, parts_m.table, rtol=1e-12, atol=1e-9)


def test_unweighted_counts_are_exact_integers(model):
    data = make_data(1000, 2, seed=3)
    stats, moments = collect_stats(model, data.tensors(weighted=False), 2, batch_size=33)
    cells = stats.table[:, :4]
    assert torch.equal(cells, cells.round()) and cells.sum().item() == 1000
    assert torch.equal(moments.table[:, :4], cells)  # sum of w^2 = count without weights
    assert moments.table[:, 6].tolist() == [float((data.g == i).sum()) for i in range(2)]


def test_loader_with_an_empty_group(data, model):
    keep = data.g != 2
    tensors = tuple(t[keep] for t in data.tensors())
    loader = DataLoader(TensorDataset(*tensors), batch_size=256)
    report = evaluate(
        model, loader, [fo.EqualOpportunity(0.05, convention="pairwise"), fo.EqualOpportunity(0.05)], group_names=NAMES
    )
    row = report.groups[2]
    assert row.count == 0.0 and row.examples == 0
    assert all(est.value is None and est.lower is None for est in row.rates.values())
    table = report.group_table()
    assert table.loc["c"].drop(["count", "examples"]).isna().all()  # <NA>, never 0
    assert any("'c' has no examples" in w for w in report.warnings)
    pairwise, max_min = report.constraints
    for entry in pairwise.entries:
        if "[c]" in entry.name:
            assert entry.verdict is Verdict.CANNOT_TELL and entry.value is None and "undefined" in entry.reason
        else:
            assert entry.value is not None
    assert max_min.entries[0].value is not None  # the max-min gap is over the groups that have data


def test_undefined_rate_gives_cannot_tell_with_reason(model):
    data = make_data(600, 3, seed=2)
    y = torch.where(data.g == 1, 0.0, data.y)  # group 1 has no positive labels: its TPR is undefined
    report = evaluate(model, (data.x, y, data.g), [fo.tpr(1) - fo.tpr(0) <= 0.05], num_groups=3)
    entry = report.constraints[0].entries[0]
    assert entry.value is None and entry.violation is None
    assert entry.verdict is Verdict.CANNOT_TELL
    assert "true_positive_rate[1]" in entry.reason and "zero denominator" in entry.reason
    assert report.groups[1].rates["true_positive_rate"].value is None
    assert report.groups[1].rates["false_positive_rate"].value is not None
    notes = report.to_markdown().split("### Notes")[1]
    assert notes.count(entry.reason) == 1  # once, among the warnings (it was listed a second time as an entry note)


def test_module_mode_is_restored_and_no_grad(data):
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = linear_model()

        def forward(self, x):
            seen.append((self.training, torch.is_grad_enabled()))
            return self.linear(x)

    probe = Probe().train()
    evaluate(probe, data.tensors(), num_groups=G, batch_size=1000)
    assert probe.training and seen and all(s == (False, False) for s in seen)


def test_stochastic_classifier_callable(data):
    """A randomized classifier (one model drawn per example) is just a callable; its rates mix the models'."""
    a, b = linear_model(seed=0), linear_model(seed=1)
    with torch.no_grad():
        b.bias.fill_(3.0)  # model b predicts positive almost always
    gen = torch.Generator().manual_seed(0)

    def randomized(x):
        pick = torch.rand(x.shape[0], generator=gen) < 0.3
        return torch.where(pick, b(x).squeeze(1), a(x).squeeze(1))

    mixed = evaluate(randomized, data.tensors(), num_groups=G).overall.rates["selection_rate"]
    rate_a = evaluate(a, data.tensors(), num_groups=G).overall.rates["selection_rate"].value
    rate_b = evaluate(b, data.tensors(), num_groups=G).overall.rates["selection_rate"].value
    assert mixed.lower <= 0.7 * rate_a + 0.3 * rate_b <= mixed.upper


def test_stored_scores_and_threshold(data, model):
    with torch.no_grad():
        scores = model(data.x).squeeze(1)
    by_scores = evaluate(lambda s: s, (scores, data.y, data.g), num_groups=G, threshold=0.5, loss_fn=None)
    by_model = evaluate(model, data.tensors(weighted=False), num_groups=G, threshold=0.5, loss_fn=None)
    assert by_scores.statistics == by_model.statistics
    assert "mean_loss" not in by_scores.rates and by_scores.metadata["threshold"] == 0.5
    expected = float((scores > 0.5).double().mean())
    assert by_scores.overall.rates["selection_rate"].value == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
)
def test_runs_on_the_model_device(data, device):
    model = linear_model().to(device)
    report = evaluate(model, DataLoader(TensorDataset(*data.tensors()), batch_size=500), num_groups=G)
    reference = evaluate(linear_model(), data.tensors(), num_groups=G)
    assert np.allclose(np.array(report.statistics)[:, :4], np.array(reference.statistics)[:, :4])


def test_progress_bar(data, model, capsys):
    batches = list(DataLoader(TensorDataset(*data.tensors()), batch_size=100))
    evaluate(model, batches, num_groups=G, progress=True)
    assert "/30 [" in capsys.readouterr().err  # tqdm writes to stderr
    evaluate(model, batches, num_groups=G, progress=False)
    assert capsys.readouterr().err == ""


def test_errors_are_clear(data, model):
    with pytest.raises(ValueError, match="num_groups"):
        evaluate(model, data.tensors())
    with pytest.raises(ValueError, match="refers to group 7"):
        evaluate(model, data.tensors(), [fo.tpr(7) - fo.tpr(0) <= 0.1], num_groups=G)
    with pytest.raises(ValueError, match=r"expected \(3000,\) logits") as error:
        evaluate(lambda x: torch.zeros(len(x), 2), data.tensors(), num_groups=G, batch_size=10_000)
    # the hint for a two-logit head is one forward pass, and what it says it is
    hint = str(error.value).split("model=")[1].split(" (")[0]
    linear, calls = torch.nn.Linear(3, 2), []
    net = lambda x: calls.append(x) or linear(x)  # noqa: E731 (counts the forward passes)
    x = torch.randn(7, 3)
    two = eval(hint, {"net": net})  # our own message, a lambda
    torch.testing.assert_close(two(x), linear(x)[:, 1] - linear(x)[:, 0])
    assert len(calls) == 1  # the old hint, net(x)[:, 1] - net(x)[:, 0], ran the network twice
    with pytest.raises(ValueError, match="cannot read a batch"):
        evaluate(model, [(data.x, data.y)], num_groups=G)
    with pytest.raises(ValueError, match="groups must be ids"):
        evaluate(model, data.tensors(), num_groups=2)
    with pytest.raises(TypeError, match="returned"):
        evaluate(lambda x: x.tolist(), data.tensors(), num_groups=G)
    with pytest.raises(TypeError, match=r"got the string 'abc' \(it would be read as one name per character\)"):
        evaluate(model, data.tensors(), group_names="abc")
    with pytest.raises(ValueError, match="group_names has 2 names but num_groups is 3"):
        evaluate(model, data.tensors(), num_groups=3, group_names=["a", "b"])


def test_frequency_weights_equal_replicated_examples(model):
    data = make_data(400, 2, seed=9)
    counts = torch.randint(1, 4, (400,), generator=torch.Generator().manual_seed(0))
    weighted = evaluate(
        model,
        (data.x, data.y, data.g, counts.double()),
        fo.EqualOpportunity(0.05),
        num_groups=2,
        frequency_weights=True,
    )
    rows = torch.repeat_interleave(torch.arange(400), counts)
    replicated = evaluate(model, (data.x[rows], data.y[rows], data.g[rows]), fo.EqualOpportunity(0.05), num_groups=2)
    for a, b in zip((*weighted.groups, weighted.overall), (*replicated.groups, replicated.overall)):
        for rate in weighted.rates:
            ea, eb = a.rates[rate], b.rates[rate]
            assert (ea.value, ea.lower, ea.upper) == pytest.approx((eb.value, eb.lower, eb.upper), abs=1e-9), rate
    ea, eb = weighted.constraints[0].entries[0], replicated.constraints[0].entries[0]
    assert (ea.lower, ea.upper) == pytest.approx((eb.lower, eb.upper), abs=1e-12)
    # as sampling weights (the default) the same numbers carry less information: wider intervals
    sampling = evaluate(model, (data.x, data.y, data.g, counts.double()), num_groups=2)
    tpr_s, tpr_f = sampling.overall.rates["true_positive_rate"], weighted.overall.rates["true_positive_rate"]
    assert tpr_s.upper - tpr_s.lower > tpr_f.upper - tpr_f.lower


def test_all_reduce_is_a_no_op_without_a_process_group(data):
    reduced, reduced_m = collect_stats(elementwise_model, data.tensors(), G, all_reduce=True)
    local, local_m = collect_stats(elementwise_model, data.tensors(), G)
    assert torch.equal(reduced.table, local.table) and torch.equal(reduced_m.table, local_m.table)


@pytest.mark.slow  # spawns two processes (~10 s of imports on a small machine)
def test_all_reduce_sums_the_shards_of_all_ranks(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    mp.spawn(all_reduce_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    assert not dist.is_initialized()
    whole = evaluate(elementwise_model, make_data(600, 3, seed=6).tensors(), fo.EqualOpportunity(0.05), num_groups=3)
    for rank in range(2):
        shard = FairnessReport.from_json((tmp_path / f"rank{rank}.json").read_text())
        _assert_same_report(whole, shard)


def test_a_positional_batch_with_groups_before_labels_gets_a_hint_on_the_order():
    gen = torch.Generator().manual_seed(0)
    x, y, a = torch.randn(40, 3, generator=gen), torch.arange(40) % 2, torch.arange(40) % 4
    model = torch.nn.Linear(3, 1)

    def scores(inputs):
        return model(inputs).squeeze(-1)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, a, y), batch_size=16)
    for data in ((x, a, y), loader):
        # a ValueError of its own class (LabelValueError), which the hint is keyed on, not on the message's text
        with pytest.raises(LabelValueError, match=r"labels must be 0 or 1: .*read by position as \(x, labels, groups"):
            collect_stats(scores, data, 4)
    # named columns or a group id out of range without a positional batch: the message alone
    with pytest.raises(ValueError, match=r"labels must be 0 or 1") as info:
        collect_stats(scores, {"x": x, "labels": a, "groups": y}, 4)
    assert "by position" not in str(info.value)
    # the right order with a num_groups that is too small, or {-1, 1} labels: swapping would not help, no hint
    with pytest.raises(ValueError, match=r"groups must be ids in \[0, 2\)") as info:
        collect_stats(scores, (x, y, a), 2)
    assert "by position" not in str(info.value)
    with pytest.raises(ValueError, match=r"labels must be 0 or 1: .*map \{-1, 1\}") as info:
        collect_stats(scores, (x, 2 * y - 1, a), 4)
    assert "by position" not in str(info.value)
    # a custom unpack reads the columns its own way: no hint
    with pytest.raises(ValueError, match=r"labels must be 0 or 1") as info:
        collect_stats(scores, (x, a, y), 4, unpack=lambda batch: (batch[0], batch[1], batch[2], None))
    assert "by position" not in str(info.value)


def test_eval_mode_keeps_batch_norm_statistics_and_restores_the_mode():
    """The README's recipe for held-out scores: validation batches must not move the running statistics of the model
    they judge, and training resumes in training mode (also after an error)."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    before = model[1].running_mean.clone()
    x = torch.randn(16, 3) + 5.0
    with fo.validation.eval_mode(model), torch.no_grad():
        assert not model.training
        model(x)
    assert model.training and torch.equal(model[1].running_mean, before)
    with pytest.raises(RuntimeError, match="inside"), fo.validation.eval_mode(model):
        raise RuntimeError("inside")
    assert model.training
    model.eval()
    with fo.validation.eval_mode(model):
        pass
    assert not model.training  # its own mode, not train mode
    model.train()
    model[1].eval()  # a batch-norm layer frozen on purpose stays frozen (model.train(True) would unfreeze it)
    with fo.validation.eval_mode(model):
        pass
    assert model.training and model[0].training and not model[1].training
