"""``DatasetStore``: uploaded data sets and their aliases, in the model store's storage under ``datasets/``.

A data set is stored by its id (``dataset_id``: a hash of its images, labels and class names), so
the same content uploaded twice, in any format, is one data set. Each is two objects:
``datasets/<id>.json`` (what ``GET /datasets`` shows: classes, sizes, the validation report) and
``datasets/<id>.npz`` (the arrays, ``dataset_bytes``). The ``.json`` is written first and the
``.npz`` makes the data set listed, so a listed data set always has both; a delete removes them
in the other order. Aliases follow the models' rules (``bnlenet.model_store.aliases``) under
``datasets/aliases/``.

Fashion-MNIST is the built-in data set (``builtin``): listed always, under the alias
``fashion-mnist``, and never stored here: workers read it from ``DATA_DIR`` as they always did.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bnlenet.checkpoint_storage import CheckpointStorage, open_storage
from bnlenet.datasets import PreparedDataset, dataset_bytes, dataset_id
from bnlenet.datasets.builtin import BUILTIN_ALIAS, BUILTIN_ID, builtin_info
from bnlenet.model_store import aliases
from bnlenet.model_store.errors import AliasConflict, valid_model_id

if TYPE_CHECKING:
    from bnlenet.settings import Settings

__all__ = ["DATASETS", "DatasetInUse", "DatasetStore", "UnknownDataset"]

DATASETS = "datasets"  # the prefix (a folder, or part of a key) beside the models
PAYLOAD_SUFFIX = ".npz"
INFO_SUFFIX = ".json"


class UnknownDataset(LookupError):
    """No data set or alias with this name (including names that could never be one)."""


class DatasetInUse(RuntimeError):
    """A data set that jobs or models use, or the built-in one: it is not deleted."""

    def __init__(self, message: str, *, jobs: Sequence[str] = (), models: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.jobs, self.models = list(jobs), list(models)


class DatasetStore:
    """Data sets in ``storage`` (the model store's, under ``datasets/``), with the built-in one beside them."""

    def __init__(self, storage: CheckpointStorage) -> None:
        self.storage = storage
        self._infos: dict[str, dict[str, Any]] = {}  # id -> stored info: content-addressed, so never stale

    @classmethod
    def on(cls, storage: CheckpointStorage, settings: Settings) -> DatasetStore:
        """The data sets of the model store ``storage`` (a worker's downloads go to ``DATASET_CACHE_DIR``)."""
        return cls(storage.under(DATASETS, suffix=PAYLOAD_SUFFIX, cache_dir=settings.DATASET_CACHE_DIR,
                                 max_cache_bytes=settings.DATASET_CACHE_MAX_BYTES))

    @classmethod
    def from_settings(cls, settings: Settings) -> DatasetStore:
        """The data sets beside the models ``CHECKPOINT_DIR`` names."""
        storage = open_storage(settings.CHECKPOINT_DIR, cache_dir=settings.MODEL_CACHE_DIR,
                               max_cache_bytes=settings.MODEL_CACHE_MAX_BYTES,
                               upload_retry_s=settings.OBJECT_STORE_RETRY_S)
        return cls.on(storage, settings)

    @property
    def location(self) -> str:
        return self.storage.location

    # names
    def aliases(self) -> dict[str, str]:
        """Every alias and the data set id it points at, the built-in ``fashion-mnist`` included."""
        return {**self.storage.aliases(), BUILTIN_ALIAS: BUILTIN_ID}

    def resolve(self, name: str) -> str:
        """The data set id ``name`` means: itself when such a data set exists, else its alias's target."""
        if not valid_model_id(name):
            raise UnknownDataset(f"no dataset named {name!r} (dataset ids and aliases are 1-64 letters, digits, "
                                 "'-' or '_', starting with a letter or digit)")
        if name == BUILTIN_ALIAS:  # reserved: no storage look-up for the jobs of old clients
            return BUILTIN_ID
        if name == BUILTIN_ID or self.storage.version(name) is not None:
            return name
        target = self.aliases().get(name)
        if target is not None:
            return target
        raise UnknownDataset(f"no dataset or alias named {name!r}; GET /datasets lists them, POST /datasets "
                             "uploads one")

    # reading
    def info(self, name: str) -> dict[str, Any]:
        """What ``GET /datasets/{name}`` shows of the data set ``name`` means."""
        ds_id = self.resolve(name)
        return {**self._info(ds_id), "aliases": aliases.pointing_at(self.aliases(), ds_id)}

    def _info(self, ds_id: str) -> dict[str, Any]:
        if ds_id == BUILTIN_ID:
            return builtin_info()
        known = self._infos.get(ds_id)
        if known is None:
            try:
                known = json.loads(self.storage.get(ds_id + INFO_SUFFIX))
            except FileNotFoundError:
                raise UnknownDataset(f"no dataset with id {ds_id!r}") from None
            assert isinstance(known, dict)
            self._infos[ds_id] = known
        return known

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every data set: the built-in one first, then the uploaded ones, newest first."""
        names = self.aliases()
        found = []
        for ds_id in self.storage.versions():
            try:
                found.append(self._info(ds_id))
            except UnknownDataset:
                continue  # deleted since the listing
        found.sort(key=lambda info: (str(info.get("created_at", "")), info["id"]), reverse=True)
        return [{**info, "aliases": aliases.pointing_at(names, info["id"])} for info in [builtin_info(), *found]]

    def local_file(self, ds_id: str) -> Path:
        """A local file with the stored data set's arrays (``read_dataset`` reads it): a download, kept in the
        bounded cache, for an S3 store."""
        try:
            return self.storage.fetch(ds_id, self.storage.version(ds_id))[0]
        except FileNotFoundError:
            raise UnknownDataset(f"no dataset with id {ds_id!r}") from None

    # writing
    def add(self, prepared: PreparedDataset, *, name: str | None = None) -> tuple[dict[str, Any], bool]:
        """Store ``prepared`` unless its content is stored already; (its info, whether it is new).

        ``name``, when given, becomes an alias of the data set (moved if it pointed elsewhere).
        """
        ds_id = dataset_id(prepared)
        if name is not None:
            self._check_alias(name, ds_id)
        created = ds_id != BUILTIN_ID and self.storage.version(ds_id) is None
        if created:
            payload = dataset_bytes(prepared)
            info = {
                "id": ds_id, "classes": list(prepared.classes), "num_classes": len(prepared.classes),
                "train_size": len(prepared.train_labels), "test_size": len(prepared.test_labels),
                "format": prepared.report.get("format"), "size_bytes": len(payload),
                "created_at": datetime.now(UTC).isoformat(), "builtin": False, "report": prepared.report,
            }
            self.storage.put(ds_id + INFO_SUFFIX, json.dumps(info).encode())
            self.storage.publish(ds_id, payload)  # listed from here on, whole
            self._infos[ds_id] = info
        if name is not None:
            self.storage.set_alias(name, ds_id)
        return self.info(ds_id), created

    def delete(self, ds_id: str) -> None:
        """Remove a stored data set (the caller checked that nothing uses it); refused under an alias."""
        if ds_id == BUILTIN_ID:
            raise DatasetInUse(f"dataset {ds_id!r} is the built-in Fashion-MNIST; it cannot be deleted")
        self.resolve(ds_id)
        if ds_id not in self.storage.versions():
            raise UnknownDataset(f"no dataset with id {ds_id!r} (DELETE takes an id; aliases are deleted with "
                                 "DELETE /datasets/{id}/aliases/{alias})")
        aliases.check_not_pointed_at(self.storage, ds_id, kind="dataset")
        self.storage.delete(ds_id)
        self.storage.remove(ds_id + INFO_SUFFIX)
        self._infos.pop(ds_id, None)

    def set_alias(self, alias: str, name: str) -> str:
        """Point ``alias`` at the data set ``name`` means; returns its id."""
        ds_id = self.resolve(name)
        self._check_alias(alias, ds_id)
        self.storage.set_alias(alias, ds_id)
        return ds_id

    def _check_alias(self, alias: str, ds_id: str) -> None:
        if not valid_model_id(alias):
            raise UnknownDataset(f"{alias!r} cannot be an alias (1-64 letters, digits, '-' or '_', starting with a "
                                 "letter or digit)")
        if alias in (BUILTIN_ALIAS, BUILTIN_ID):
            raise AliasConflict(f"{alias!r} names the built-in Fashion-MNIST; choose another name")
        aliases.check_not_shadowing(alias, ds_id, self.storage, kind="dataset")

    def delete_alias(self, alias: str) -> None:
        if alias == BUILTIN_ALIAS:
            raise AliasConflict(f"{alias!r} names the built-in Fashion-MNIST; it cannot be deleted")
        if not valid_model_id(alias) or not self.storage.delete_alias(alias):
            raise UnknownDataset(f"no dataset alias named {alias!r}")
