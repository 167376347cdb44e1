r"""Group-balanced batches: every batch holds (close to) the same number of examples of each group (or group x label).

Rare groups are the hard case of constrained training with small batches: a group with 1% of the data has about 0.6
examples in a batch of 64, so most batches give its rates no gradient and the few that do give a noisy one.
Two remedies, for two different problems:

* :class:`GroupBalancedBatchSampler` changes what the *batches* hold: every step sees every group, so the primal
  gradient of each group's rates is there at each step, and BatchNorm statistics see every group. It changes the
  training distribution (reweight to undo it, see below).
* ``ConstrainedOptimizer(dual_min_count=...)`` changes what the *dual player* reads: tables pooled over recent
  batches until each group and label holds enough examples (:class:`~fairopt.RunningGroupStats`, mode ``"count"``),
  so the multipliers do not chase noise. It keeps the data distribution, but a step whose batch lacks a group still
  gives that group's rates no gradient.

Use the sampler when a group is so rare that most batches hold none of it (batch share ``B n_g / N`` below a few
examples), or when BatchNorm should see every group; the dual table alone (the default, ``dual_min_count=100``)
when groups are merely small: it costs nothing and keeps the data distribution. They combine (see the note on
weights below).

**What balancing does to the rates.** Within a stratum (a group, or a group and label) examples are drawn
uniformly, so the counts of a stratum's table are, in expectation, its data counts scaled by one factor, and every
rate *conditioned on the stratum* estimates its data value as a plain batch of that stratum would; only the mixture
of strata changes (each gets a batch share ``q_s = 1/S`` instead of its data share ``p_s = n_s / N``). Hence:

* balancing by group: per-group rates (selection rate, TPR, FPR, error rate, precision, mean loss) are unchanged in
  expectation, so constraints *between groups* (demographic parity, equal opportunity, equalized odds, error-rate
  parity, disparate impact, :class:`~fairopt.BoundedGroupLoss`) see the data's rates. Pooled quantities change to the
  balanced mixture: the objective (mean loss), overall rates, and constraints comparing each group with the overall
  rate (``tpr.per_group() - tpr()``, fairlearn's moments);
* balancing by group x label (``labels=``): TPR, FPR, FNR, TNR per group are still unchanged (they condition on the
  label), but every per-group rate that mixes the labels (selection rate, error rate, precision, NPV, base rate, mean
  loss) is moved to a 50/50 label mix.

To undo the change, weight each example by ``w_s = p_s / q_s`` (:meth:`GroupBalancedBatchSampler.importance_weights`,
mean 1 over the batches): the weighted sums of a batch are then unbiased for the data's sums (up to the batch size
``B / N``), so every rate of the weighted table is a consistent ratio estimate of the data's rate. Pass the weights
to the optimizer's ``step(weights=...)`` (and to the loss, for the data's objective). With ``dual_min_count`` the
weighted counts are in weight units: a rare group's examples count ``w < 1`` each, so the window grows to hold
``dual_min_count`` weight units of it, as the data distribution would need. So weight only when a constraint or the
objective reads a pooled (or, with ``labels=``, a label-mixing) quantity: between-group constraints on per-group rates
need no weights, and without them the balanced batches also keep the dual window short.

Balanced sampling as a fairness baseline of its own: Idrissi, Arjovsky, Pezeshki, Lopez-Paz, "Simple data balancing
achieves competitive worst-group-accuracy", CLeaR 2022 (group-balanced up-sampling).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

__all__ = ["GroupBalancedBatchSampler"]


def _as_ids(name: str, values: Any) -> np.ndarray:
    """``values`` as a 1-d int64 NumPy array, or a ValueError naming ``name``."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-d (one entry per example), got shape {array.shape}")
    if array.dtype == np.bool_:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.floating) and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
            return array.astype(np.int64)  # float labels holding exactly 0/1 are accepted by the whole library
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64)


