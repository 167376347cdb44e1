r"""Protected classes: possibly overlapping unions of groups, each compared with the overall rate.

With intersectional group ids (``sex x race``), a constraint is often wanted on each *protected class* instead:
``race=Black``, ``sex=Female``, ... A class pools every group that belongs to it (its rate is the ratio of the
pooled counts, not a mean of group rates), and classes may overlap (a Black woman is in both classes above). Each
class is compared with the overall (pooled) rate ``r``, as in Cotter, Gupta, Jiang, Srebro, Sridharan, Wang,
Woodworth, You, "Training Well-Generalizing Classifiers for Fairness Metrics and Other Data-Dependent Constraints",
ICML 2019, Section 6 (four protected classes on Adult and COMPAS; the comparison with the overall rate is the
``"vs_overall"`` convention of :mod:`fairopt.constraints.builtin`, fairlearn's moments):

* :class:`ProtectedClassParity`: ``|r_c - r| <= tolerance`` for every class ``c`` and rate (e.g. equal opportunity:
  the TPR; equalized odds: TPR and FPR);
* :class:`ProtectedClassDisparateImpact`: the p%-rule ``r_c >= p * r``, written linearly as ``p * r - r_c <= 0``
  (Feldman et al., KDD 2015; Zafar et al., AISTATS 2017).

Entries, in order: for each class (in the order given), each rate. Each entry is named after its class, e.g.
``|tpr[race=Black] - tpr[overall]|``. An entry whose class rate is undefined (no rows of the class, or no positives
for a TPR) is undefined, never 0: see :mod:`fairopt.constraints.base`.

:func:`protected_classes` finds each class's group ids from the group names of :class:`~fairopt.groups.Groups`
(``"sex=Female|race=Black"``)::

    classes = protected_classes(data.group_names, [("race", "Black"), ("sex", "Female")])
    constraint = ProtectedClassParity("tpr", classes, tolerance=0.05)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from fairopt.constraints.base import Constraint
from fairopt.constraints.builtin import _check_p, _check_tolerance
from fairopt.constraints.expressions import Expr, RateRef, concat
from fairopt.groups import Groups
from fairopt.rates import canonical_rate_name

__all__ = ["ProtectedClassDisparateImpact", "ProtectedClassParity", "protected_classes"]

ClassIds = Mapping[str, Sequence[int]]
Id = int | tuple[int, ...]


def protected_classes(
    group_names: Sequence[str] | Groups, classes: Sequence[tuple[str, str] | str]
) -> dict[str, tuple[int, ...]]:
    """Each protected class's label -> the ids of the groups that belong to it.

    Args:
        group_names: the G names of the group ids, ``"attribute=value"`` parts joined by ``"|"`` (as
            :class:`~fairopt.groups.Groups` and the loaders of :mod:`fairopt.datasets` name them), or the ``Groups``.
        classes: ``(attribute, value)`` pairs or ``"attribute=value"`` strings, e.g. ``[("race", "Black")]``.

    Returns:
        ``{"race=Black": (2, 7), ...}`` in the order of ``classes``: the ids (ascending) of every group whose name
        has that ``attribute=value`` part.

    Raises:
        ValueError: no classes, a class given twice, a string without ``=``, or a class that matches no group (the
            message lists the group names).
    """
    names = list(group_names.names if isinstance(group_names, Groups) else group_names)
    if not classes:
        raise ValueError("protected_classes needs at least one class, e.g. [('race', 'Black')]")
    out: dict[str, tuple[int, ...]] = {}
    for item in classes:
        if isinstance(item, str):
            if "=" not in item:
                raise ValueError(f"a protected class is 'attribute=value' or (attribute, value), got {item!r}")
            label = item
        else:
            attribute, value = item
            label = f"{attribute}={value}"
        if label in out:
            raise ValueError(f"protected class {label!r} is listed twice")
        ids = tuple(i for i, g in enumerate(names) if label in g.split("|"))
        if not ids:
            raise ValueError(f"protected class {label!r} matches no group; groups are {names}")
        out[label] = ids
    return out


def _class_ids(classes: ClassIds) -> dict[str, tuple[int, ...]]:
    if not isinstance(classes, Mapping) or not classes:
        raise ValueError(
            "classes must be a non-empty mapping of class label -> group ids, e.g. {'race=Black': (2, 7)}; "
            "build it with protected_classes(group_names, [('race', 'Black')])"
        )
    return {str(label): tuple(int(g) for g in ids) for label, ids in classes.items()}


def _rates(rates: str | Sequence[str]) -> tuple[str, ...]:
    names = (rates,) if isinstance(rates, str) else tuple(rates)
    if not names:
        raise ValueError("rates must name at least one rate, e.g. 'tpr' or ('tpr', 'fpr')")
    return tuple(canonical_rate_name(r) for r in names)


class _PerClass(Constraint):
    """One entry per (class, form): ``form(ids)`` builds an entry from the pooled rate of a class's group ids. Entry
    names show the class label where the expression would list the pooled groups (``tpr[race=Black]``): they are
    rendered from ``form(0)`` with the label as the name of group 0."""

    def __init__(self, classes: ClassIds, forms: Sequence[Callable[[Id], Expr]], tolerance: float, name: str) -> None:
        self.classes = _class_ids(classes)
        self._forms = tuple(forms)
        parts = [form(ids) for ids in self.classes.values() for form in self._forms]
        super().__init__(concat(*parts), tolerance, name=name)

    def entry_names(self, group_names: Sequence[str] | int) -> list[str]:
        return [form(0).entry_names([label])[0] for label in self.classes for form in self._forms]


def _parity_form(rate: str) -> Callable[[Id], Expr]:
    ref = RateRef(rate)
    return lambda ids: abs(ref(ids) - ref())


def _ratio_form(rate: str, p: float) -> Callable[[Id], Expr]:
    ref = RateRef(rate)
    return lambda ids: p * ref() - ref(ids)


class ProtectedClassParity(_PerClass):
    r"""Each protected class's rate within ``tolerance`` of the overall rate: ``|r_c - r| <= tolerance``.

    Source: Cotter et al., ICML 2019, Section 6 (module docstring); the group-vs-overall comparison of fairlearn's
    moments (Agarwal et al., ICML 2018).

    Args:
        rates: one rate name or several (``"tpr"``: equal opportunity per class; ``("tpr", "fpr")``: equalized odds).
        classes: class label -> the ids of the groups it pools (:func:`protected_classes`); classes may overlap.
        tolerance: in rate units (0.05 = 5 percentage points), in [0, 1].
        name: the constraint's name (default ``ProtectedClassParity(tolerance=0.05, true_positive_rate;
            race=Black, ...)``).

    Entries: ``len(classes) * len(rates)``: for each class, each rate.

    Raises:
        ValueError: an unknown rate, no rates, no classes, an empty or repeated id list, a tolerance outside [0, 1].
    """

    def __init__(
        self, rates: str | Sequence[str], classes: ClassIds, tolerance: float = 0.0, *, name: str | None = None
    ) -> None:
        tolerance = _check_tolerance(tolerance)
        self.rates = _rates(rates)
        labels = ", ".join(_class_ids(classes))
        default = f"ProtectedClassParity(tolerance={tolerance:g}, {', '.join(self.rates)}; {labels})"
        super().__init__(classes, [_parity_form(r) for r in self.rates], tolerance, name or default)


class ProtectedClassDisparateImpact(_PerClass):
    r"""The p%-rule per protected class against the overall rate: ``r_c >= p * r``, as ``p * r - r_c <= 0``.

    Source: Feldman et al., "Certifying and Removing Disparate Impact", KDD 2015 (the 80% rule, ``p = 0.8``), per
    protected class as in Cotter et al., ICML 2019, Section 6; linear form as Zafar et al., AISTATS 2017.

    Args:
        classes: class label -> the ids of the groups it pools (:func:`protected_classes`); classes may overlap.
        p: the ratio, in (0, 1].
        rate: the rate compared (default the selection rate).
        name: the constraint's name (default ``ProtectedClassDisparateImpact(p=0.8, selection_rate; race=Black,
            ...)``).

    Entries: one per class.

    Raises:
        ValueError: ``p`` outside (0, 1], an unknown rate, no classes, an empty or repeated id list.
    """

    def __init__(
        self, classes: ClassIds, p: float = 0.8, *, rate: str = "selection_rate", name: str | None = None
    ) -> None:
        p = _check_p(p)
        self.p, self.rate = p, canonical_rate_name(rate)
        default = f"ProtectedClassDisparateImpact(p={p:g}, {self.rate}; {', '.join(_class_ids(classes))})"
        super().__init__(classes, [_ratio_form(self.rate, p)], 0.0, name or default)
