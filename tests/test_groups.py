"""Groups: stable ids and names from ints, bools, strings, categoricals, and intersections."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fairopt import Groups


def test_strings_sorted_and_names():
    groups = Groups.fit(pd.Series(["M", "F", "F", "M"], name="sex"))
    assert groups.names == ("sex=F", "sex=M") and groups.num_groups == 2
    assert groups.encode(pd.Series(["F", "M", "M"], name="sex")).tolist() == [0, 1, 1]
    assert groups.encode(["M"]).dtype == torch.int64


def test_unnamed_ints_bools_and_tensors():
    assert Groups.fit([3, 1, 3]).names == ("1", "3")
    assert Groups.fit(np.array([True, True])).names == ("False", "True")  # both categories, even if absent
    assert Groups.fit(torch.tensor([2, 0])).encode(torch.tensor([0, 2, 2])).tolist() == [0, 1, 1]


def test_categorical_keeps_declared_order():
    col = pd.Categorical(["b", "a"], categories=["b", "a", "c"])
    groups = Groups.fit(pd.Series(col, name="x"))
    assert groups.names == ("x=b", "x=a", "x=c")
    assert groups.encode(pd.Series(pd.Categorical(["c", "b"], categories=["b", "a", "c"]), name="x")).tolist() == [2, 0]


def test_intersectional_every_combination_mixed_radix():
    df = pd.DataFrame({"sex": ["F", "M", "F"], "race": ["Black", "White", "White"]})
    groups = Groups.fit(df, categories={"race": ["White", "Black", "Asian"]})
    assert groups.num_groups == 6
    assert groups.names[:3] == ("sex=F|race=White", "sex=F|race=Black", "sex=F|race=Asian")
    assert groups.encode(df).tolist() == [1, 3, 0]
    assert groups.id("sex=M|race=Asian") == 5 and groups.decode([5]) == ["sex=M|race=Asian"]
    assert Groups(groups.to_dict()).names == groups.names


def test_errors_name_the_problem():
    groups = Groups.fit(pd.DataFrame({"sex": ["F", "M"]}))
    with pytest.raises(ValueError, match=r"attribute 'sex' has value\(s\) 'X' not among its categories"):
        groups.encode(pd.DataFrame({"sex": ["X"]}))
    with pytest.raises(ValueError, match="missing sensitive attribute"):
        groups.encode(pd.DataFrame({"race": ["A"]}))
    with pytest.raises(ValueError, match="has 1 missing value"):
        Groups.fit(pd.Series(["F", None], name="sex"))
    with pytest.raises(ValueError, match="unknown group name"):
        groups.id("sex=Q")
    with pytest.raises(ValueError, match="must be 1-D"):
        Groups.fit(np.zeros((2, 2)))