class GroupBalancedBatchSampler(Sampler[list[int]]):
    r"""A batch sampler whose batches hold (close to) equal numbers of each group, or of each group and label.

    Each batch of ``B`` examples gives ``B // S`` slots to each of the ``S`` strata (groups, or group x label pairs
    ``s = 2 g + y``) and one more slot to ``B % S`` of them, in rotation, so the counts of two strata in a batch differ
    by at most one and over an epoch each stratum gets a share ``1/S`` of the slots. Within a stratum examples are
    drawn without replacement through a shuffled pass, and a new shuffled pass starts when the stratum is used up:
    a rare stratum is thus sampled with replacement across passes (its examples recur, each equally often to within
    one), a large one is sub-sampled without repeats. Examples are shuffled within each batch.

    The order is a function of ``(seed, epoch)`` only: call :meth:`set_epoch` at the start of each epoch (as with
    ``DistributedSampler``) for new batches; the same epoch gives the same batches, so a resumed run replays them.
    Under DDP, each of the ``num_replicas`` ranks takes every ``num_replicas``-th batch of one common sequence:
    disjoint batches, the same number on every rank.

    Use with a DataLoader as ``DataLoader(dataset, batch_sampler=sampler, ...)``, or through
    ``ImageDataset.loader(split, batch_size, balance="group")``. See the module docstring for when
    to use it rather than the optimizer's ``dual_min_count``, and for the importance weights.

    Args:
        groups: ``(N,)`` integer group ids in ``[0, G)`` of the dataset's examples, in dataset order (tensor, array
            or list).
        batch_size: B, examples per batch (per rank), at least S and at least 2; every batch is full.
        labels: optional ``(N,)`` 0/1 labels: balance group x label pairs instead of groups.
        num_groups: G (default: ``max(groups) + 1``). Every group (and label, with ``labels``) must have an example.
        num_batches: batches per epoch per rank (default ``ceil(N / (B * num_replicas))``: about one pass over N
            examples in all).
        seed: seed of the order (an int >= 0).
        num_replicas: number of DDP ranks sharing the sequence (default 1).
        rank: this rank, in ``[0, num_replicas)``.

    Attributes:
        num_strata: S, the number of strata (G, or 2G with labels).
        stratum_sizes: ``(S,)`` int64 examples per stratum.
        data_share: ``(S,)`` float64 ``p_s = n_s / N``.
        batch_share: ``(S,)`` float64 ``q_s = 1/S``.
        epoch: the epoch of the next iteration (:meth:`set_epoch`).

    Raises:
        ValueError: ``groups`` or ``labels`` not 1-d integer data of one length; a group id outside ``[0, G)``; a
            label other than 0/1; a stratum without examples (the message names it); ``batch_size`` smaller than S,
            or 1 (every batch is full, so no batch of one example ever reaches BatchNorm);
            ``num_batches``, ``seed``, ``num_replicas`` or ``rank`` out of range.
    """

    def __init__(
        self,
        groups: Tensor | np.ndarray | Sequence[int],
        batch_size: int,
        *,
        labels: Tensor | np.ndarray | Sequence[int] | None = None,
        num_groups: int | None = None,
        num_batches: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        ids = _as_ids("groups", groups)
        if ids.size == 0:
            raise ValueError("groups is empty: the sampler needs the group id of every example of the dataset")
        for name, value, low in (("batch_size", batch_size, 1), ("seed", seed, 0), ("num_replicas", num_replicas, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be an int in [0, num_replicas={num_replicas}), got {rank!r}")
        if ids.min() < 0:
            raise ValueError(f"group ids must be >= 0, got {int(ids.min())}")
        if num_groups is None:
            num_groups = int(ids.max()) + 1
        elif isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or num_groups < 1:
            raise ValueError(f"num_groups must be an int >= 1, got {num_groups!r}")
        elif ids.max() >= num_groups:
            raise ValueError(f"group id {int(ids.max())} is out of range for num_groups={num_groups} (ids in [0, G))")
        self.num_groups = int(num_groups)
        self.by_label = labels is not None
        strata = ids
        if labels is not None:
            y = _as_ids("labels", labels)
            if y.shape != ids.shape:
                raise ValueError(f"labels has {y.size} entries but groups has {ids.size}; give one of each per example")
            bad = np.unique(y[(y != 0) & (y != 1)])
            if bad.size:
                raise ValueError(f"labels must be 0/1, got the values {bad[:5].tolist()}")
            strata = 2 * ids + y
        self.num_strata = self.num_groups * (2 if self.by_label else 1)
        self.stratum_sizes = np.bincount(strata, minlength=self.num_strata).astype(np.int64)
        empty = np.flatnonzero(self.stratum_sizes == 0)
        if empty.size:
            names = ", ".join(self._stratum_name(int(s)) for s in empty[:5])
            fix = " or leave labels= out (balance groups only)" if self.by_label else ""
            raise ValueError(
                f"no examples of {names}: a balanced batch cannot hold them; set num_groups to the groups present, "
                f"merge groups{fix}"
            )
        if batch_size < self.num_strata:
            raise ValueError(
                f"batch_size={batch_size} cannot hold one example of each of the {self.num_strata} strata "
                f"({'group x label' if self.by_label else 'groups'}); use batch_size >= {self.num_strata}"
            )
        if batch_size < 2:
            raise ValueError(
                "batch_size=1: a BatchNorm network cannot normalize a batch of one example in training mode, and one "
                "example compares no groups; use batch_size >= 2"
            )
        if num_batches is None:
            num_batches = max(1, math.ceil(ids.size / (batch_size * num_replicas)))
        elif isinstance(num_batches, bool) or not isinstance(num_batches, (int, np.integer)) or num_batches < 1:
            raise ValueError(f"num_batches must be an int >= 1 (batches per epoch per rank), got {num_batches!r}")
        self.batch_size, self.num_batches, self.seed = int(batch_size), int(num_batches), int(seed)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0
        self.num_examples = int(ids.size)
        order = np.argsort(strata, kind="stable")
        self._members = np.split(order, np.cumsum(self.stratum_sizes)[:-1])  # dataset indices of each stratum
        self.data_share = self.stratum_sizes / self.num_examples
        self.batch_share = np.full(self.num_strata, 1.0 / self.num_strata)
        self._weight_tables: dict[torch.device, Tensor] = {}

    def _stratum_name(self, s: int) -> str:
        return f"group {s // 2} with label {s % 2}" if self.by_label else f"group {s}"

    def set_epoch(self, epoch: int) -> None:
        """Use the batches of ``epoch`` (an int >= 0) at the next iteration.

        Raises:
            ValueError: a negative or non-integer epoch.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        """The sampler's whole state: the seed and the epoch (the batches of an epoch are a function of them)."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore a :meth:`state_dict`: the next iteration gives the batches of the saved epoch.

        Raises:
            ValueError: the state was saved with another seed (the batches would differ from the saved run's).
        """
        if int(state["seed"]) != self.seed:
            raise ValueError(f"the state was saved with seed={state['seed']}, this sampler has seed={self.seed}")
        self.set_epoch(int(state["epoch"]))

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self.num_batches

    def _epoch_batches(self) -> np.ndarray:
        """``(num_batches * num_replicas, B)`` dataset indices of the epoch's common batch sequence."""
        rng = np.random.default_rng([self.seed, self.epoch])
        total, size, strata = self.num_batches * self.num_replicas, self.batch_size, self.num_strata
        base, extra = divmod(size, strata)
        # The B % S extra slots rotate over the strata from a random start, so each stratum's share is 1/S.
        start = int(rng.integers(strata))
        rotation = (np.arange(strata)[None, :] - start - extra * np.arange(total)[:, None]) % strata
        quota = base + (rotation < extra)  # (total, S) slots of each stratum in each batch
        slots = np.repeat(np.tile(np.arange(strata), total), quota.reshape(-1))  # stratum of each slot, batch-major
        out = np.empty(total * size, dtype=np.int64)
        for s, members in enumerate(self._members):
            where = np.flatnonzero(slots == s)
            passes = -(-where.size // members.size)  # shuffled passes through the stratum, the last one partial
            stream = rng.permuted(np.tile(members, (passes, 1)), axis=1).reshape(-1)
            out[where] = stream[: where.size]
        return rng.permuted(out.reshape(total, size), axis=1)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._epoch_batches()[self.rank :: self.num_replicas]
        for batch in batches:
            yield batch.tolist()

    @property
    def stratum_weights(self) -> Tensor:
        """``(S,)`` float64 importance weights ``w_s = p_s / q_s`` (data share over batch share), stratum
        ``s = g`` (or ``2 g + y`` with labels)."""
        return torch.from_numpy(self.data_share / self.batch_share)

    def importance_weights(self, groups: Tensor, labels: Tensor | None = None) -> Tensor:
        """``(N,)`` float32 weights ``w_s = p_s / q_s`` of a batch's examples, on the device of ``groups``: pass them
        as ``weights=`` to the optimizer's step (and to the loss) to undo the change of distribution (module
        docstring). Their mean over the sampler's batches is 1.

        Args:
            groups: ``(N,)`` int64 group ids of the batch.
            labels: ``(N,)`` 0/1 labels, needed when the sampler balances group x label.

        Raises:
            ValueError: ``labels`` missing for a group x label sampler; ``groups`` not 1-d.
        """
        if groups.dim() != 1:
            raise ValueError(f"groups must be (N,), got shape {tuple(groups.shape)}")
        table = self._weight_tables.get(groups.device)
        if table is None:  # one host-to-device copy per device, not per batch
            table = self.stratum_weights.to(device=groups.device, dtype=torch.float32)
            self._weight_tables[groups.device] = table
        if not self.by_label:
            return table[groups.long()]
        if labels is None:
            raise ValueError("this sampler balances group x label: pass labels= as well as groups=")
        return table[2 * groups.long() + labels.long()]

    def __repr__(self) -> str:
        kind = "group x label" if self.by_label else "groups"
        return (
            f"GroupBalancedBatchSampler(num_strata={self.num_strata} ({kind}), batch_size={self.batch_size}, "
            f"num_batches={self.num_batches}, seed={self.seed}, epoch={self.epoch}, "
            f"rank={self.rank}/{self.num_replicas})"
        )
