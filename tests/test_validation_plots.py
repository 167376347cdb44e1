"""Plots: non-empty PNG files of the right kind, and a clear message when matplotlib is missing."""

from __future__ import annotations

import sys

import matplotlib.image as mpimg
import pytest
import torch

import fairopt as fo
from fairopt.validation import FairnessMonitor, evaluate, generalization_gap
from fairopt.validation.plots import plot_constraint_history, plot_generalization_gap, plot_group_rates
from tests.validation_data import linear_model, make_data

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
G = 3


pytestmark = pytest.mark.usefixtures("agg_backend")  # tests/conftest.py


def _assert_png(path, min_pixels=200):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    image = mpimg.imread(path)
    assert image.shape[0] >= min_pixels and image.shape[1] >= min_pixels
    assert image[..., :3].std() > 0.01  # not a blank canvas


@pytest.fixture(scope="module")
def splits():
    return {
        "train": make_data(400, G, seed=1),
        "held-out": make_data(400, G, seed=2),
        "test": make_data(400, G, seed=3),
    }


def test_group_rates_png(tmp_path, splits):
    data = splits["test"]
    y = data.y.clone()
    y[data.g == 2] = 0.0  # an undefined TPR is drawn as "undefined", not as 0
    report = evaluate(linear_model(), (data.x, y, data.g, data.w), num_groups=G, split="test")
    fig = plot_group_rates(report, path=tmp_path / "rates.png")
    _assert_png(tmp_path / "rates.png")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "undefined" in texts
    with pytest.raises(ValueError, match="not in the report"):
        plot_group_rates(report, rates=["npv"])


def test_violation_history_png(tmp_path, splits):
    monitor = FairnessMonitor(
        [fo.EqualizedOdds(0.02), fo.DemographicParity(0.05)],
        {"held-out": splits["held-out"].tensors(), "test": splits["test"].tensors()},
        num_groups=G,
        every=2,
    )
    model = linear_model()
    train = splits["train"]
    for step in range(8):
        with torch.no_grad():
            model.bias += 0.1  # the model drifts, so the violations move
        stats = fo.group_stats(model(train.x).squeeze(1).detach(), labels=train.y, groups=train.g, num_groups=G)
        monitor.update(step, model, train_stats=stats)
    fig = plot_constraint_history(monitor, path=tmp_path / "history.png")
    _assert_png(tmp_path / "history.png")
    assert len(fig.axes) == 2 and {line.get_label() for line in fig.axes[0].lines} >= {"train", "held-out", "test"}
    # a long constraint name is wrapped, never clipped: every word of the title is there, no line over 70 characters
    title = fig.axes[0].get_title()
    assert title.replace("\n", " ").endswith("(g = value - 0.02; <= 0 satisfied)") and "\n" in title
    assert max(map(len, title.split("\n"))) <= 70
    plot_constraint_history(monitor.history(), constraints=[monitor.constraints[1].name], path=tmp_path / "one.png")
    _assert_png(tmp_path / "one.png")
    with pytest.raises(ValueError, match="no history"):
        plot_constraint_history(monitor, constraints=["unknown"])


def test_generalization_gap_png(tmp_path, splits):
    gap = generalization_gap(
        linear_model(), {k: v.tensors() for k, v in splits.items()}, [fo.EqualOpportunity(0.05)], num_groups=G
    )
    plot_generalization_gap(gap, path=tmp_path / "gap.png")
    _assert_png(tmp_path / "gap.png")


def test_missing_matplotlib_gives_install_hint(monkeypatch, splits):
    report = evaluate(linear_model(), splits["test"].tensors(), num_groups=G)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install fairopt\[plots\]"):
        plot_group_rates(report)
