"""The rules of aliases: names (``production``, ``champion``) that point at model ids.

An alias may be given wherever a model id is: a name is a model id if such a model exists,
else an alias. An alias never shadows a model id, and a model an alias points at is not
deleted, so that nothing served by name disappears. ``ModelStore.default`` serves the model
the default alias points at, when that alias exists.
"""

from __future__ import annotations

from collections.abc import Mapping

from bnlenet.checkpoint_storage import CheckpointStorage
from bnlenet.model_store.errors import AliasConflict
from bnlenet.model_store.listing import Snapshot

__all__ = ["check_not_pointed_at", "check_not_shadowing", "model_named", "pointing_at"]


def model_named(snapshot: Snapshot, name: str) -> str | None:
    """The model id ``name`` means in ``snapshot``: itself when such a model is listed, else its alias's target."""
    if name in snapshot.versions:
        return name
    return snapshot.aliases.get(name)


def pointing_at(aliases: Mapping[str, str], model_id: str) -> list[str]:
    """The aliases that point at ``model_id``, sorted."""
    return sorted(a for a, target in aliases.items() if target == model_id)


def check_not_shadowing(alias: str, model_id: str, storage: CheckpointStorage, *, kind: str = "model") -> None:
    """AliasConflict when ``alias`` is a model's id (asked of the storage itself, not a listing).

    The same rules name data sets (``bnlenet.datasets.store``): ``kind`` says which in messages.
    """
    if alias == model_id or storage.version(alias) is not None:
        raise AliasConflict(f"{alias!r} is a {kind} id; an alias must not shadow a {kind}: choose another name")


def check_not_pointed_at(storage: CheckpointStorage, model_id: str, *, kind: str = "model") -> None:
    """AliasConflict naming the aliases that point at ``model_id`` (read from the storage itself), if any."""
    pointing = pointing_at(storage.aliases(), model_id)
    if pointing:
        raise AliasConflict(f"{kind} {model_id!r} is what alias(es) {', '.join(pointing)} point at: move or "
                            f"delete {'them' if len(pointing) > 1 else 'it'} first "
                            f"(PUT or DELETE /{kind}s/{{id}}/aliases/{{alias}})")
