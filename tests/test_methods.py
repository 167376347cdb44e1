"""fairopt.optim.methods: method objects carry their options, declare their needs, and run as the keywords did."""

from __future__ import annotations

import dataclasses
import io
import math
import pickle
import re
import warnings
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fairopt
from fairopt.optim import (
    METHODS,
    AugmentedLagrangian,
    ConstrainedOptimizer,
    Lagrangian,
    Method,
    Penalty,
    PenaltyPlayer,
    ProxyLagrangian,
    resolve_method,
)
from fairopt.optim.methods import canonical_method
from tests.data.make_optim_reference import BATCH, CHECKPOINTED, CONFIGS, STEPS, STOP, data, flat, model, steps
from tests.optim_data import single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")

REFERENCE = torch.load(Path(__file__).with_name("data") / "optim_reference.pt", weights_only=True)
EO = fairopt.EqualizedOdds(0.02)  # m = 2 entries (TPR gap, FPR gap) on two groups

# The configurations of make_optim_reference.CONFIGS, written as method objects.
OBJECTS: dict[str, Method] = {
    "lagrangian": Lagrangian(),
    "lagrangian-nupi-bound": Lagrangian(
        dual_optimizer="nupi", dual_optimizer_kwargs={"Kp": 1.0}, multiplier_bound=0.05
    ),
    "lagrangian-momentum": Lagrangian(dual_optimizer_kwargs={"momentum": 0.5}),
    "augmented-lagrangian": AugmentedLagrangian(),
    "augmented-lagrangian-growth": AugmentedLagrangian(penalty=0.2, penalty_growth=1.5),
    "proxy-lagrangian": ProxyLagrangian(),
    "proxy-lagrangian-external-additive": ProxyLagrangian(regret="external", regret_update="additive"),
    "proxy-lagrangian-swap-additive": ProxyLagrangian(regret_update="additive"),
    "penalty": Penalty(coefficients=2.0),
    "penalty-per-entry": Penalty(coefficients=[0.5, 3.0]),
}


def make(method: str | Method = "lagrangian", **kwargs) -> tuple[ConstrainedOptimizer, torch.nn.Module]:
    """The reference problem of make_optim_reference (float64 MLP, Adam, EqualizedOdds, dual_lr=0.3)."""
    net = model()
    opt = ConstrainedOptimizer(
        torch.optim.Adam(net.parameters(), lr=0.05), [EO], 2, method=method, dual_lr=0.3, dual_min_count=None, **kwargs
    )
    return opt, net


