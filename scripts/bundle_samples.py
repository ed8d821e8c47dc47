"""Write the dashboard's bundled Fashion-MNIST samples: ten test images per class in one PNG.

    .venv/bin/python scripts/bundle_samples.py [DATA_DIR]

The predict page picks a random image from this sheet, so it needs no data on the API side
(the API never loads Fashion-MNIST; only workers do) and works offline. Output:
``app/static/samples/fashion-mnist-test.png`` (a 10x10 grid of 28x28 grayscale images, row k
holding class k) and ``fashion-mnist-test.json`` (class names and each image's test-set index).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from models.data import CLASS_NAMES, load_fashion_mnist

PER_CLASS = 10
OUT = Path(__file__).resolve().parents[1] / "app" / "static" / "samples"


def main() -> None:
    data = load_fashion_mnist(sys.argv[1] if len(sys.argv) > 1 else None, download=False)
    images = data.test_images.numpy()  # (10000, 28, 28) uint8
    labels = data.test_labels.numpy()
    sheet = np.zeros((28 * len(CLASS_NAMES), 28 * PER_CLASS), dtype=np.uint8)
    indices: list[list[int]] = []
    for k in range(len(CLASS_NAMES)):
        chosen = np.flatnonzero(labels == k)[:PER_CLASS]
        indices.append([int(i) for i in chosen])
        for j, i in enumerate(chosen):
            sheet[28 * k:28 * (k + 1), 28 * j:28 * (j + 1)] = images[i]
    OUT.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet, mode="L").save(OUT / "fashion-mnist-test.png", optimize=True)
    meta = {
        "source": "Fashion-MNIST test set (t10k), Zalando Research, MIT licence: "
                  "https://github.com/zalandoresearch/fashion-mnist",
        "tile": 28, "per_class": PER_CLASS, "classes": list(CLASS_NAMES), "test_indices": indices,
    }
    (OUT / "fashion-mnist-test.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {OUT}/fashion-mnist-test.png and .json")


if __name__ == "__main__":
    main()
