"""Quality: test accuracy of the model a job stores with the defaults, over seeds, both variants.

The defaults (``TrainConfig()``: the chapter's 10 epochs, SGD lr 1.0, batch 256, with the
weights of the last 5 epochs averaged and precise BN on) for both variants and five seeds.
One training run gives every row: the test accuracy with the last epoch's weights and the
moving averages it ended with (what the chapter's recipe alone stores), the accuracy of the
model as stored and served (``final_test_acc``: the averaged weights, Izmailov et al. 2018,
with precise BN over the default 4,096 training images, Wu and Johnson 2021), and, for
comparison, precise BN averaged over all 60,000 training images.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

from bench.data import fashion_mnist
from models.averaging import recompute_bn_statistics
from models.inference import evaluate_accuracy
from models.training import TrainConfig, train

TITLE = "Quality: test accuracy of the stored model over seeds, defaults"
CHAPTER_REPORTED = {"scratch": 0.801, "builtin": 0.869}
TARGET_MEAN = 0.885
TARGET_EACH = 0.875
NOTES = (
    f"Target: with the defaults, mean test accuracy >= {TARGET_MEAN} and every seed >= {TARGET_EACH}, "
    "for both variants (the `stored model` rows: what a job or `bnlenet train` stores and serves, "
    "`final_test_acc`). `moving averages` is the same run's last-epoch model with its moving averages "
    "(`precise_bn: false` stores that: the chapter's recipe); `precise BN, all 60,000` recomputes the statistics over the whole training set "
    "instead of the default 4,096 images. `chapter` is the test accuracy the chapter reports for one "
    "run on a GPU."
)
LABELS = ("moving averages", "stored model (last 5 epochs averaged, precise BN over 4,096 images)",
          "averaged, precise BN over all 60,000 images")


def run(quick: bool) -> list[dict[str, Any]]:
    data = fashion_mnist()
    epochs, seeds = (1, (0, 1)) if quick else (TrainConfig.epochs, (0, 1, 2, 3, 4))
    rows: list[dict[str, Any]] = []
    for variant in ("scratch", "builtin"):
        accs: dict[str, list[float]] = {label: [] for label in LABELS}
        for seed in seeds:
            config = TrainConfig(variant=variant, epochs=epochs, seed=seed, progress_every=50)
            result = train(config, data)
            assert result.final_test_acc is not None
            accs[LABELS[0]].append(result.history[-1].test_acc)
            accs[LABELS[1]].append(result.final_test_acc)
            images = data.train_images.to(result.device)
            recompute_bn_statistics(result.model, images, batch_size=config.batch_size,
                                    num_images=len(images), seed=seed)
            accs[LABELS[2]].append(evaluate_accuracy(result.model, data.test_images.to(result.device),
                                                     data.test_labels.to(result.device)))
            print(f"quality: {variant} seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in accs.items()),
                  file=sys.stderr, flush=True)  # progress: a full run takes a while on a CPU
        for label, values in accs.items():
            mean = statistics.fmean(values)
            met = mean >= TARGET_MEAN and min(values) >= TARGET_EACH
            rows.append({
                "variant": variant, "BN statistics": label, "epochs": epochs, "seeds": len(values),
                "mean": f"{mean:.4f}", "min": f"{min(values):.4f}", "max": f"{max(values):.4f}",
                "spread": f"{max(values) - min(values):.4f}",
                "per seed": ", ".join(f"{a:.4f}" for a in values),
                "chapter": CHAPTER_REPORTED[variant],
                "target met": "yes" if met else "no",
            })
    return rows
