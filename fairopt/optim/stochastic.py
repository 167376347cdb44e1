r"""A reproducible stochastic classifier: a distribution over model states, sampled once per example.

The guarantees of the Lagrangian games hold for a randomized model (Cotter, Jiang, Sridharan, ALT 2019): predict
with iterate ``t`` drawn with probability ``p_t``. To be auditable, the draw must be a fixed function of the
example, not of the batch it happens to be in: :func:`example_uniforms` hashes ``(seed, example id)`` to a number
``u`` in (0, 1) (MurmurHash3's 32-bit finalizer, in int64 arithmetic: the same on every device and batch
composition), and the example is served by the candidate ``t`` with ``P_{t-1} <= u < P_t`` (``P`` the cumulative
weights). The same example id and seed always get the same candidate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["StochasticClassifier", "example_uniforms"]

_MASK32 = 0xFFFFFFFF


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
    ``load_state_dict()`` save and restore them with the weights and the seed (the template ``model``'s own
    parameters are saved too, unused).

    Args:
        model: a module of the candidates' architecture; each candidate's parameters and buffers replace its own
            through :func:`torch.func.functional_call` (the module's own weights are not used).
        states: one ``state_dict`` per candidate (same keys).
        weights: ``(K,)`` probabilities (non-negative, normalized here; zero-weight candidates are dropped).
        seed: sampling seed.

    Raises:
        ValueError: no candidates, mismatched lengths or keys, negative or all-zero weights.
    """

    def __init__(
        self,
        model: nn.Module,
        states: Sequence[Mapping[str, Tensor]],
        weights: Sequence[float] | np.ndarray | Tensor,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        p = torch.as_tensor(np.asarray(weights, dtype=np.float64)).reshape(-1)
        if len(states) == 0 or p.numel() != len(states):
            raise ValueError(f"need one weight per state: got {p.numel()} weights and {len(states)} states")
        if not bool(torch.isfinite(p).all() and (p >= 0).all()) or float(p.sum()) <= 0:
            raise ValueError("weights must be finite, >= 0 and not all 0")
        if any(set(state) != set(states[0]) for state in states):
            raise ValueError("every candidate state must have the same keys (one architecture)")
        keep = [i for i in range(p.numel()) if p[i] > 0]
        self.model = model
        self.candidates = nn.ModuleList(_Candidate(states[i]) for i in keep)
        self.register_buffer("weights", p[keep] / p[keep].sum())
        self.seed = int(seed)

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
        edges = self.weights.to(u.device, torch.float64).cumsum(0)[:-1]
        return torch.searchsorted(edges, u, right=True)

    def candidate_forward(self, index: int, x: Tensor) -> Tensor:
        """The output of candidate ``index`` (``0 <= index <`` :attr:`num_candidates`, weight ``weights[index]``)
        on ``x``: ``model(x)`` with that candidate's state."""
        return functional_call(self.model, self.candidates[index].state(), (x,))

    def forward(self, x: Tensor, example_ids: Tensor) -> Tensor:
        """Scores of the sampled candidate for each example: the output of ``model(x)`` row by row.

        Args:
            x: ``(N, ...)`` model input. example_ids: ``(N,)`` integer ids (same id, same candidate).
        """
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
            total = total + float(self.weights[index]) * (scores > threshold).to(torch.float64)
        return total
