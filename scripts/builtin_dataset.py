"""Write bnlenet/datasets/fashion_mnist.json: what GET /datasets shows of the built-in Fashion-MNIST.

Run after a change to the ingest or the content id: ``python scripts/builtin_dataset.py [DATA_DIR]``.
The four IDX files go through the same ``ingest`` as an upload of them (zipped), so the id and the
report are the ones an upload of the same images, labels and classes gets.
"""

from __future__ import annotations

import json
import sys
import tempfile
import zipfile
from pathlib import Path

from bnlenet.datasets import dataset_bytes, dataset_id, ingest
from bnlenet.datasets.builtin import BUILTIN_INFO_FILE
from models.data import CLASS_NAMES, FILES, _find_file, find_data_dir


def builtin_record(data_dir: str | None = None) -> dict[str, object]:
    """The built-in data set's record, computed from the IDX files (about ten seconds)."""
    directory = find_data_dir(data_dir)
    if directory is None:
        raise SystemExit("Fashion-MNIST's IDX files are not found; pass their directory")
    with tempfile.TemporaryDirectory() as scratch:
        bundle = Path(scratch) / "fashion-mnist.zip"
        with zipfile.ZipFile(bundle, "w") as zf:
            for stem in FILES.values():
                path = _find_file(directory, stem)
                assert path is not None
                zf.write(path, path.name)
        prepared = ingest(bundle, bundle.name, classes=list(CLASS_NAMES))
    return {
        "id": dataset_id(prepared), "classes": list(prepared.classes), "num_classes": len(prepared.classes),
        "train_size": len(prepared.train_labels), "test_size": len(prepared.test_labels),
        "format": prepared.report.get("format"), "size_bytes": len(dataset_bytes(prepared)),
        "created_at": None, "builtin": True, "report": prepared.report,
    }


if __name__ == "__main__":
    record = builtin_record(sys.argv[1] if len(sys.argv) > 1 else None)
    BUILTIN_INFO_FILE.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    print(f"{BUILTIN_INFO_FILE}: {record['id']}")