def run(method: str | Method = "lagrangian", **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    opt, net = make(method, **kwargs)
    steps(opt, net, 0, STEPS)
    return flat(net), opt.multipliers


# the same runs as the string + keyword front door ---------------------------------------------------------------------
def test_the_objects_cover_the_reference_runs():
    assert set(OBJECTS) == set(CONFIGS) == set(REFERENCE["runs"])
    for name, (method, _) in CONFIGS.items():
        assert OBJECTS[name].name == method


@pytest.mark.parametrize("name", list(OBJECTS))
def test_a_method_object_gives_the_run_its_keywords_gave_before_the_objects(name):
    """Against runs saved by the old front door (``ConstrainedOptimizer(method=name, **keywords)``, commit 0f86415):
    parameters and multipliers after 6 steps on the same batches."""
    params, multipliers = run(OBJECTS[name])
    saved = REFERENCE["runs"][name]
    torch.testing.assert_close(params, saved["params"], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(multipliers, saved["multipliers"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", list(OBJECTS))
def test_the_deprecated_keywords_still_give_the_same_run_bit_for_bit(name):
    method, keywords = CONFIGS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old_params, old_multipliers = run(method, **keywords)
    params, multipliers = run(OBJECTS[name])
    assert torch.equal(params, old_params) and torch.equal(multipliers, old_multipliers)


# one alias test per deprecated keyword --------------------------------------------------------------------------------
ALIASES = [
    ("dual_optimizer", "lagrangian", "nupi", Lagrangian(dual_optimizer="nupi"), "Lagrangian(dual_optimizer='nupi')"),
    (
        "dual_optimizer_kwargs",
        "lagrangian",
        {"momentum": 0.5},
        Lagrangian(dual_optimizer_kwargs={"momentum": 0.5}),
        "Lagrangian(dual_optimizer_kwargs={'momentum': 0.5})",
    ),
    (
        "multiplier_bound",
        "augmented_lagrangian",
        0.05,
        AugmentedLagrangian(multiplier_bound=0.05),
        "AugmentedLagrangian(multiplier_bound=0.05)",
    ),
    ("penalty", "augmented_lagrangian", 0.2, AugmentedLagrangian(penalty=0.2), "AugmentedLagrangian(penalty=0.2)"),
    ("penalty", "penalty", [0.5, 3.0], Penalty(coefficients=(0.5, 3.0)), "Penalty(coefficients=(0.5, 3.0))"),
    (
        "penalty_growth",
        "augmented_lagrangian",
        1.5,
        AugmentedLagrangian(penalty_growth=1.5),
        "AugmentedLagrangian(penalty_growth=1.5)",
    ),
    (
        "regret",
        "proxy_lagrangian",
        "external",
        ProxyLagrangian(regret="external"),
        "ProxyLagrangian(regret='external')",
    ),
    (
        "regret_update",
        "proxy_lagrangian",
        "additive",
        ProxyLagrangian(regret_update="additive"),
        "ProxyLagrangian(regret_update='additive')",
    ),
]


@pytest.mark.parametrize(("keyword", "method", "value", "expected", "shown"), ALIASES)
def test_each_deprecated_keyword_warns_with_its_replacement_and_is_equivalent(keyword, method, value, expected, shown):
    with pytest.warns(DeprecationWarning, match=re.escape(f"pass method=fairopt.optim.{shown}")) as caught:
        opt, net = make(method, **{keyword: value})
    assert len(caught) == 1 and caught[0].filename == __file__  # points at the caller's line
    assert f"{keyword}=" in str(caught[0].message) and "removed in fairopt 0.3" in str(caught[0].message)
    assert opt.method_spec == expected and opt.method == method
    steps(opt, net, 0, STEPS)
    params, multipliers = run(expected)
    assert torch.equal(flat(net), params) and torch.equal(opt.multipliers, multipliers)


def test_a_keyword_given_as_none_still_means_the_default_and_asks_to_be_dropped():
    with pytest.warns(DeprecationWarning, match=r"drop them \(None is the default\)"):
        opt, _ = make("proxy_lagrangian", regret=None, dual_optimizer=None)  # dual_optimizer: as before, not refused
    assert opt.method_spec == ProxyLagrangian()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new form warns nothing
        make(ProxyLagrangian(regret="external"))
        make("penalty")


# conflicts and bad values ---------------------------------------------------------------------------------------------
def test_a_method_object_and_a_deprecated_keyword_together_are_refused():
    message = (
        "regret= given with method=ProxyLagrangian(regret_update='additive'): a method object carries its options; "
        "pass them to it (method=fairopt.optim.ProxyLagrangian(regret='external', regret_update='additive'))"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        make(ProxyLagrangian(regret_update="additive"), regret="external")
    with pytest.raises(ValueError, match="carries its options"):
        make(Lagrangian(), dual_optimizer=None)


def test_a_deprecated_keyword_for_another_method_is_refused_as_before():
    message = "regret= does not apply to method='lagrangian' (it applies to ('proxy_lagrangian',))"
    with pytest.raises(ValueError, match=re.escape(message)):
        make("lagrangian", regret="swap")
    message = "penalty= does not apply to method='proxy_lagrangian' (it applies to ('augmented_lagrangian', 'penalty'))"
    with pytest.raises(ValueError, match=re.escape(message)):
        make("proxy_lagrangian", penalty=1.0)


def test_an_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'regrets'"):
        make("proxy_lagrangian", regrets="swap")


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: Lagrangian(dual_optimizer="adagrad"), ValueError, r"dual_optimizer must be one of \('sgd', 'nupi'\)"),
        (lambda: Lagrangian(dual_optimizer_kwargs=[("Kp", 1.0)]), TypeError, "dual_optimizer_kwargs must be a mapping"),
        (lambda: Lagrangian(multiplier_bound=0.0), ValueError, "multiplier bound must be a finite number > 0"),
        (lambda: Lagrangian(multiplier_bound=math.inf), ValueError, "multiplier bound must be a finite number > 0"),
        (lambda: AugmentedLagrangian(multiplier_bound=-1.0), ValueError, "multiplier bound"),
        (lambda: AugmentedLagrangian(penalty=0.0), ValueError, "penalty must be a finite number > 0, got 0.0"),
        (lambda: AugmentedLagrangian(penalty=math.nan), ValueError, "penalty must be a finite number > 0"),
        (lambda: AugmentedLagrangian(penalty_growth=1.0), ValueError, "penalty_growth must be > 1, got 1.0"),
        (lambda: AugmentedLagrangian(penalty_growth=-2.0), ValueError, "penalty_growth must be a finite number > 0"),
        (lambda: ProxyLagrangian(regret="internal"), ValueError, r"regret must be one of \('swap', 'external'\)"),
        (lambda: ProxyLagrangian(regret_update="sgd"), ValueError, r"regret_update must be one of \('multiplicative'"),
        (lambda: Penalty(coefficients=-1.0), ValueError, "penalty coefficients must be finite and >= 0, got -1.0"),
        (lambda: Penalty(coefficients=[1.0, math.inf]), ValueError, "penalty coefficients must be finite and >= 0"),
        (lambda: Penalty(coefficients="heavy"), ValueError, "penalty coefficients must be numbers"),
        (lambda: Penalty(coefficients=[[1.0, 2.0]]), ValueError, "penalty coefficients must be numbers"),
        (lambda: Penalty(coefficients=True), ValueError, "penalty coefficients must be numbers"),
        (lambda: Lagrangian("nupi"), TypeError, "positional"),  # options by name only
    ],
)
def test_bad_option_values_are_refused_when_the_object_is_built(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_what_only_the_constraints_or_the_parameters_can_check_is_refused_by_the_optimizer():
    with pytest.raises(ValueError, match="penalty needs 1 or 2 coefficients"):
        make(Penalty(coefficients=(1.0, 2.0, 3.0)))
    with pytest.raises(ValueError, match="maximization"):
        make(Lagrangian(dual_optimizer=lambda params: torch.optim.SGD(params, lr=0.1)))


def test_objects_are_frozen_and_keep_a_copy_of_their_kwargs():
    kwargs = {"momentum": 0.5}
    method = Lagrangian(dual_optimizer_kwargs=kwargs)
    kwargs["momentum"] = 0.9
    assert method.dual_optimizer_kwargs == {"momentum": 0.5}
    with pytest.raises(dataclasses.FrozenInstanceError):
        method.multiplier_bound = 1.0  # type: ignore[misc]
    assert hash(method) == hash(Lagrangian(dual_optimizer_kwargs={"momentum": 0.7}))  # kwargs are not hashed
    assert method != Lagrangian(dual_optimizer_kwargs={"momentum": 0.7})  # but compared
    assert pickle.loads(pickle.dumps(method)) == method  # e.g. sent to the workers of a sweep
    assert AugmentedLagrangian(penalty=1) == AugmentedLagrangian(penalty=1.0)
    assert Lagrangian() != AugmentedLagrangian() and not isinstance(AugmentedLagrangian(), Lagrangian)


@pytest.mark.parametrize("method", [*OBJECTS.values(), Penalty(coefficients=0.0), ProxyLagrangian(regret="external")])
def test_the_repr_is_the_shortest_call_that_builds_the_object(method):
    assert eval(f"fairopt.optim.{method!r}") == method
    assert (
        repr(ProxyLagrangian()) == "ProxyLagrangian()"
        and repr(Penalty(coefficients=[1, 2])) == "Penalty(coefficients=(1.0, 2.0))"
    )


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=-10.0, max_value=10.0, allow_nan=False), min_size=1, max_size=4))
def test_penalty_coefficients_are_kept_as_floats_or_refused_when_negative(values):
    if min(values) < 0:
        with pytest.raises(ValueError, match="finite and >= 0"):
            Penalty(coefficients=values)
    else:
        assert Penalty(coefficients=values).coefficients == tuple(float(v) for v in values)
        assert Penalty(coefficients=torch.tensor(values)).coefficients == tuple(torch.tensor(values).tolist())


