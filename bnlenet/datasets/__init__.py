"""Datasets people upload: read (zip of class folders, IDX, .npz), checked, converted, reported and stored.

No HTTP and no Redis here: ``ingest`` turns a file into a ``PreparedDataset`` or refuses it with
``DatasetRejected``; ``dataset_bytes``, ``read_dataset`` and ``dataset_id`` are its stored form and
content id. docs/datasets.md describes the formats, the checks and the report.
"""

from bnlenet.datasets.bundle import dataset_bytes, dataset_id, read_dataset
from bnlenet.datasets.dataset import PreparedDataset
from bnlenet.datasets.errors import DatasetRejected
from bnlenet.datasets.ingest import ingest
from bnlenet.datasets.limits import IngestLimits

__all__ = ["DatasetRejected", "IngestLimits", "PreparedDataset", "dataset_bytes", "dataset_id", "ingest",
           "read_dataset"]
