"""The model store: trained checkpoints and their aliases, shared by the API, the workers and the CLI.

Checkpoints live in a ``bnlenet.checkpoint_storage``: a local directory (the embedded default)
or an S3-compatible bucket, which lets workers on other hosts publish to the API. The storage
is the registry: listing and serving need nothing else, Redis included. A model id must match
``MODEL_ID_PATTERN`` (no path separators, no dots), so no id can name anything outside it.

One concept per module:

- ``errors``: the exceptions, and the one place storage errors become them;
- ``listing``: what the storage holds, as of one look, refreshed by one rule;
- ``verification``: each checkpoint version verified once (structure and checksum);
- ``aliases``: the rules of names that point at models;
- ``loaded``: the LRU of models loaded for serving;
- ``exports``: the export cache (ONNX, torch.export);
- ``store``: ``ModelStore``, which composes them.

Serving keeps the storage off the hot path: loaded models sit in a bounded LRU; the listing of
models and aliases is refreshed at most once per ``refresh_s`` in the background, and at once
when another process announces a change (``bnlenet.model_news``); a file that does not verify
is never served or chosen by default. When the storage cannot be reached, loaded models go on
being served from the last listing, and the rest raise ``ObjectStoreUnavailable``.
"""

from bnlenet.model_store.errors import (
    MODEL_ID_PATTERN,
    AliasConflict,
    ModelUnusable,
    NoModelYet,
    ObjectStoreUnavailable,
    UnknownModel,
    valid_model_id,
)
from bnlenet.model_store.loaded import LoadedModel
from bnlenet.model_store.store import ModelStore

__all__ = [
    "MODEL_ID_PATTERN",
    "AliasConflict",
    "LoadedModel",
    "ModelStore",
    "ModelUnusable",
    "NoModelYet",
    "ObjectStoreUnavailable",
    "UnknownModel",
    "valid_model_id",
]
