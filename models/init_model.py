"""Starting a run from another model's state (``init_model``): fine-tuning, or a new classifier.

Everything is copied: weights and every BN layer's running statistics (``num_batches_tracked``
too, in the builtin variant). The one exception is the last ``nn.Linear`` layer when its width
differs (a data set with other classes): it keeps the fresh initialization the run's seed gave
it, and the rest of the network is kept.

A start from the other variant is refused: the layers compute the same function, but their
names and shapes differ (``gamma``/``beta``/``moving_*`` of shape ``(1, C, 1, 1)`` against
``weight``/``bias``/``running_*`` of shape ``(C,)``), and a silent mapping would hide the
question which momentum convention the statistics follow.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["load_initial_state", "variant_mismatch"]


def variant_mismatch(name: str, its_variant: str, variant: str) -> str | None:
    """Why the model ``name``, of ``its_variant``, cannot start a run of ``variant`` (None: it can)."""
    if its_variant == variant:
        return None
    return (f"init_model {name!r} is a {its_variant} LeNet and this run trains the {variant} variant: the two "
            "variants name their BN layers' parameters differently, so a model starts runs of its own variant "
            f"only; choose variant {its_variant}")


def _variant_of(names: set[str]) -> str:
    return "scratch" if any(n.endswith(".gamma") for n in names) else "builtin"


def load_initial_state(model: nn.Module, state: Mapping[str, Tensor], *, name: str = "init_model") -> bool:
    """Copy ``state`` (of the model ``name``) into ``model``, built with the run's seed; True when the
    classifier was left new.

    ``ValueError`` when ``state`` is not a LeNet of ``model``'s variant.
    """
    own = model.state_dict()
    if set(state) != set(own):
        theirs, ours = _variant_of(set(state)), _variant_of(set(own))
        problem = variant_mismatch(name, theirs, ours)
        if problem is not None:
            raise ValueError(problem)
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise ValueError(f"init_model's weights do not fit the {ours} LeNet: missing {missing or 'nothing'}, "
                         f"unexpected {unexpected or 'nothing'}")
    last = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    classifier = {f"{last}.weight", f"{last}.bias"}
    new_classes = any(state[k].shape != own[k].shape for k in classifier)
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
             for k in own if k not in classifier and state[k].shape != own[k].shape]
    if wrong:
        raise ValueError(f"init_model has tensors of the wrong shape: {', '.join(wrong)}")
    with torch.no_grad():
        for name, tensor in own.items():
            if not (new_classes and name in classifier):
                tensor.copy_(state[name])  # in place: the model's tensors stay the ones the optimizer holds
    return new_classes
