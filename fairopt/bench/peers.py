"""Peers run on the same splits and constraint as the study (``fairopt bench --peers``).

* ``fairlearn-expgrad``: fairlearn's ExponentiatedGradient (Agarwal et al., ICML 2018) around scikit-learn's
  LogisticRegression, with fairlearn's moment for the study's constraint, trained on the same training split.
  Like-for-like bound: fairlearn's moments bound each group against the overall rate, ``|r_g - r| <= b``, the
  study's built-in constraints the largest gap between two groups, ``max_g r_g - min_g r_g <= t``. By the triangle
  inequality ``b = t / 2`` guarantees ``max - min <= t`` for any number of groups and any group shares (and no
  larger ``b`` does in general), so that is the bound used; for the p%-rule (``min/max >= p``), fairlearn's
  ``ratio_bound`` ``b`` gives ``min/max >= b²``, so ``b = sqrt(p)``. Its randomized classifier is evaluated exactly
  in expectation (``_pmf_predict``), like our stochastic models.
* ``fairlearn-threshold``: fairlearn's ThresholdOptimizer (Hardt, Price, Srebro 2016) on the study's unconstrained
  logistic model of the same seed (prefit, its logits as ``decision_function``), fitted on the same validation
  split with ``tol`` = the study's tolerance (the largest allowed difference between groups; fairlearn has no relaxed
  equalized odds, so there it asks for equal rates), evaluated exactly in expectation; it needs the sensitive
  attribute at prediction time. Its time includes training the base model.
* ``cooper-sigmoid``: cooper used directly as a user would without fairopt: a plain Lagrangian whose rates are
  made differentiable by a sigmoid, the *same* relaxed value for both players (no proxy constraints), simultaneous
  gradient descent-ascent, the study's model and optimizer settings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from torch.nn import functional as F

from fairopt import postprocessing
from fairopt.datasets import DatasetSplit, TabularDataset
from fairopt.models import create_model
from fairopt.stats import GroupStats, group_stats
from fairopt.validation import FairnessReport

from .config import StudyConfig
from .runner import RunResult, split_reports, split_stats, train_model
from .study import load_study_data

__all__ = ["expected_stats", "run_peers"]


def expected_stats(positive_probability: torch.Tensor, split: DatasetSplit, num_groups: int) -> GroupStats:
    """Exact expected table of a randomized classifier predicting positive with probability ``p_i`` on ``split``
    (:func:`fairopt.postprocessing.expected_stats`)."""
    return postprocessing.expected_stats(
        positive_probability, labels=split.y, groups=split.groups, num_groups=num_groups
    )


def _reports(
    data: TabularDataset, stats_of: Callable[[DatasetSplit], GroupStats], config: StudyConfig, method: str, seed: int
) -> dict[str, FairnessReport]:
    """The peer's report per study split (:func:`~fairopt.bench.runner.split_reports`; intervals from the counts)."""
    metadata = {"model": "logistic", "method": method, "seed": seed}
    return split_reports(data, config.build_constraint(data.group_names), lambda s: (stats_of(s), None), metadata)


def _fairlearn(config: StudyConfig, data: TabularDataset, seed: int) -> RunResult:
    from fairlearn import reductions
    from sklearn.linear_model import LogisticRegression

    moments = {
        "equalized_odds": lambda t: reductions.EqualizedOdds(difference_bound=t),
        "equal_opportunity": lambda t: reductions.TruePositiveRateParity(difference_bound=t),
        "demographic_parity": lambda t: reductions.DemographicParity(difference_bound=t),
        "fpr_parity": lambda t: reductions.FalsePositiveRateParity(difference_bound=t),
        "error_rate_parity": lambda t: reductions.ErrorRateParity(difference_bound=t),
        "p_rule": lambda p: reductions.DemographicParity(ratio_bound=p),
    }
    start = time.perf_counter()
    bound = np.sqrt(config.tolerance) if config.constraint == "p_rule" else config.tolerance / 2
    mitigator = reductions.ExponentiatedGradient(
        LogisticRegression(max_iter=1000), constraints=moments[config.constraint](bound)
    )
    train = data.train
    mitigator.fit(train.X.numpy(), train.y.numpy().astype(int), sensitive_features=train.groups.numpy())
    wall = time.perf_counter() - start

    def stats_of(split: DatasetSplit) -> GroupStats:
        p = torch.as_tensor(np.asarray(mitigator._pmf_predict(split.X.numpy()))[:, 1])
        return expected_stats(p, split, data.num_groups)

    support = int((np.asarray(mitigator.weights_) > 0).sum())
    return RunResult(
        "logistic", "fairlearn-expgrad", seed, _reports(data, stats_of, config, "fairlearn-expgrad", seed), [],
        f"ExponentiatedGradient mixture ({support} classifiers)", support, [], wall,
    )  # fmt: skip


_THRESHOLD_CONSTRAINTS = {
    "equalized_odds": "equalized_odds",
    "equal_opportunity": "true_positive_rate_parity",
    "demographic_parity": "demographic_parity",
    "fpr_parity": "false_positive_rate_parity",
}


