"""What saving the training state costs, against an epoch's time: to a directory and to S3.

One training run on Fashion-MNIST (the chapter's batch 256, precise BN and weight averaging on,
so the state carries the weight-average sums too) whose ``on_state`` saves every epoch's state
both ways, the order alternating: into a local directory (written, fsynced and renamed) and to a
real S3 server (SeaweedFS's ``weed mini`` on 127.0.0.1) in one PUT. The cost of an epoch's save is
the state's capture (copies to the CPU, timed beside), its serialization and the write; it is set
against the same run's epochs, so the ratios are measured side by side on a loaded machine.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.data import fashion_mnist

TITLE = "Saving the training state each epoch, against the epoch's time"
NOTES = (
    "Per epoch: \"epoch s\" is the epoch's training time (models.training's EpochMetrics.seconds); each save "
    "is the capture (state_dict, optimizer, generators and average sums copied to the CPU) plus "
    "``TrainingStates.save`` (safetensors serialization and the write; the lease check that precedes it in a "
    "worker is one Redis round trip, not included). Ratios are medians over the run's epochs, each save set "
    "against its own epoch. The worker saves once per ``checkpoint_every`` epochs (default 1)."
)


def run(quick: bool = False) -> list[dict[str, Any]]:
    import torch

    from bnlenet.checkpoint_storage import LocalStorage, S3Storage
    from bnlenet.local.s3_server import S3Server
    from bnlenet.training_states import TrainingStates
    from models.data import FashionMNIST
    from models.train_state import TrainingState, capture_state, state_to_bytes
    from models.training import TrainConfig, train

    data = fashion_mnist()
    if quick:
        data = FashionMNIST(data.train_images[:6000], data.train_labels[:6000], data.test_images[:1000],
                            data.test_labels[:1000], data.classes)
    epochs = 2 if quick else 4
    config = TrainConfig(epochs=epochs, swa_epochs=2, device="cpu")  # full: the state carries the average's sums
    with tempfile.TemporaryDirectory() as tmp, S3Server(Path(tmp) / "s3") as server:
        local = TrainingStates(LocalStorage(Path(tmp) / "models"))
        import boto3  # noqa: F401  (imported before timing)

        from bnlenet.checkpoint_storage import s3_client

        client = s3_client(endpoint_url=server.endpoint_url, credentials=(server.access_key, server.secret_key))
        s3 = TrainingStates(S3Storage(f"s3://{server.bucket}/bench", Path(tmp) / "cache", client=client))
        s3.save("warm", 0, {}, _tiny_state())  # the connection and bucket, before anything is timed
        saves: dict[str, list[float]] = {"directory": [], "S3": []}
        sizes: list[int] = []

        def on_state(state: TrainingState) -> None:
            order = list(saves) if state.epoch % 2 else list(reversed(saves))
            sizes.append(len(state_to_bytes(state)))
            for where in order:
                states = local if where == "directory" else s3
                started = time.perf_counter()
                states.save("bench-job", 1, config.hyperparameters(), state)
                saves[where].append(time.perf_counter() - started)

        result = train(config, data, on_state=on_state)

        # The capture, which train() does before on_state: timed on the trained model.
        model = result.model
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
        from models.averaging import WeightAverage

        average = WeightAverage(model)
        captures = []
        for _ in range(20):
            started = time.perf_counter()
            capture_state(1, model, optimizer, torch.Generator(), average, [], torch.device("cpu"))
            captures.append(time.perf_counter() - started)
    capture = statistics.median(captures)
    epoch_s = [m.seconds for m in result.history]
    rows = []
    for where, times in saves.items():
        ratios = [(capture + t) / e for t, e in zip(times, epoch_s, strict=True)]
        rows.append({
            "store": where, "epochs": epochs, "state MB": sizes[0] / 1e6, "epoch s (median)": statistics.median(epoch_s),
            "capture ms": capture * 1e3, "save ms (median)": statistics.median(times) * 1e3,
            "save ms (max)": max(times) * 1e3, "cost / epoch (median)": f"{statistics.median(ratios):.2%}",
            "cost / epoch (max)": f"{max(ratios):.2%}",
        })
    return rows


def _tiny_state() -> Any:
    import torch

    from models.train_state import TrainingState

    return TrainingState(epoch=0, model={"w": torch.zeros(1)}, optimizer={"state": {}, "param_groups": []}, rng={},
                         average_sums=None, average_count=0)
