"""M copies of one architecture as one vectorized model: ``torch.func.stack_module_state`` + ``functional_call`` +
``vmap``.

Each member keeps its own parameters (the stacked tensors have a leading member dimension ``M``), so one forward and
one backward train all members at once, and an elementwise optimizer (Adam, SGD) over the stacked tensors takes
exactly the step each member would take alone.

A stack of linear layers and ReLUs (:class:`fairopt.models.MLP`, :class:`~fairopt.models.LogisticRegression`, or an
``nn.Sequential`` of ``nn.Linear`` and ``nn.ReLU``) runs without ``vmap``: one ``torch.baddbmm`` per layer over the
member dimension. It gives the same logits, bit for bit, as ``vmap(functional_call)`` (``tests/test_sweep.py``) in
about half the forward-and-backward time (0.48 vs 1.02 ms for the sweep benchmark's 8 MLPs on 64 rows, one CPU
thread: ``vmap`` runs every op of ``functional_call`` through its batching layer); any other architecture goes
through ``vmap``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from fairopt.models import MLP, LogisticRegression

__all__ = ["StackedModel", "check_vmappable"]

# A plan for the direct path: ("linear", prefix) or ("relu", "") steps, prefix the layer's parameter name prefix.
_Plan = list[tuple[str, str]]


def _linear_plan(model: nn.Module) -> _Plan | None:
    """The layers of ``model`` as a plan for the direct batched forward, or None when it is anything else (then the
    generic ``vmap`` path runs). Exact types only: a subclass may override ``forward``; hooks would be skipped."""
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return None
    if type(model) is LogisticRegression:
        return [("linear", "linear")]
    if type(model) is MLP:
        model, root = model.net, "net."
    elif type(model) is nn.Sequential:
        root = ""
    else:
        return None
    plan: _Plan = []
    for name, layer in model.named_children():
        if type(layer) is nn.Linear:
            plan.append(("linear", root + name))
        elif type(layer) is nn.ReLU:
            plan.append(("relu", ""))
        else:
            return None
    return plan if plan else None


def check_vmappable(model: nn.Module) -> None:
    """Refuse, with what to change, a model whose forward cannot run under ``vmap`` over stacked members.

    Raises:
        ValueError: a batch-norm layer in training mode that tracks running statistics (its forward updates
            ``running_mean`` in place, which ``vmap`` cannot batch, and its batch statistics would mix nothing but
            one member's batch anyway); dropout layers in training mode (each member would need its own random
            mask, which breaks "the same member trained alone").
    """
    for name, module in model.named_modules():
        label = name or type(model).__name__
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training and module.track_running_stats:
            raise ValueError(
                f"{label} ({type(module).__name__}) is in training mode and updates its running statistics in place, "
                "which torch.func.vmap cannot batch over sweep members: replace it with nn.GroupNorm or "
                "nn.LayerNorm, build it with track_running_stats=False, or call "
                "torch.func.replace_all_batch_norm_modules_(model) before the sweep"
            )
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.training and module.p > 0:
            raise ValueError(
                f"{label} ({type(module).__name__}, p={module.p:g}) is in training mode: under vmap every member "
                "would draw its own mask and no member would match the same model trained alone; set p=0 or call "
                "model.eval() on the dropout layers for the sweep"
            )


class StackedModel:
    """Members of one architecture, evaluated together.

    Args:
        models: M modules of the same architecture (same parameter names and shapes), e.g. one per seed; their
            current parameters and buffers are copied (the modules themselves are not modified or used again).

    Attributes:
        params: parameter name -> ``(M, *shape)`` leaf tensor requiring grad (give them to the optimizer).
        buffers: buffer name -> ``(M, *shape)`` tensor.

    Raises:
        ValueError: no models, models of different architectures, or a model :func:`check_vmappable` refuses.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        models = list(models)
        if not models:
            raise ValueError("a sweep needs at least one member model")
        shapes = {n: p.shape for n, p in models[0].named_parameters()}
        for i, m in enumerate(models):
            check_vmappable(m)
            if {n: p.shape for n, p in m.named_parameters()} != shapes:
                raise ValueError(f"member {i} has other parameters than member 0: build every member with the same "
                                 "architecture (only the seed may differ)")  # fmt: skip
        self.params, self.buffers = stack_module_state(models)  # type: ignore[arg-type]
        self.num_members = len(models)
        self._template = copy.deepcopy(models[0])  # holds a member's values for records and export
        self._base = copy.deepcopy(models[0]).to("meta")  # the architecture only: functional_call fills it in
        self._plan = _linear_plan(models[0])  # None: the generic vmap path

    def _one(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self._base, (params, buffers), (x,))

    def __call__(self, x: Tensor, *, shared: bool = False) -> Tensor:
        """Scores of every member: ``x`` ``(M, N, ...)``, a batch per member, or with ``shared=True`` ``(N, ...)``,
        one batch for all (e.g. a whole validation split) -> ``(M, N)`` logits (an ``(M, N, 1)`` output is squeezed).

        Raises:
            ValueError: a per-member batch whose leading dimension is not M; a forward pass that fails under
                ``vmap`` (the message says what vmap refused and what to change).
        """
        if not shared and (x.dim() == 0 or x.shape[0] != self.num_members):
            raise ValueError(
                f"a per-member batch needs shape (M={self.num_members}, N, ...), got {tuple(x.shape)}; pass "
                "shared=True for one batch that every member reads"
            )
        try:
            if self._plan is not None and x.dim() == (2 if shared else 3):
                out = self._linear_forward(x.expand(self.num_members, *x.shape) if shared else x)
            else:
                out = vmap(self._one, in_dims=(0, 0, None if shared else 0))(self.params, self.buffers, x)
        except RuntimeError as err:
            raise ValueError(
                f"the model's forward cannot run under torch.func.vmap ({err}); a sweep needs a forward without "
                "in-place updates of buffers or data-dependent Python control flow (e.g. BatchNorm in training "
                "mode: use GroupNorm/LayerNorm)"
            ) from err
        if out.dim() == 3 and out.shape[-1] == 1:
            out = out.squeeze(-1)
        if out.dim() != 2:
            raise ValueError(f"a sweep member must return (N,) or (N, 1) logits, got {tuple(out.shape[1:])} per member")
        return out

    def _linear_forward(self, x: Tensor) -> Tensor:
        """The plan's layers on ``x (M, N, D)``: ``b + x Wᵀ`` per member as one ``baddbmm`` -> ``(M, N, out)``."""
        for kind, prefix in self._plan or ():
            if kind == "relu":
                x = torch.relu(x)
                continue
            weight, bias = self.params[f"{prefix}.weight"], self.params.get(f"{prefix}.bias")
            x = torch.bmm(x, weight.transpose(1, 2)) if bias is None else torch.baddbmm(
                bias[:, None, :], x, weight.transpose(1, 2)
            )  # fmt: skip
        return x

    def member_state(self, index: int) -> dict[str, Tensor]:
        """Member ``index``'s ``state_dict`` (detached CPU copies), loadable into the original architecture."""
        state = {n: p[index].detach().to("cpu", copy=True) for n, p in self.params.items()}
        state.update({n: b[index].detach().to("cpu", copy=True) for n, b in self.buffers.items()})
        return state

    def member_module(self, index: int) -> nn.Module:
        """A module holding member ``index``'s current values (one scratch copy, reloaded at each call)."""
        # strict=False: member_state also holds non-persistent buffers, which state_dict() leaves out
        self._template.load_state_dict(self.member_state(index), strict=False)
        return self._template

    def load_member_states(self, states: Sequence[dict[str, Tensor]]) -> None:
        """Overwrite every member's parameters and buffers (e.g. with the chosen iterates), in place."""
        if len(states) != self.num_members:
            raise ValueError(f"got {len(states)} states for {self.num_members} members")
        with torch.no_grad():
            for table in (self.params, self.buffers):
                for n, t in table.items():
                    t.copy_(torch.stack([s[n] for s in states]).to(t))