# names ----------------------------------------------------------------------------------------------------------------
def test_names_resolve_to_the_default_objects():
    assert METHODS == ("lagrangian", "augmented_lagrangian", "proxy_lagrangian", "penalty")
    for name, cls in zip(METHODS, (Lagrangian, AugmentedLagrangian, ProxyLagrangian, Penalty)):
        assert resolve_method(name) == cls() and cls.name == name
        assert resolve_method(name.replace("_", "-").title()) == cls()  # "Proxy-Lagrangian"
    method = ProxyLagrangian(regret="external")
    assert resolve_method(method) is method and canonical_method(method) == "proxy_lagrangian"
    assert canonical_method(" Augmented-Lagrangian ") == "augmented_lagrangian"
    for bad in ("sgda", None, 3):
        with pytest.raises(
            ValueError, match=r"method must be one of \('lagrangian'.*fairopt\.optim\.Penalty\(\.\.\.\)"
        ):
            resolve_method(bad)  # type: ignore[arg-type]


def test_opt_method_is_the_name_and_method_spec_the_object():
    opt, _ = make(ProxyLagrangian(regret="external"))
    assert opt.method == "proxy_lagrangian" and isinstance(opt.method, str)
    assert opt.method_spec == ProxyLagrangian(regret="external")
    assert "method='proxy_lagrangian'" in repr(opt)
    assert make("Penalty")[0].method_spec == Penalty()
    assert fairopt.ProxyLagrangian is ProxyLagrangian and fairopt.Penalty is Penalty  # top-level exports
    assert {"Lagrangian", "AugmentedLagrangian", "ProxyLagrangian", "Penalty"} <= set(fairopt.__all__)


# flags ----------------------------------------------------------------------------------------------------------------
FLAGS = {  # has_dual_player, supports_heldout_duals, reads_proxy_value
    Lagrangian: (True, True, False),
    AugmentedLagrangian: (True, True, True),
    ProxyLagrangian: (True, True, False),
    Penalty: (False, False, True),
}


