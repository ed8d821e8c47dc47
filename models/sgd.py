"""Plain SGD, the chapter's optimizer, without ``torch.optim``'s start-up cost.

``torch.optim.SGD`` imports ``torch._dynamo`` the first time it is built or stepped (its
methods are wrapped to keep the compiler out), which takes 1-4 s of a 3-epoch ``bnlenet
train`` process on a small CPU; a run that never compiles needs none of it. ``PlainSGD`` is
the same update, ``param.add_(grad, alpha=-lr)`` per parameter in order, which is what
``torch.optim.SGD`` computes on the CPU (its single-tensor path: no momentum, no weight
decay, not foreach, which it uses on CUDA only), so a seed gives the same model bit for bit
(``tests/models/test_sgd.py``). Its ``state_dict`` has ``torch.optim.SGD``'s shape, so a saved
training state resumes under either.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = ["Optimizer", "PlainSGD", "sgd_defaults"]


class Optimizer(Protocol):
    """What the engine asks of an optimizer: ``PlainSGD`` or any ``torch.optim.Optimizer``."""

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> Any: ...

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state_dict: Any) -> None: ...


def sgd_defaults(lr: float) -> dict[str, Any]:
    """The hyperparameters ``torch.optim.SGD(params, lr=lr)`` keeps in its one parameter group."""
    from torch.optim.sgd import SGD  # the module only (torch imports it anyway); building one loads dynamo

    signature = inspect.signature(SGD.__init__)
    group = {name: p.default for name, p in signature.parameters.items() if name not in ("self", "params")}
    group["lr"] = lr
    return group


class PlainSGD:
    """``torch.optim.SGD(params, lr=lr)`` as the CPU runs it: one ``add_`` per parameter."""

    def __init__(self, params: Iterable[Tensor], lr: float) -> None:
        self.params = list(params)
        self.param_groups: list[dict[str, Any]] = [{**sgd_defaults(lr), "params": self.params}]
        self.state: dict[Any, Any] = {}  # plain SGD keeps none

    @property
    def lr(self) -> float:
        return float(self.param_groups[0]["lr"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_()
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        lr = self.lr
        for p in self.params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)

    def state_dict(self) -> dict[str, Any]:
        """As ``torch.optim.SGD.state_dict()``: no per-parameter state, the group with parameter indices."""
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {"state": {}, "param_groups": [{**group, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the learning rate of a state saved by this class or by ``torch.optim.SGD``.

        Refuses what plain SGD cannot continue: several groups, another number of
        parameters, momentum or weight decay, per-parameter state.
        """
        groups = state_dict.get("param_groups", [])
        if len(groups) != 1 or len(groups[0].get("params", [])) != len(self.params):
            raise ValueError("the optimizer state does not fit these parameters")
        saved = groups[0]
        plain = sgd_defaults(saved.get("lr", self.lr))
        for key in ("momentum", "dampening", "weight_decay", "nesterov", "maximize"):
            if saved.get(key, plain[key]) != plain[key]:
                raise ValueError(f"the optimizer state has {key}={saved[key]!r}: not plain SGD")
        if any(state_dict.get("state", {}).values()):
            raise ValueError("the optimizer state holds per-parameter state: not plain SGD")
        self.param_groups[0]["lr"] = saved.get("lr", self.lr)
