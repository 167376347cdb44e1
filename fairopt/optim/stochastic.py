r"""A reproducible stochastic classifier: a distribution over model states, sampled once per example; and the one
computation of a randomized classifier's expected tables (:func:`expected_tables`).

The guarantees of the Lagrangian games hold for a randomized model (Cotter, Jiang, Sridharan, ALT 2019): predict
with iterate ``t`` drawn with probability ``p_t``. To be auditable, the draw must be a fixed function of the
example, not of the batch it happens to be in: :func:`example_uniforms` hashes ``(seed, example id)`` to a number
``u`` in (0, 1) (MurmurHash3's 32-bit finalizer, in int64 arithmetic: the same on every device and batch
composition), and the example is served by the candidate ``t`` with ``P_{t-1} <= u < P_t`` (``P`` the cumulative
mixture probabilities). The same example id and seed always get the same candidate.

Measured, a randomized classifier needs no draw at all: every table of fairopt is a sum over examples, so its
expected table is the probability-weighted sum of its candidates' tables, exactly (:func:`expected_tables`; no
sampling noise). That one function serves every randomized classifier: a :class:`StochasticClassifier` (candidate
``t`` with probability ``p_t``, in :func:`fairopt.validation.collect_stats`), and a per-example randomized
prediction such as group thresholds (positive with probability ``p_i``: :func:`fairopt.postprocessing.expected_stats`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from fairopt._deprecation import renamed_attribute, renamed_kwargs

__all__ = ["StochasticClassifier", "example_uniforms", "expected_tables"]

_MASK32 = 0xFFFFFFFF

Tables = TypeVar("Tables", bound=tuple[Any, ...])


def expected_tables(
    candidates: Iterable[tuple[float | Tensor, Tensor]],
    tables: Callable[[Tensor, Tensor | None], Tables],
    *,
    into: Tables | None = None,
) -> Tables:
    r"""The expected tables of a randomized classifier: each candidate's tables weighted by its probability, summed.

    A randomized classifier predicts example ``i`` with candidate ``t`` (scores ``s_t``) with probability
    ``q_{t,i}`` (``Σ_t q_{t,i} = 1``). Every table ``T`` here (:class:`~fairopt.GroupStats`,
    :class:`~fairopt.validation.SecondMoments`) is a sum over examples, so its expectation over the draws is exact:

    .. math::
        \mathbb{E}[T] = \sum_t \sum_i q_{t,i} \, T_i(s_t).

    A probability that is one number ``p_t`` for every example (a :class:`StochasticClassifier`: Cotter, Jiang,
    Sridharan, ALT 2019) scales the candidate's table, ``p_t · T(s_t)``, so second moments scale the same way
    (intervals then treat expected counts as counts, which errs wide). A per-example ``(N,)`` probability (group
    thresholds: positive with probability ``p_i``, Hardt, Price, Srebro 2016) is passed to ``tables`` as the
    examples' weights (``tables`` multiplies it with any weights of its own).

    Args:
        candidates: ``(probability, scores)`` pairs: a number in [0, 1] or an ``(N,)`` float tensor, and the
            candidate's ``(N,)`` scores (logits).
        tables: ``tables(scores, example_weights_or_None) -> (table, ...)``: the candidate's tables (one or more,
            each with a ``.table`` tensor, a constructor from it and ``+``), e.g. ``lambda s, w: (group_stats(s,
            labels=y, groups=a, num_groups=G, weights=w),)``.
        into: running totals the candidates' tables are added to, left to right (streaming over batches), or None.

    Returns:
        ``into`` plus ``Σ_t`` of the candidates' weighted tables, one per output of ``tables``, in that order.

    Raises:
        ValueError: no candidates and no ``into``; a negative number as a probability.
    """
    totals = into
    for probability, scores in candidates:
        if isinstance(probability, Tensor) and probability.dim() > 0:
            parts = tables(scores, probability)
        else:
            p = float(probability)
            if not p >= 0:
                raise ValueError(f"a candidate's probability must be >= 0, got {p}")
            parts = tables(scores, None)
            if p != 1.0:  # (a certain candidate's tables are left as they are: exact, and no copy)
                parts = tuple(type(t)(t.table * p) for t in parts)  # type: ignore[assignment]
        totals = parts if totals is None else tuple(a + b for a, b in zip(totals, parts))  # type: ignore[assignment]
    if totals is None:
        raise ValueError("expected_tables needs at least one candidate (or running totals to return)")
    return totals


def _mul32(x: Tensor, constant: int) -> Tensor:
    """``(x * constant) mod 2**32`` for ``x`` in [0, 2**32), exact in int64 (the constant is split in 16-bit halves
    so no product overflows)."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def _fmix32(h: Tensor) -> Tensor:
    """MurmurHash3's 32-bit finalizer (Appleby 2011): a bijection on [0, 2**32) with full avalanche."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def example_uniforms(example_ids: Tensor, seed: int = 0) -> Tensor:
    """One pseudo-random number in (0, 1) per example, a pure function of ``(seed, example id)``.

    Args:
        example_ids: ``(N,)`` non-negative integer ids (e.g. row indices of the dataset), any integer dtype.
        seed: an int; different seeds give independent-looking draws.

    Returns:
        ``(N,)`` float64 on ``example_ids.device``, ``(h + 0.5) / 2**32`` for a 32-bit hash ``h``.

    Raises:
        TypeError: non-integer ids. ValueError: negative ids.
    """
    if example_ids.is_floating_point() or example_ids.is_complex() or example_ids.dtype == torch.bool:
        raise TypeError(f"example_ids must be integer ids, got {example_ids.dtype}")
    ids = example_ids.to(torch.int64).reshape(-1)
    if ids.numel() and bool((ids < 0).any()):
        raise ValueError("example_ids must be >= 0")
    key = _fmix32(torch.full_like(ids, (int(seed) ^ 0x9E3779B9) & _MASK32))
    h = _fmix32((ids >> 32) ^ key)
    h = _fmix32((ids & _MASK32) ^ h)
    return (h.to(torch.float64) + 0.5) / 2.0**32


class _Candidate(nn.Module):
    """One candidate's ``state_dict`` held as buffers (so ``.to()``, ``state_dict()`` and ``load_state_dict()`` see it);
    buffer names escape the dots of the original keys."""

    def __init__(self, state: Mapping[str, Tensor]) -> None:
        super().__init__()
        self.keys = list(state)
        for key in self.keys:
            self.register_buffer(key.replace(".", "__"), state[key].detach().clone())

    def state(self) -> dict[str, Tensor]:
        return {key: getattr(self, key.replace(".", "__")) for key in self.keys}


class StochasticClassifier(nn.Module):
    r"""A randomized model: candidate state ``t`` serves an example with probability ``p_t``, chosen by a hash of
    the example's id (reproducible), or averaged in :meth:`positive_probability`.

    The candidates' tensors are buffers of this module: ``.to(device)`` moves them, and ``state_dict()`` /
    ``load_state_dict()`` save and restore them with the mixture probabilities and the seed (the template
    ``model``'s own parameters are saved too, unused; a state saved before the rename, with ``weights``, loads too).

    Args:
        model: a module of the candidates' architecture; each candidate's parameters and buffers replace its own
            through :func:`torch.func.functional_call` (the module's own parameters are not used).
        states: one ``state_dict`` per candidate (same keys).
        probabilities: ``(K,)`` mixture probabilities of the candidates (non-negative, normalized here; candidates
            with probability 0 are dropped); ``weights=`` is its deprecated name.
        seed: sampling seed.

    Attributes:
        probabilities: ``(K',)`` float64 buffer, the normalized probabilities of the kept candidates (``weights`` is
            its deprecated name).

    Raises:
        ValueError: no candidates, mismatched lengths or keys, negative, non-finite or all-zero probabilities.
    """

    @renamed_kwargs(weights="probabilities")
    def __init__(
        self,
        model: nn.Module,
        states: Sequence[Mapping[str, Tensor]],
        probabilities: Sequence[float] | np.ndarray | Tensor,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        p = torch.as_tensor(np.asarray(probabilities, dtype=np.float64)).reshape(-1)
        if len(states) == 0 or p.numel() != len(states):
            raise ValueError(f"need one probability per state: got {p.numel()} probabilities and {len(states)} states")
        if not bool(torch.isfinite(p).all() and (p >= 0).all()) or float(p.sum()) <= 0:
            raise ValueError("probabilities must be finite, >= 0 and not all 0")
        if any(set(state) != set(states[0]) for state in states):
            raise ValueError("every candidate state must have the same keys (one architecture)")
        keep = [i for i in range(p.numel()) if p[i] > 0]
        self.model = model
        self.candidates = nn.ModuleList(_Candidate(states[i]) for i in keep)
        self.register_buffer("probabilities", p[keep] / p[keep].sum())
        self.seed = int(seed)

    @property
    def weights(self) -> Tensor:
        """Deprecated name of :attr:`probabilities` (the glossary keeps ``weights`` for example weights)."""
        return renamed_attribute(self, "weights", "probabilities")

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A state saved before the rename holds the probabilities under "weights": read it under the new name.
        old, new = prefix + "weights", prefix + "probabilities"
        if old in state_dict and new not in state_dict:
            state_dict[new] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def get_extra_state(self) -> dict[str, int]:
        return {"seed": self.seed}

    def set_extra_state(self, state: Mapping[str, int]) -> None:
        self.seed = int(state["seed"])

    @property
    def num_candidates(self) -> int:
        return len(self.candidates)

    def candidate(self, example_ids: Tensor) -> Tensor:
        """``(N,)`` int64 index of the candidate serving each example (a pure function of ids and seed)."""
        u = example_uniforms(example_ids, self.seed)
        edges = self.probabilities.to(u.device, torch.float64).cumsum(0)[:-1]
        return torch.searchsorted(edges, u, right=True)

    def candidate_forward(self, index: int, x: Tensor) -> Tensor:
        """The output of candidate ``index`` (``0 <= index <`` :attr:`num_candidates`, probability
        ``probabilities[index]``) on ``x``: ``model(x)`` with that candidate's state."""
        return functional_call(self.model, self.candidates[index].state(), (x,))

    def candidate_outputs(self, x: Tensor) -> list[tuple[float, Tensor]]:
        """``(probabilities[t], output of candidate t on x)`` for every candidate: what :func:`expected_tables`
        mixes."""
        return [(p, self.candidate_forward(t, x)) for t, p in enumerate(self.probabilities.tolist())]

    def forward(self, x: Tensor, example_ids: Tensor | None = None) -> Tensor:
        """Scores of the sampled candidate for each example: the output of ``model(x)`` row by row.

        Args:
            x: ``(N, ...)`` model input. example_ids: ``(N,)`` integer ids (same id, same candidate).

        Raises:
            TypeError: no ``example_ids`` (a randomized model needs them to choose a candidate per example; for its
                expected prediction call :meth:`positive_probability`). ValueError: ids and rows differ in number.
        """
        if example_ids is None:
            raise TypeError(
                "a StochasticClassifier serves each example with a candidate drawn from its id: call it as "
                "final(x, example_ids) with (N,) integer ids (the same id gets the same candidate), or use "
                "final.positive_probability(x) for the expected prediction, which is what fairopt.validation.evaluate "
                "and generalization_gap report"
            )
        ids = example_ids.reshape(-1)
        if ids.shape[0] != x.shape[0]:
            raise ValueError(f"example_ids has {ids.shape[0]} entries but x has {x.shape[0]} rows")
        chosen = self.candidate(ids).to(x.device)
        out: Tensor | None = None
        for index in range(self.num_candidates):
            rows = (chosen == index).nonzero().flatten()
            if rows.numel() == 0:
                continue
            scores = self.candidate_forward(index, x[rows])
            if out is None:
                out = scores.new_empty((x.shape[0], *scores.shape[1:]))
            out[rows] = scores
        return out if out is not None else self.candidate_forward(0, x)

    def positive_probability(self, x: Tensor, threshold: float = 0.0) -> Tensor:
        """``(N,)`` float64 ``Σ_t p_t 1{score_t(x) > threshold}``: the randomized model's expected prediction."""
        total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for index in range(self.num_candidates):
            scores = self.candidate_forward(index, x).reshape(x.shape[0], -1)[:, 0]
            total = total + float(self.probabilities[index]) * (scores > threshold).to(torch.float64)
        return total
