"""The bnlenet command line: train, predict and inspect without any server; up starts the stack."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import types
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.threads import short_openmp_waits

# Before anything loads torch, whose OpenMP runtime reads its spin count once (models/threads.py).
short_openmp_waits()

from models.params import ParamField, params_of  # noqa: E402
from models.training import TrainConfig  # noqa: E402


def train_options() -> list[ParamField]:
    """The ``TrainConfig`` fields ``bnlenet train`` offers, as declared there."""
    return [f for f in params_of(TrainConfig) if f.param.cli]


def _add_train_option(parser: argparse.ArgumentParser, f: ParamField) -> None:
    """One ``--name`` option derived from a field's declaration: type, default, choices, help."""
    flag = "--" + f.name.replace("_", "-")
    help_text = (f.param.help + _CLI_HELP.get(f.name, "")).replace("%", "%%")
    if f.type is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                            help=f"{help_text} (default: %(default)s)")
        return
    kind = f.type
    if isinstance(kind, types.UnionType):  # e.g. str | None
        kind = next(t for t in kind.__args__ if t is not type(None))
    parser.add_argument(flag, type=kind, default=f.default, choices=f.param.choices,
                        help=f"{help_text} (default: %(default)s)")


_CHECKPOINT_HELP = ("a checkpoint: a file, an s3://bucket/key URL, or the id or alias of a model in CHECKPOINT_DIR "
                    "(the service's store: a directory or s3://bucket/prefix)")
# What an option means here beyond its declaration: the command line reads files too.
_CLI_HELP = {"init_model": "; here also " + _CHECKPOINT_HELP.replace("a checkpoint: ", "", 1),
             "dataset": "; here those of CHECKPOINT_DIR's store (bnlenet datasets list)"}


def _checkpoint_file(name: str, scratch: Path) -> tuple[Path, str]:
    """The local file and model id for a checkpoint named as ``_CHECKPOINT_HELP`` says (downloads go to ``scratch``)."""
    from bnlenet.checkpoint_storage import download_s3_url, is_s3_url
    from bnlenet.model_store import ModelStore, UnknownModel, valid_model_id
    from bnlenet.settings import get_settings

    if is_s3_url(name):
        path = download_s3_url(name, scratch)
        return path, path.name.removesuffix(".safetensors")
    path = Path(name)
    if path.is_file():
        return path, path.name.removesuffix(".safetensors")
    if not valid_model_id(name):
        raise ValueError(f"{name!r} is not a file, an s3:// URL or a model id")
    settings = get_settings()
    store = ModelStore.from_settings(settings)
    try:
        model_id = store.resolve(name)
        return store.local_checkpoint(model_id), model_id
    except UnknownModel:
        raise ValueError(f"{name!r} is not a file, and no model or alias in CHECKPOINT_DIR "
                         f"({store.location}) has that name") from None


def _starting_model(name: str, scratch: Path) -> tuple[str, dict[str, Any]]:
    """The parent id and state_dict of the model ``--init-model`` names (as ``_CHECKPOINT_HELP`` says):
    a model of the store is recorded by its id, a file by its name."""
    from bnlenet.model_store import valid_model_id
    from models.checkpoint import load_checkpoint

    path, model_id = _checkpoint_file(name, scratch)
    if not valid_model_id(model_id):
        raise ValueError(f"init_model {name!r}: the parent is recorded by the file's name, and {model_id!r} is "
                         "not a model id (letters, digits, '-' or '_'): rename the file")
    return model_id, load_checkpoint(path).model.state_dict()