@pytest.mark.parametrize("cls", list(FLAGS))
def test_the_flags_say_what_the_player_does(cls):
    has_dual, heldout, reads_proxy = FLAGS[cls]
    assert (cls.has_dual_player, cls.supports_heldout_duals, cls.reads_proxy_value) == FLAGS[cls]
    opt, net = make(cls())
    # reads_proxy_value: the primal objective is not linear in g̃ (no (w0, μ) weights; its value matters)
    assert (opt.player.primal_weights() is None) == reads_proxy
    steps(opt, net, 0, 2)
    assert opt.problem is not None if cls in (Lagrangian, AugmentedLagrangian) else opt.problem is None
    x, y, a = data()
    stats = fairopt.group_stats(net(x).squeeze(-1).detach(), labels=y, groups=a, num_groups=2)
    if has_dual:
        before = opt.multipliers
        assert opt.update_duals(stats) is not None and not torch.equal(opt.multipliers, before)
    else:
        with pytest.raises(ValueError, match="method='penalty' has fixed weights and no dual player"):
            opt.update_duals(stats)
    if heldout:
        assert make(cls(), dual_source="heldout", dual_every=None)[0].dual_statistics.source == "heldout"
    else:
        with pytest.raises(ValueError, match="method='penalty' has no dual player; dual_source does not apply"):
            make(cls(), dual_source="heldout")
        with pytest.raises(ValueError, match=r"heldout= does not apply to method='penalty' \(it applies to"):
            make(cls(), dual_source="heldout", heldout=lambda: None)


@dataclasses.dataclass(frozen=True, repr=False, kw_only=True)
class HalfWeights(Method):
    """A user's method: fixed weights of 0.5, no dual player (the extension protocol: one class)."""

    name: ClassVar[str] = "half_weights"
    has_dual_player: ClassVar[bool] = False
    supports_heldout_duals: ClassVar[bool] = False
    reads_proxy_value: ClassVar[bool] = True

    def build(self, constraint_set, optimizer, dual_lr):
        return PenaltyPlayer(constraint_set.num_constraints, 0.5, dtype=constraint_set.dtype), None


def test_a_new_method_is_one_class_and_the_optimizer_follows_its_flags():
    opt, net = make(HalfWeights())
    x, y, a = data()
    rows = slice(0, BATCH)
    scores = net(x[rows]).squeeze(-1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(scores, y[rows])
    result = opt.step(loss=loss, scores=scores, labels=y[rows], groups=a[rows])
    assert opt.method == "half_weights" and result.dual_value is None  # no dual step scheduled
    torch.testing.assert_close(result.objective, result.loss + 0.5 * result.value.proxy.clamp(min=0).sum())
    with pytest.raises(ValueError, match="method='half_weights' has no dual player"):
        make(HalfWeights(), dual_source="heldout")


# state ----------------------------------------------------------------------------------------------------------------
def test_state_dict_round_trip_with_a_method_object_resumes_bit_for_bit():
    method = ProxyLagrangian(regret="external", regret_update="additive")
    opt, net = make(method)
    steps(opt, net, 0, STOP)
    buffer = io.BytesIO()
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict()}, buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    assert state["optimizer"]["method"] == "proxy_lagrangian" and state["optimizer"]["format"] == 2
    resumed, resumed_net = make(ProxyLagrangian(regret="external", regret_update="additive"))
    resumed_net.load_state_dict(state["model"])
    resumed.load_state_dict(state["optimizer"])
    steps(opt, net, STOP, STEPS)
    steps(resumed, resumed_net, STOP, STEPS)
    assert torch.equal(flat(net), flat(resumed_net)) and torch.equal(opt.multipliers, resumed.multipliers)
    with pytest.raises(ValueError, match="state_dict has regret='external' but this player has 'swap'"):
        make(ProxyLagrangian())[0].load_state_dict(state["optimizer"])
    with pytest.raises(
        ValueError, match="state_dict is for method='proxy_lagrangian', this optimizer uses 'lagrangian'"
    ):
        make(Lagrangian())[0].load_state_dict(state["optimizer"])


@pytest.mark.parametrize("name", CHECKPOINTED)
def test_a_checkpoint_saved_before_the_method_objects_loads_and_continues_the_same_run(name):
    saved = torch.load(io.BytesIO(REFERENCE["checkpoints"][name]), weights_only=True)
    opt, net = make(OBJECTS[name])
    net.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    assert opt.num_steps == STOP
    steps(opt, net, STOP, STEPS)
    torch.testing.assert_close(flat(net), REFERENCE["runs"][name]["params"], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(opt.multipliers, REFERENCE["runs"][name]["multipliers"], rtol=1e-9, atol=1e-12)
