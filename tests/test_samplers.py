"""GroupBalancedBatchSampler: balanced counts, determinism, epochs, replacement for rare groups, weights, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fairopt.samplers import GroupBalancedBatchSampler


def _groups(*sizes: int) -> np.ndarray:
    return np.concatenate([np.full(n, g) for g, n in enumerate(sizes)])


def _counts(batches: list[list[int]], strata: np.ndarray, num_strata: int) -> np.ndarray:
    return np.array([np.bincount(strata[b], minlength=num_strata) for b in batches])


def test_every_batch_holds_each_group_within_one_and_the_epoch_is_balanced():
    groups = _groups(100, 30, 5)
    sampler = GroupBalancedBatchSampler(groups, 10, seed=3)
    batches = list(sampler)
    counts = _counts(batches, groups, 3)
    assert all(len(b) == 10 for b in batches)
    assert set(np.unique(counts)) == {3, 4}  # 10 = 3 + 3 + 3, the extra slot rotates
    assert (counts.max(axis=1) - counts.min(axis=1)).max() == 1
    totals = counts.sum(axis=0)
    assert totals.sum() == 14 * 10 and totals.max() - totals.min() <= 1  # 14 = ceil(135 / 10) batches
    assert all(0 <= i < len(groups) for b in batches for i in b)


def test_group_x_label_strata_are_balanced():
    groups = _groups(60, 20)
    labels = np.r_[np.zeros(50), np.ones(10), np.zeros(5), np.ones(15)].astype(np.float32)  # 0/1 floats accepted
    sampler = GroupBalancedBatchSampler(torch.from_numpy(groups), 8, labels=torch.from_numpy(labels), seed=0)
    assert sampler.num_strata == 4 and sampler.stratum_sizes.tolist() == [50, 10, 5, 15]
    counts = _counts(list(sampler), 2 * groups + labels.astype(np.int64), 4)
    assert (counts == 2).all()  # 8 slots, 4 strata: exactly 2 each, every batch


def test_same_seed_and_epoch_give_the_same_batches_and_set_epoch_changes_them():
    groups = _groups(40, 12, 7)
    a = GroupBalancedBatchSampler(groups, 9, seed=5)
    b = GroupBalancedBatchSampler(groups, 9, seed=5)
    first = list(a)
    assert first == list(b) == list(a)  # deterministic, and iterating again replays the epoch
    assert first != list(GroupBalancedBatchSampler(groups, 9, seed=6))
    a.set_epoch(1)
    second = list(a)
    assert second != first
    a.set_epoch(0)
    assert list(a) == first


def test_state_dict_resumes_the_epoch():
    groups = _groups(10, 5)
    sampler = GroupBalancedBatchSampler(groups, 4, seed=7)
    sampler.set_epoch(3)
    expected = list(sampler)
    resumed = GroupBalancedBatchSampler(groups, 4, seed=7)
    resumed.load_state_dict(sampler.state_dict())
    assert resumed.epoch == 3 and list(resumed) == expected
    with pytest.raises(ValueError, match="saved with seed=7, this sampler has seed=8"):
        GroupBalancedBatchSampler(groups, 4, seed=8).load_state_dict(sampler.state_dict())


def test_len_is_the_number_of_batches():
    groups = _groups(23, 4)
    assert len(GroupBalancedBatchSampler(groups, 4)) == 7  # ceil(27 / 4)
    sampler = GroupBalancedBatchSampler(groups, 4, num_batches=11)
    assert len(sampler) == 11 == len(list(sampler))
    assert len(GroupBalancedBatchSampler(groups, 4, num_replicas=2)) == 4  # ceil(27 / 8) per rank


def test_a_rare_group_is_drawn_with_replacement_each_example_equally_often():
    groups = _groups(200, 3)
    sampler = GroupBalancedBatchSampler(groups, 16, num_batches=10, seed=1)
    batches = list(sampler)
    rare = [[i for i in b if groups[i] == 1] for b in batches]
    assert all(len(r) == 8 for r in rare)
    assert all(len(set(r)) < len(r) for r in rare)  # 8 draws from 3 examples: repeats in every batch
    seen = np.bincount(np.concatenate(rare) - 200, minlength=3)
    assert seen.sum() == 80 and seen.max() - seen.min() <= 1  # shuffled passes: 26 or 27 times each
    common = np.concatenate([[i for i in b if groups[i] == 0] for b in batches])
    assert len(common) == 80 == len(set(common.tolist()))  # the large group is sub-sampled without repeats


def test_ranks_split_one_common_sequence():
    groups = _groups(30, 10)
    ranks = [GroupBalancedBatchSampler(groups, 6, num_batches=3, num_replicas=2, rank=r, seed=2) for r in (0, 1)]
    single = list(GroupBalancedBatchSampler(groups, 6, num_batches=6, seed=2))
    assert list(ranks[0]) == single[0::2] and list(ranks[1]) == single[1::2]


def test_importance_weights_undo_the_balancing():
    groups = _groups(40, 10)
    labels = np.r_[np.zeros(30), np.ones(10), np.zeros(2), np.ones(8)]
    sampler = GroupBalancedBatchSampler(groups, 10, num_batches=8, seed=0)
    # p = (0.8, 0.2), q = (0.5, 0.5): w = (1.6, 0.4), by hand
    assert torch.allclose(sampler.stratum_weights, torch.tensor([1.6, 0.4], dtype=torch.float64))
    drawn = np.concatenate(list(sampler))  # 40 draws per group: group 0 once through, group 1 four times
    w = sampler.importance_weights(torch.from_numpy(groups[drawn])).numpy()
    assert w.dtype == np.float32 and w.mean() == pytest.approx(1.0)
    y = labels[drawn]
    assert y.mean() == pytest.approx(0.5 * 10 / 40 + 0.5 * 8 / 10)  # balanced mixture: 0.525
    assert (w * y).sum() / w.sum() == pytest.approx(labels.mean())  # weighted: the data's base rate, 0.36
    by_label = GroupBalancedBatchSampler(groups, 4, labels=labels)
    with pytest.raises(ValueError, match="pass labels="):
        by_label.importance_weights(torch.tensor([0, 1]))
    got = by_label.importance_weights(torch.tensor([0, 1]), torch.tensor([1, 0]))
    assert torch.allclose(got, torch.tensor([10 / 50 * 4, 2 / 50 * 4]))


def test_works_as_a_dataloader_batch_sampler():
    groups = _groups(20, 4)
    data = TensorDataset(torch.arange(24), torch.from_numpy(groups))
    loader = DataLoader(data, batch_sampler=GroupBalancedBatchSampler(groups, 6, seed=0))
    batches = list(loader)
    assert len(batches) == 4
    for index, group in batches:
        assert torch.equal(group, torch.from_numpy(groups)[index]) and torch.bincount(group).tolist() == [3, 3]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"groups": [0, 1, 1], "batch_size": 1}, "batch_size=1 cannot hold one example of each of the 2 strata"),
        ({"groups": [0, 1, 1], "batch_size": 0}, "batch_size must be an int >= 1"),
        ({"groups": [0, 0, 0], "batch_size": 1}, "batch_size=1: a BatchNorm network cannot normalize a batch of one"),
        ({"groups": [0, 1, 1], "batch_size": True}, "batch_size must be an int >= 1"),
        ({"groups": [0, 2, 2], "batch_size": 4}, "no examples of group 1"),
        ({"groups": [0, 1], "batch_size": 4, "num_groups": 3}, "no examples of group 2"),
        ({"groups": [0, 3], "batch_size": 4, "num_groups": 2}, "group id 3 is out of range for num_groups=2"),
        ({"groups": [0, -1], "batch_size": 4}, "group ids must be >= 0"),
        ({"groups": [0.5, 1.0], "batch_size": 4}, "groups must hold integers"),
        ({"groups": [[0, 1]], "batch_size": 4}, "groups must be 1-d"),
        ({"groups": [], "batch_size": 4}, "groups is empty"),
        ({"groups": [0, 1], "batch_size": 4, "labels": [0, 2]}, r"labels must be 0/1, got the values \[2\]"),
        ({"groups": [0, 1], "batch_size": 4, "labels": [0]}, "labels has 1 entries but groups has 2"),
        ({"groups": [0, 0, 1], "batch_size": 4, "labels": [0, 1, 1]}, "no examples of group 1 with label 0"),
        ({"groups": [0, 1], "batch_size": 4, "num_batches": 0}, "num_batches must be an int >= 1"),
        ({"groups": [0, 1], "batch_size": 4, "seed": -1}, "seed must be an int >= 0"),
        ({"groups": [0, 1], "batch_size": 4, "num_replicas": 2, "rank": 2}, r"rank must be an int in \[0, num_rep"),
    ],
)
def test_bad_input_is_refused_with_a_message_naming_it(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GroupBalancedBatchSampler(**kwargs)


def test_set_epoch_refuses_a_negative_epoch():
    with pytest.raises(ValueError, match="epoch must be an int >= 0"):
        GroupBalancedBatchSampler([0, 1], 2).set_epoch(-1)