def _int_in(low: int, high: int) -> Any:
    """An argparse type: a whole number from ``low`` to ``high`` (a usage error otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: use {low} to {high}")
        return value

    return parse


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnlenet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train in this process and write a checkpoint (no Redis needed)",
                       description="Train in this process and write a checkpoint (no Redis needed). "
                       "The options are TrainConfig's fields, with the same defaults and limits as POST /train.")
    for option in train_options():
        _add_train_option(t, option)
    t.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files, for --dataset fashion-mnist "
                   "(default: DATA_DIR or the usual places)")
    t.add_argument("--out", default=None,
                   help="checkpoint path or s3://bucket/key URL (default: a new model in CHECKPOINT_DIR, served by the API)")
    t.add_argument("--json", action="store_true", help="one JSON object per line: each epoch, then the result")

    p = sub.add_parser("predict", help="classify images with a checkpoint")
    p.add_argument("checkpoint", help=_CHECKPOINT_HELP)
    p.add_argument("images", type=Path, nargs="+", help="PNG, JPEG or any common format")
    p.add_argument("--json", action="store_true", help="one JSON object per image, with every probability")

    i = sub.add_parser("inspect", help="each BN layer's gamma, beta, running mean and running variance")
    i.add_argument("checkpoint", help=_CHECKPOINT_HELP)
    i.add_argument("--json", action="store_true")

    e = sub.add_parser("export", help="export a model as ONNX, a torch.export program (pt2) or safetensors",
                       description="Export a checkpoint in eval mode, as GET /models/{id}/export does.")
    e.add_argument("checkpoint", help=_CHECKPOINT_HELP)
    e.add_argument("--format", default="onnx", choices=_export_formats(), help="(default: %(default)s)")
    e.add_argument("--out", type=Path, default=None, help="where to write it (default: <model id>.<format> here)")

    u = sub.add_parser("up", help="start Redis (unless REDIS_URL is set), a Celery worker per GPU (or one on the CPU) and the API")
    u.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
    u.add_argument("--port", type=_int_in(1, 65535), default=8000, help="(default: %(default)s)")
    u.add_argument("--workers", type=_int_in(1, 512), default=None,
                   help="API worker processes (default: BNLENET_API_WORKERS, else one per core)")

    d = sub.add_parser("datasets", help="upload, list, show or delete the data sets of CHECKPOINT_DIR's store",
                       description="The data sets jobs train on, in the service's store (CHECKPOINT_DIR: a directory "
                       "or s3://bucket/prefix), as POST/GET/DELETE /datasets see them; no server needed.")
    ds = d.add_subparsers(dest="action", required=True)
    up = ds.add_parser("upload", help="validate and store a data set (a zip of class folders, IDX files in a zip, "
                       "or a MedMNIST-shaped .npz); prints its id and report")
    up.add_argument("file", type=Path)
    up.add_argument("--classes", default=None, help="class names of labels 0, 1, ... (comma-separated)")
    up.add_argument("--test-fraction", type=float, default=0.2, help="for one set the service splits "
                    "(default: %(default)s)")
    up.add_argument("--seed", type=int, default=0, help="of that split (default: %(default)s)")
    up.add_argument("--name", default=None, help="an alias for it")
    for action in ("list", "show", "delete"):
        a = ds.add_parser(action, help={"list": "every data set", "show": "one data set and its report",
                                        "delete": "delete an uploaded data set no job or model uses"}[action])
        if action != "list":
            a.add_argument("dataset", help="its id" + (" or an alias" if action == "show" else ""))
        a.add_argument("--json", action="store_true")
    up.add_argument("--json", action="store_true")

    w = sub.add_parser("watch", help="follow a job of a running service: a progress bar and one line per epoch",
                       description="Follow a job of a running service (GET /jobs/{id}/events) until it ends. "
                       "Exit status: 0 succeeded, 1 failed or cancelled, 2 no such job, refused or unreachable.")
    w.add_argument("job_id")
    w.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default: %(default)s)")
    w.add_argument("--token", default=None, help="API_TOKEN, for a service that protects reads (default: $API_TOKEN)")

    s = sub.add_parser("sweep", help="submit a sweep (many training jobs) to a running service and follow it",
                       description="Submit a sweep (POST /sweeps) from a JSON file, or from --param options, and "
                       "follow it to the end: a line per finished trial, then per setting the mean, std, min "
                       "and max of the served models' test accuracy (docs/sweeps.md). Exit status: 0 succeeded, "
                       "1 failed or cancelled, 2 refused or unreachable.")
    s.add_argument("file", nargs="?", default=None, help="FILE.json: the body of POST /sweeps")
    s.add_argument("--param", action="append", default=[], metavar="NAME=V1,V2|A..B",
                   help="a job parameter to sweep and its values (A..B: every whole number); repeat per parameter")
    s.add_argument("--base", action="append", default=[], metavar="NAME=VALUE",
                   help="a job parameter every trial shares; repeatable")
    s.add_argument("--method", choices=("grid", "random"), default="grid", help="(default: %(default)s)")
    s.add_argument("--max-trials", type=int, default=None, help="random: how many to draw; grid: a cap")
    s.add_argument("--seed", type=int, default=0, help="of the random draws (default: %(default)s)")
    s.add_argument("--early-stopping", choices=("median", "asha"), default=None,
                   help="stop trials that are behind (min_epochs 1; a FILE.json sets the rest)")
    s.add_argument("--name", default=None)
    s.add_argument("--no-follow", dest="follow", action="store_false", help="print the sweep's id and return")
    _service_options(s)

    ss = sub.add_parser("sweeps", help="list, show, cancel or delete the sweeps of a running service")
    ss.add_argument("action", choices=("list", "show", "cancel", "delete"))
    ss.add_argument("sweep_id", nargs="?", default=None)
    ss.add_argument("--json", action="store_true", help="the API's answer as JSON")
    _service_options(ss)
    return parser


def _service_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help="the service (default: $BNLENET_URL, else http://127.0.0.1:8000)")
    parser.add_argument("--token", default=None, help="API_TOKEN (default: $API_TOKEN)")


def _service(args: argparse.Namespace) -> tuple[str, str | None]:
    import os

    from bnlenet.settings import get_settings

    url = args.url or os.environ.get("BNLENET_URL") or "http://127.0.0.1:8000"
    return url, args.token or get_settings().API_TOKEN


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def _train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bnlenet.checkpoint_storage import is_s3_url, upload_s3_url
    from bnlenet.datasets.cache import DatasetCache
    from bnlenet.datasets.store import DatasetStore
    from bnlenet.model_store import ModelStore
    from bnlenet.settings import get_settings
    from models.checkpoint import save_checkpoint
    from models.data import load_fashion_mnist
    from models.training import EpochMetrics, Progress, train, training_metadata

    _check_out(args.out)  # before training: a model trained for hours must have somewhere to go
    with tempfile.TemporaryDirectory() as scratch:
        parent, init_state = _starting_model(args.init_model, Path(scratch)) if args.init_model else (None, None)
    config = TrainConfig(**{**{f.name: getattr(args, f.name) for f in train_options()}, "init_model": parent})
    settings = get_settings()
    if not config.threads:  # --threads wins, then TRAINING_THREADS, then the automatic count
        config = replace(config, threads=settings.TRAINING_THREADS)
    builtin = lambda: load_fashion_mnist(args.data_dir or settings.DATA_DIR, download=settings.DATA_DOWNLOAD)  # noqa: E731
    dataset, data = DatasetCache(DatasetStore.from_settings(settings), builtin).get(config.dataset)
    config = replace(config, dataset=dataset)  # recorded by its id
    bar = tqdm(total=config.epochs, unit="epoch", desc=f"train {config.variant}", file=sys.stderr,
               disable=not sys.stderr.isatty())

    def on_progress(p: Progress) -> None:
        bar.n = round(p.fraction * config.epochs, 3)
        bar.set_postfix(loss=f"{p.loss:.3f}", acc=f"{p.train_acc:.3f}", refresh=True)

    def on_epoch(m: EpochMetrics) -> None:
        line = {k: getattr(m, k) for k in ("epoch", "loss", "train_acc", "test_acc", "examples_per_sec")}
        if args.json:
            _emit(line)
        else:
            bar.write(f"epoch {m.epoch}: loss {m.loss:.3f}, train acc {m.train_acc:.3f}, "
                      f"test acc {m.test_acc:.3f}, {m.examples_per_sec:,.0f} examples/sec")

    result = train(config, data, on_progress=on_progress, on_epoch=on_epoch, init_state=init_state)
    bar.close()
    metadata = training_metadata(config, result, data.classes)
    stamp = f"{datetime.now(UTC):%Y%m%d-%H%M%S-%f}"
    try:
        if args.out is not None and is_s3_url(args.out):
            with tempfile.TemporaryDirectory() as scratch:
                local = save_checkpoint(Path(scratch) / "model.safetensors", result.model, metadata)
                path = upload_s3_url(local, args.out)
        elif args.out is not None:
            path = str(save_checkpoint(args.out, result.model, metadata))
        else:
            path = ModelStore.from_settings(settings).publish(f"cli-{config.variant}-{stamp}", result.model, metadata)
    except Exception as exc:  # the store failed after the run: the trained model is kept, never lost
        kept = _keep_unsaved(result.model, metadata, stamp)
        raise OSError(f"could not store the checkpoint ({exc}); the trained model is kept in {kept}: "
                      "copy it where it belongs (bnlenet inspect reads it)") from exc
    summary = {"checkpoint": str(path), "variant": config.variant, "precise_bn": config.precise_bn,
               "final_test_acc": result.final_test_acc, "threads": metadata["engine"]["threads"],
               "thread_schedule": metadata["engine"]["thread_schedule"]}
    if args.json:
        _emit(summary)
    else:
        stats = "precise BN statistics" if config.precise_bn else "moving-average statistics"
        print(f"checkpoint: {path} (final test acc {result.final_test_acc:.3f}, as stored: {stats})")
    return 0


def _check_out(out: str | None) -> None:
    """Refuse a local ``--out`` that cannot be written, before any training."""
    from bnlenet.checkpoint_storage import is_s3_url

    if out is None or is_s3_url(out):
        return
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"--out {out} is a directory: name the checkpoint file, as {path / 'model.safetensors'}")
    if not path.parent.is_dir():
        raise ValueError(f"--out {out}: the folder {path.parent} does not exist; create it first")
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"--out {out}: the folder {path.parent} is not writable")


def _keep_unsaved(model: Any, metadata: dict[str, Any], stamp: str) -> Path:
    """The trained model written here (else to the temporary folder) when its destination failed."""
    from models.checkpoint import save_checkpoint

    name = f"bnlenet-unsaved-{stamp}.safetensors"
    try:
        return save_checkpoint(Path.cwd() / name, model, metadata)
    except OSError:
        return save_checkpoint(Path(tempfile.gettempdir()) / name, model, metadata)


def _predict(args: argparse.Namespace) -> int:
    from models.checkpoint import class_names, load_checkpoint
    from models.inference import predict_probabilities
    from models.preprocess import image_to_tensor

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = load_checkpoint(_checkpoint_file(args.checkpoint, Path(scratch))[0])
    classes = class_names(checkpoint.metadata)  # as the service names them
    for image in args.images:
        probs = predict_probabilities(checkpoint.model, image_to_tensor(image.read_bytes()))[0]
        index = int(probs.argmax())
        name = classes[index] if index < len(classes) else str(index)
        if args.json:
            _emit({"image": str(image), "class_index": index, "class_name": name,
                   "probability": float(probs[index]), "probabilities": probs.tolist()})
        else:
            print(f"{image}: {name} (class {index}, p={float(probs[index]):.4f})")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from models.batchnorm import batchnorm_report
    from models.checkpoint import load_checkpoint

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = load_checkpoint(_checkpoint_file(args.checkpoint, Path(scratch))[0])
    stats = ("gamma", "beta", "running_mean", "running_var")
    layers = {str(layer["name"]): {k: layer[k] for k in stats} for layer in batchnorm_report(checkpoint.model)}
    if args.json:
        _emit({"variant": checkpoint.metadata["variant"], "layers": layers})
        return 0
    print(f"{args.checkpoint}: {checkpoint.metadata['variant']} LeNet")
    for name, state in layers.items():
        print(f"layer {name} ({len(state['gamma'])} channels)")
        for key, values in state.items():
            shown = ", ".join(f"{v:.4f}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
            print(f"  {key:<12} [{shown}]")
    return 0


def _export_formats() -> tuple[str, ...]:
    from models.export import EXPORT_FORMATS

    return EXPORT_FORMATS


def _export(args: argparse.Namespace) -> int:
    from models.export import export_checkpoint, export_filename

    with tempfile.TemporaryDirectory() as scratch:
        source, model_id = _checkpoint_file(args.checkpoint, Path(scratch))
        out = args.out if args.out is not None else Path(export_filename(model_id, args.format))
        path = export_checkpoint(source, args.format, out, model_id=model_id)
    print(f"{args.format}: {path}")
    return 0


def _up(args: argparse.Namespace) -> int:
    from bnlenet.local.stack import run_stack
    from bnlenet.settings import get_settings

    return run_stack(get_settings(), host=args.host, port=args.port, workers=args.workers)


def _datasets(args: argparse.Namespace) -> int:
    from bnlenet.datasets import IngestLimits, ingest
    from bnlenet.datasets.store import DatasetStore
    from bnlenet.settings import get_settings

    settings = get_settings()
    store = DatasetStore.from_settings(settings)
    if args.action == "upload":
        classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
        prepared = ingest(args.file, args.file.name, classes=classes, test_fraction=args.test_fraction, seed=args.seed,
                          limits=IngestLimits(max_upload_bytes=settings.DATASET_MAX_UPLOAD_BYTES))
        info, created = store.add(prepared, name=args.name)
        shown: Any = {**info, "created": created}
    elif args.action == "list":
        shown = store.list()
    elif args.action == "show":
        shown = store.info(args.dataset)
    else:
        shown = _delete_dataset(store, args.dataset, settings)
    if args.json:
        _emit(shown if isinstance(shown, dict) else {"data": shown, "count": len(shown)})
    elif args.action == "list":
        for info in shown:
            print(f"{info['id']}  {','.join(info['aliases']) or '-':<16} {info['num_classes']:>4} classes "
                  f"{info['train_size']:>7} train {info['test_size']:>6} test  {info.get('format') or ''}")
    elif args.action == "delete":
        print(f"deleted {shown['id']}")
    else:
        report = shown["report"]
        print(f"{shown['id']} ({', '.join(shown['aliases']) or 'no alias'}): {shown['num_classes']} classes, "
              f"{shown['train_size']} train and {shown['test_size']} test images, {shown.get('format')}"
              + (" (already stored)" if shown.get("created") is False else ""))
        print("classes: " + ", ".join(shown["classes"]))
        for warning in report.get("warnings", []):
            print(f"warning: {warning}")
    return 0


def _delete_dataset(store: Any, dataset: str, settings: Any) -> dict[str, Any]:
    """Delete as ``DELETE /datasets/{id}`` does: refused while a queued or running job or a model uses it."""
    from bnlenet.datasets.store import DatasetInUse
    from bnlenet.datasets.usage import jobs_using, models_using
    from bnlenet.jobs import JobStore
    from bnlenet.model_store import ModelStore

    jobs = jobs_using(JobStore.from_url(settings.REDIS_URL, timeout=settings.REDIS_TIMEOUT_S), dataset)
    models = models_using(ModelStore.from_settings(settings), dataset)
    if jobs or models:
        raise DatasetInUse(f"dataset {dataset!r} is used by " + " and ".join(
            part for part in (f"job(s) {', '.join(jobs)}" if jobs else "",
                              f"model(s) {', '.join(models)}" if models else "") if part))
    store.delete(dataset)
    return {"id": dataset}


def _watch(args: argparse.Namespace) -> int:
    from bnlenet.local.watch import WatchError, watch_job
    from bnlenet.settings import get_settings

    try:
        record = watch_job(args.url, args.job_id, token=args.token or get_settings().API_TOKEN)
    except WatchError as exc:
        print(f"bnlenet watch: error: {exc}", file=sys.stderr)
        return 2
    return 0 if record["status"] == "succeeded" else 1


def _sweep(args: argparse.Namespace) -> int:
    from bnlenet.local.sweep_cli import follow_sweep, reachable, submit, sweep_request

    url, token = _service(args)
    body = sweep_request(args.file, args.param, args.base, method=args.method, max_trials=args.max_trials,
                         seed=args.seed, early_stopping=args.early_stopping, name=args.name)
    sweep = reachable(lambda: submit(url, body, token=token), url)
    print(f"sweep {sweep['id']}: {len(sweep['trials'])} trial(s) queued", flush=True)
    if not args.follow:
        return 0
    return 0 if reachable(lambda: follow_sweep(url, sweep["id"], token=token), url)["status"] == "succeeded" else 1


def _sweeps(args: argparse.Namespace) -> int:
    from bnlenet.local.sweep_cli import reachable, sweeps_command

    url, token = _service(args)
    return reachable(lambda: sweeps_command(args.action, url, args.sweep_id, token=token, as_json=args.json), url)


# Commands that start no server and leave nothing running when they return.
ONE_SHOT_COMMANDS = frozenset({"train", "predict", "inspect", "export"})


def main(argv: list[str] | None = None) -> int:
    """Run one command in this interpreter and return its exit status."""
    return _dispatch(_build_parser().parse_args(argv))


def run() -> None:
    """The ``bnlenet`` program: ``main``, then the process ends.

    After a one-shot command the interpreter is not torn down: unloading torch's modules takes
    about 0.35 s on two cores, a tenth of a short ``bnlenet predict`` and more than a whole
    evaluation of the test set in ``bnlenet train``. Output is flushed first, and a thread
    still running (none is, after these commands) gets the ordinary exit instead.
    """
    args = _build_parser().parse_args()
    code = _dispatch(args)
    if args.command in ONE_SHOT_COMMANDS and not _threads_still_running():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _threads_still_running() -> bool:
    """Whether a thread the interpreter would wait for at exit is still alive (daemon threads it would not)."""
    return any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate())


def _dispatch(args: argparse.Namespace) -> int:
    from bnlenet.datasets import DatasetRejected
    from bnlenet.datasets.store import DatasetInUse, UnknownDataset
    from bnlenet.jobs import StoreUnavailable
    from bnlenet.local.sweep_cli import SweepCliError
    from bnlenet.model_store import AliasConflict, ModelUnusable, ObjectStoreUnavailable
    from models.checkpoint import CheckpointError
    from models.data import DataError
    from models.preprocess import ImageError
    from models.training import TrainingCancelled, TrainingDiverged

    handlers = {"train": _train, "predict": _predict, "inspect": _inspect, "export": _export, "up": _up,
                "watch": _watch, "datasets": _datasets, "sweep": _sweep, "sweeps": _sweeps}
    try:
        return handlers[args.command](args)
    except (CheckpointError, DataError, ImageError, TrainingDiverged, TrainingCancelled, ValueError, OSError,
            ModelUnusable, ObjectStoreUnavailable, UnknownDataset, DatasetInUse, AliasConflict,
            StoreUnavailable, SweepCliError) as exc:
        problems = exc.problems if isinstance(exc, DatasetRejected) and len(exc.problems) > 1 else []
        print(f"bnlenet {args.command}: error: {exc if not problems else 'the upload was refused:'}", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    run()
