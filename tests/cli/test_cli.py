"""The ``bnlenet`` command line, run as a user runs it: a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.checkpoint import load_checkpoint, save_checkpoint
from models.data import CLASS_NAMES, load_fashion_mnist
from models.inference import predict_probabilities
from models.preprocess import image_to_tensor
from models.threads import usable_cores  # the function itself: conftest patches the module's name


def _user_env(*without: str) -> dict[str, str]:
    """This environment as a user's shell has it: without PYTHONUNBUFFERED (this machine's shell sets it), so
    output into a pipe is block-buffered and output the program does not flush before it exits is lost here too;
    and without the variables named."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", *without)}


def _bnlenet(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bnlenet.local.cli", *args],
        capture_output=True, text=True, timeout=300, env={**_user_env(), **(env or {})}, cwd=cwd,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> tuple[Path, list[dict[str, object]]]:
    out = tmp_path_factory.mktemp("cli") / "model.safetensors"
    proc = _bnlenet("train", "--variant", "scratch", "--epochs", "2", "--batch-size", "32",
                    "--precise-bn", "--json", "--out", str(out), "--data-dir", str(synthetic_data_dir),
                    env={"TRAINING_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    return out, [json.loads(line) for line in proc.stdout.splitlines()]


def test_cli_train_prints_one_json_object_per_epoch_and_the_checkpoint(trained: tuple[Path, list[dict[str, object]]]) -> None:
    out, lines = trained
    assert [line.get("epoch") for line in lines[:2]] == [1, 2]
    for line in lines[:2]:
        assert set(line) == {"epoch", "loss", "train_acc", "test_acc", "examples_per_sec"}
    assert lines[-1]["checkpoint"] == str(out)
    meta = load_checkpoint(out).metadata
    assert lines[-1]["final_test_acc"] == meta["final_test_acc"] and 0 <= meta["final_test_acc"] <= 1
    assert meta["variant"] == "scratch" and meta["hyperparameters"]["precise_bn"] is True
    assert [h["epoch"] for h in meta["history"]] == [1, 2] and meta["classes"][0] == "T-shirt/top"
    assert meta["engine"]["threads"] == 1  # TRAINING_THREADS


def test_cli_train_threads_option_wins_over_the_setting(tmp_path: Path, synthetic_data_dir: Path) -> None:
    out = tmp_path / "model.safetensors"
    proc = _bnlenet("train", "--epochs", "1", "--batch-size", "128", "--threads", "2", "--json", "--out", str(out),
                    "--data-dir", str(synthetic_data_dir), env={"TRAINING_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert load_checkpoint(out).metadata["engine"]["threads"] == 2


def test_cli_train_on_the_automatic_count_records_the_schedule_it_ran(tmp_path: Path, synthetic_data_dir: Path) -> None:
    out = tmp_path / "model.safetensors"
    env = _user_env("TRAINING_THREADS", "OMP_NUM_THREADS")
    proc = subprocess.run(
        [sys.executable, "-m", "bnlenet.local.cli", "train", "--epochs", "1", "--batch-size", "32", "--json",
         "--out", str(out), "--data-dir", str(synthetic_data_dir)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    engine = load_checkpoint(out).metadata["engine"]
    assert summary["threads"] == engine["threads"] == usable_cores()  # affinity and quota, not os.cpu_count()
    assert summary["thread_schedule"] == engine["thread_schedule"]
    assert engine["thread_schedule"][0] == [0, engine["threads"]]
    if engine["threads"] > 1:  # the tuner's start: one step on every core, then one thread
        assert engine["thread_schedule"][1] == [1, 1]


def test_cli_train_default_output_is_a_served_model(tmp_path: Path, synthetic_data_dir: Path) -> None:
    proc = _bnlenet("train", "--variant", "builtin", "--epochs", "1", "--batch-size", "64", "--json",
                    env={"DATA_DIR": str(synthetic_data_dir), "CHECKPOINT_DIR": str(tmp_path / "ck")})
    assert proc.returncode == 0, proc.stderr
    path = Path(json.loads(proc.stdout.splitlines()[-1])["checkpoint"])
    assert path.parent == tmp_path / "ck" and path.name.startswith("cli-builtin-")


def test_cli_train_refuses_an_out_it_cannot_write_before_training(tmp_path: Path, synthetic_data_dir: Path) -> None:
    (tmp_path / "a-folder").mkdir()
    for out, why in ((tmp_path / "a-folder", "is a directory"), (tmp_path / "no" / "such" / "m.safetensors",
                                                                   "does not exist")):
        proc = _bnlenet("train", "--epochs", "1", "--batch-size", "64", "--json", "--out", str(out),
                        "--data-dir", str(synthetic_data_dir))
        assert proc.returncode == 2 and why in proc.stderr, proc.stderr
        assert '"epoch"' not in proc.stdout  # refused before a single epoch was trained


def test_cli_train_keeps_the_model_when_storing_it_fails(tmp_path: Path, synthetic_data_dir: Path) -> None:
    # An object store that cannot be reached, found out only once training is done: the model is kept here.
    proc = _bnlenet("train", "--epochs", "1", "--batch-size", "64", "--out", "s3://bucket/m.safetensors",
                    "--data-dir", str(synthetic_data_dir), cwd=tmp_path,
                    env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
                         "AWS_SECRET_ACCESS_KEY": "x", "OBJECT_STORE_RETRY_S": "0"})
    assert proc.returncode == 2, proc.stderr
    kept = list(tmp_path.glob("bnlenet-unsaved-*.safetensors"))
    assert len(kept) == 1 and str(kept[0].name) in proc.stderr, proc.stderr
    assert load_checkpoint(kept[0]).metadata["hyperparameters"]["epochs"] == 1


def test_cli_predict_matches_the_model(trained: tuple[Path, list[dict[str, object]]], synthetic_data_dir: Path, tmp_path: Path) -> None:
    out, _ = trained
    data = load_fashion_mnist(synthetic_data_dir, download=False)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(data.test_images[i].numpy()).save(paths[-1])
    proc = _bnlenet("predict", str(out), *map(str, paths), "--json")
    assert proc.returncode == 0, proc.stderr
    model = load_checkpoint(out).model
    for path, line in zip(paths, proc.stdout.splitlines(), strict=True):
        got = json.loads(line)
        expected = predict_probabilities(model, image_to_tensor(path.read_bytes()))[0]
        assert got["class_index"] == int(expected.argmax())
        torch.testing.assert_close(torch.tensor(got["probabilities"]), expected, rtol=0, atol=1e-6)
    text = _bnlenet("predict", str(out), str(paths[0]))
    assert text.returncode == 0 and f"{paths[0]}: " in text.stdout and "p=" in text.stdout


def test_cli_predict_names_the_class_as_the_service_does_for_a_checkpoint_without_classes(
        trained: tuple[Path, list[dict[str, object]]], synthetic_data_dir: Path, tmp_path: Path) -> None:
    # Written before checkpoints stored their classes: Fashion-MNIST's names, as /predict answers.
    out, _ = trained
    checkpoint = load_checkpoint(out)
    old = save_checkpoint(tmp_path / "old.safetensors", checkpoint.model,
                          {k: v for k, v in checkpoint.metadata.items() if k not in ("classes", "checksum")})
    image = tmp_path / "0.png"
    Image.fromarray(load_fashion_mnist(synthetic_data_dir, download=False).test_images[0].numpy()).save(image)
    proc = _bnlenet("predict", str(old), str(image), "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["class_name"] == CLASS_NAMES[got["class_index"]], got


def test_cli_inspect_shows_every_bn_layer(trained: tuple[Path, list[dict[str, object]]]) -> None:
    out, _ = trained
    proc = _bnlenet("inspect", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    layers = json.loads(proc.stdout)["layers"]
    assert list(layers) == ["1", "5", "10", "13"]
    assert {k: len(v) for k, v in layers["1"].items()} == {"gamma": 6, "beta": 6, "running_mean": 6, "running_var": 6}
    state = load_checkpoint(out).model[1]
    assert np.allclose(layers["1"]["running_var"], state.moving_var.reshape(-1).numpy())
    assert "running_mean" in _bnlenet("inspect", str(out)).stdout


def test_the_installed_bnlenet_program_prints_everything_and_exits_with_the_command_status(
        trained: tuple[Path, list[dict[str, object]]], tmp_path: Path) -> None:
    # The console script pyproject.toml installs (what a user types), not ``python -m``: it ends the process
    # without tearing the interpreter down, so its output must have been flushed and its status kept.
    program = Path(sys.executable).with_name("bnlenet")
    assert program.exists(), "scripts/setup.sh installs the bnlenet program beside the interpreter"
    env = _user_env()
    out, _ = trained
    proc = subprocess.run([str(program), "inspect", str(out)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{out}: scratch LeNet") and proc.stdout.count("running_mean") == 4, proc.stdout
    missing = tmp_path / "missing.safetensors"
    proc = subprocess.run([str(program), "inspect", str(missing)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "bnlenet inspect: error:" in proc.stderr and not proc.stdout, proc


def test_cli_help_shows_defaults_and_no_markup(capsys: pytest.CaptureFixture[str]) -> None:
    from bnlenet.local.cli import main

    for argv in (["--help"], ["train", "--help"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text
    assert "--no-precise-bn" in text and "(default: True)" in text
    assert "(default: 256)" in text and "(default: 1.0)" in text


def test_cli_errors_are_one_clear_line(tmp_path: Path) -> None:
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    proc = _bnlenet("predict", str(bad), str(not_image))
    assert proc.returncode == 2 and "bnlenet predict: error:" in proc.stderr and "Traceback" not in proc.stderr
    proc = _bnlenet("train", "--variant", "scratch", "--batch-size", "1")
    assert proc.returncode == 2 and "batch_size must be at least 2" in proc.stderr
    proc = _bnlenet("train", "--variant", "fancy")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_cli_export_by_path_and_by_model_id(trained: tuple[Path, list[dict[str, object]]], tmp_path: Path) -> None:
    import onnxruntime as ort

    from models.export import INPUT_NAME, OUTPUT_NAME

    checkpoint, _ = trained
    out = tmp_path / "m.onnx"
    proc = _bnlenet("export", str(checkpoint), "--format", "onnx", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    x = torch.rand(3, 1, 28, 28)
    expected = predict_probabilities(load_checkpoint(checkpoint).model, x).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0], expected, atol=1e-5)

    models = tmp_path / "checkpoints"
    models.mkdir()
    here = {"CHECKPOINT_DIR": str(models), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    (models / "my-model.safetensors").write_bytes(checkpoint.read_bytes())
    proc = _bnlenet("export", "my-model", "--format", "safetensors", env=here, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "my-model.safetensors").read_bytes() == checkpoint.read_bytes()

    proc = _bnlenet("export", "no-such-model", env=here, cwd=tmp_path)
    assert proc.returncode == 2 and "bnlenet export: error:" in proc.stderr and "Traceback" not in proc.stderr
    proc = _bnlenet("export", str(checkpoint), "--format", "torchscript")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


@pytest.mark.s3
def test_cli_trains_to_and_reads_from_s3(s3_url: str, tmp_path: Path, synthetic_data_dir: Path) -> None:
    from bnlenet.checkpoint_storage import S3Storage, download_s3_url
    from bnlenet.model_store import ModelStore

    url = f"{s3_url}/elsewhere/model.safetensors"
    proc = _bnlenet("train", "--epochs", "1", "--batch-size", "64", "--json", "--out", url,
                    "--data-dir", str(synthetic_data_dir))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["checkpoint"] == url
    image = tmp_path / "x.png"
    Image.fromarray(np.full((28, 28), 200, dtype=np.uint8)).save(image)
    by_url = _bnlenet("predict", url, str(image), "--json")
    assert by_url.returncode == 0, by_url.stderr

    # The same model in a service's store, named by its id and by an alias; nothing shared but the bucket.
    store = ModelStore(S3Storage(s3_url, tmp_path / "service-cache"))
    checkpoint = load_checkpoint(download_s3_url(url, tmp_path / "dl"))
    store.publish("served", checkpoint.model, checkpoint.metadata)
    store.set_alias("production", "served")
    env = {"CHECKPOINT_DIR": s3_url, "MODEL_CACHE_DIR": str(tmp_path / "cli-cache")}
    for name in ("served", "production"):
        by_name = _bnlenet("predict", name, str(image), "--json", env=env)
        assert by_name.returncode == 0, by_name.stderr
        np.testing.assert_allclose(json.loads(by_name.stdout)["probabilities"],
                                   json.loads(by_url.stdout)["probabilities"], atol=1e-6)
    exported = _bnlenet("export", "production", "--format", "safetensors", "--out", str(tmp_path / "p.safetensors"),
                        env=env)
    assert exported.returncode == 0, exported.stderr
    assert load_checkpoint(tmp_path / "p.safetensors").metadata["model_id"] == "served"
    missing = _bnlenet("inspect", "nope", env=env)
    assert missing.returncode == 2 and "no model or alias" in missing.stderr



def test_cli_train_from_a_file_and_from_a_model_id_records_the_parent(
        trained: tuple[Path, list[dict[str, object]]], tmp_path: Path, synthetic_data_dir: Path) -> None:
    parent_file, _ = trained
    child = tmp_path / "child.safetensors"
    small = ["--epochs", "1", "--batch-size", "64", "--json", "--data-dir", str(synthetic_data_dir)]
    proc = _bnlenet("train", "--variant", "scratch", "--init-model", str(parent_file), "--out", str(child), *small)
    assert proc.returncode == 0, proc.stderr
    meta = load_checkpoint(child).metadata
    assert meta["parent"] == "model" and meta["hyperparameters"]["init_model"] == "model"  # a file: its name

    store = {"CHECKPOINT_DIR": str(tmp_path / "ck")}
    proc = _bnlenet("train", "--variant", "scratch", "--init-model", str(child), *small, env=store)
    assert proc.returncode == 0, proc.stderr
    published = Path(json.loads(proc.stdout.splitlines()[-1])["checkpoint"])
    model_id = published.name.removesuffix(".safetensors")
    proc = _bnlenet("train", "--variant", "scratch", "--init-model", model_id, *small, env=store)
    assert proc.returncode == 0, proc.stderr
    grandchild = Path(json.loads(proc.stdout.splitlines()[-1])["checkpoint"])
    assert load_checkpoint(grandchild).metadata["parent"] == model_id  # a model of the store: its id


def test_cli_train_from_an_unknown_or_other_variant_model_is_one_clear_line(
        trained: tuple[Path, list[dict[str, object]]], tmp_path: Path) -> None:
    parent_file, _ = trained
    proc = _bnlenet("train", "--init-model", "no-such-model", env={"CHECKPOINT_DIR": str(tmp_path / "ck")})
    assert proc.returncode == 2 and "no-such-model" in proc.stderr and "Traceback" not in proc.stderr
    proc = _bnlenet("train", "--variant", "builtin", "--init-model", str(parent_file))
    assert proc.returncode == 2 and "init_model" in proc.stderr and "scratch" in proc.stderr, proc.stderr


@pytest.mark.parametrize("argv", [["up", "--port", "99999"], ["up", "--port", "0"], ["up", "--workers", "-3"],
                                  ["up", "--workers", "0"]])
def test_cli_up_refuses_a_port_or_a_worker_count_out_of_range(argv: list[str], capsys) -> None:
    from bnlenet.local.cli import _build_parser

    with pytest.raises(SystemExit) as exit_:  # argparse's usage error: nothing is started
        _build_parser().parse_args(argv)
    assert exit_.value.code == 2 and argv[1] in capsys.readouterr().err