def _threshold_optimizer(config: StudyConfig, data: TabularDataset, seed: int) -> RunResult | None:
    """fairlearn's ThresholdOptimizer on our unconstrained logistic model; None for constraints it lacks."""
    from fairlearn.postprocessing import ThresholdOptimizer
    from sklearn.base import BaseEstimator, ClassifierMixin

    if config.constraint not in _THRESHOLD_CONSTRAINTS:
        return None
    constraint = config.build_constraint(data.group_names)
    start = time.perf_counter()
    model = train_model(config, data, constraint, "logistic", "unconstrained", seed).model

    class Prefit(ClassifierMixin, BaseEstimator):
        def fit(self, X: np.ndarray, y: np.ndarray) -> Prefit:
            return self

        def __sklearn_is_fitted__(self) -> bool:
            return True

        def decision_function(self, X: np.ndarray) -> np.ndarray:
            device = next(model.parameters()).device
            with torch.no_grad():
                return model(torch.as_tensor(X, dtype=torch.float32, device=device)).double().cpu().numpy()

    optimizer = ThresholdOptimizer(
        estimator=Prefit(),
        constraints=_THRESHOLD_CONSTRAINTS[config.constraint],
        objective="accuracy_score",
        prefit=True,
        predict_method="decision_function",
        tol=None if config.constraint == "equalized_odds" else config.tolerance,  # no relaxed equalized odds there
    )
    v = data.validation
    optimizer.fit(v.X.double().numpy(), v.y.numpy().astype(int), sensitive_features=v.groups.numpy())
    wall = time.perf_counter() - start

    def stats_of(split: DatasetSplit) -> GroupStats:
        pmf = optimizer._pmf_predict(split.X.double().numpy(), sensitive_features=split.groups.numpy())
        return expected_stats(torch.as_tensor(np.asarray(pmf)[:, 1]), split, data.num_groups)

    method = "fairlearn-threshold"
    return RunResult(
        "logistic", method, seed, _reports(data, stats_of, config, method, seed), [],
        f"ThresholdOptimizer on validation ({'exact' if optimizer.tol is None else f'tol {optimizer.tol:g}'})", 1, [],
        wall,
    )  # fmt: skip


def _cooper(config: StudyConfig, data: TabularDataset, seed: int, model_name: str) -> RunResult:
    import cooper

    constraint = config.build_constraint(data.group_names)
    torch.manual_seed(seed)
    model = create_model(model_name, data.num_features, seed=seed)
    num_groups = data.num_groups

    class SigmoidFairness(cooper.ConstrainedMinimizationProblem):
        def __init__(self, m: int) -> None:
            super().__init__()
            self.fairness = cooper.Constraint(
                constraint_type=cooper.ConstraintType.INEQUALITY,
                formulation_type=cooper.formulations.Lagrangian,
                multiplier=cooper.multipliers.DenseMultiplier(num_constraints=m),
            )

        def compute_cmp_state(self, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> cooper.CMPState:
            logits = model(x)
            stats = group_stats(
                logits,
                labels=y,
                groups=a,
                num_groups=num_groups,
                proxy="sigmoid",
                dtype=torch.float32,
                validate_args=False,
            )
            violation = constraint.evaluate(stats).proxy  # the sigmoid-relaxed value, for both players
            loss = F.binary_cross_entropy_with_logits(logits, y)
            return cooper.CMPState(loss=loss, observed_constraints={self.fairness: cooper.ConstraintState(violation)})

    cmp = SigmoidFairness(constraint.num_entries(num_groups))
    primal = torch.optim.Adam(model.parameters(), lr=config.lr)
    dual = torch.optim.SGD(cmp.dual_parameters(), lr=config.dual_lr, maximize=True)
    coop = cooper.optim.SimultaneousOptimizer(cmp, primal_optimizers=primal, dual_optimizers=dual)
    start = time.perf_counter()
    for epoch in range(config.epochs_for(model_name)):
        batch_size = config.batch_size_for(len(data.train))
        for x, y, a in data.train.loader(batch_size=batch_size, shuffle=True, seed=seed * 1000 + epoch):
            coop.roll(compute_cmp_state_kwargs={"x": x, "y": y, "a": a})
    wall = time.perf_counter() - start
    method = "cooper-sigmoid"
    return RunResult(
        model_name, method, seed, _reports(data, lambda s: split_stats(model, s, num_groups), config, method, seed),
        [], "last iterate", 1, cmp.fairness.multiplier.weight.detach().tolist(), wall,
    )  # fmt: skip


def run_peers(
    config: StudyConfig,
    *,
    log: Callable[[str], None] | None = None,
    on_error: Callable[[str], None] | None = None,
) -> list[RunResult]:
    """Run the peers for every seed of ``config`` (cooper with each of the study's models).

    A peer that raises (e.g. for an option its library lacks) is skipped for that seed and the others still run;
    ``on_error`` receives one line per failure (default: re-raise).
    """
    runs: list[RunResult] = []
    if config.classes and log is not None:
        log("  fairlearn-expgrad skipped: its moments take disjoint groups, not the study's overlapping classes")
    for seed in config.seeds:
        data = load_study_data(config, seed)
        peers: list[Callable[[], RunResult | None]] = []
        if not config.classes:
            peers += [partial(_fairlearn, config, data, seed), partial(_threshold_optimizer, config, data, seed)]
        peers += [partial(_cooper, config, data, seed, model) for model in config.models]
        new = []
        for peer in peers:
            try:  # one peer's failure (e.g. an option fairlearn lacks) leaves the others
                run = peer()
            except Exception as err:
                if on_error is None:
                    raise
                on_error(f"a peer failed on seed {seed} ({type(err).__name__}: {err}); the study is written without it")
                continue
            new += [] if run is None else [run]
        if log is not None:
            for run in new:
                log(f"  {run.model:<10} {run.method:<26} seed {seed}: done ({run.wall_time:.1f} s)")
        runs += new
    return runs
