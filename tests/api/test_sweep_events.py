"""GET /sweeps/{id}/events over real HTTP: the trials' epochs and statuses, the sweep after each, until it ends."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from bnlenet.jobs import JobStore
from bnlenet.settings import Settings
from bnlenet.sweeps.spec import SweepLimits, parse_spec
from bnlenet.sweeps.store import SweepStore
from tests.api.test_events import METRICS, parse, progress, serve, store  # noqa: F401  # fixtures shared with a job's events

pytestmark = pytest.mark.integration


def _sweep(jobs: JobStore) -> tuple[str, list[str]]:
    spec = parse_spec({"parameters": {"seed": {"values": [0, 1]}}, "base": {"epochs": 2}},
                      SweepLimits.from_settings(Settings()))
    record, _ = SweepStore(jobs).create(spec)
    return record["sweep_id"], [t["job_id"] for t in record["trials"]]


def _run_trials(jobs: JobStore, ids: list[str]) -> threading.Thread:
    def run() -> None:
        for job_id in ids:
            time.sleep(0.2)
            assert jobs.claim(job_id, worker="w@h", pid=1, task_id="t", max_attempts=3, stale_after=30).run
            for epoch in (1, 2):
                time.sleep(0.05)
                jobs.add_epoch(job_id, worker="w@h", attempt=1, metrics={**METRICS, "epoch": epoch},
                                progress=progress(4, epoch))
            jobs.finish(job_id, "succeeded", worker="w@h", attempt=1, model_id=job_id, final_test_acc=0.5)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _read(url: str, sweep_id: str, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    with httpx.stream("GET", f"{url}/sweeps/{sweep_id}/events", headers=headers, timeout=20) as r:
        assert r.status_code == 200, r.read()
        return [e for e in parse(r.iter_lines()) if "comment" not in e]


def test_sweep_events_follow_every_trial_until_the_sweep_ends(serve, store: JobStore) -> None:  # noqa: F811
    url, _ = serve()
    sweep_id, ids = _sweep(store)
    writer = _run_trials(store, ids)
    events = _read(url, sweep_id)
    writer.join()
    assert events[0]["event"] == "sweep" and events[0]["data"]["status"] == "queued"
    epochs = [(e["data"]["job_id"], e["data"]["epoch"]) for e in events if e["event"] == "epoch"]
    assert epochs == [(ids[0], 1), (ids[0], 2), (ids[1], 1), (ids[1], 2)]  # in order, none twice
    trials = [(e["data"]["job_id"], e["data"]["status"]) for e in events if e["event"] == "trial"]
    assert trials == [(ids[0], "running"), (ids[0], "succeeded"), (ids[1], "running"), (ids[1], "succeeded")]
    assert events[-1]["event"] == "sweep" and events[-1]["data"]["status"] == "succeeded"
    assert events[-1]["data"]["settings"][0]["mean"] == 0.5
    # Resumed after the epoch events of the first trial: the rest, without repeats.
    ids_seen = [e["id"] for e in events if "id" in e]
    rest = _read(url, sweep_id, headers={"Last-Event-ID": ids_seen[2]})
    assert [e["id"] for e in rest if "id" in e] == ids_seen[3:]
    # At the end: nothing more will come.
    assert httpx.get(f"{url}/sweeps/{sweep_id}/events", headers={"Last-Event-ID": ids_seen[-1]}).status_code == 204
    assert httpx.get(f"{url}/sweeps/sw-nothere/events").status_code == 404


def test_sweep_events_end_when_its_last_queued_trial_is_deleted(serve, store: JobStore) -> None:  # noqa: F811
    url, _ = serve()
    sweep_id, ids = _sweep(store)
    writer = _run_trials(store, ids[:1])
    seen: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: seen.extend(_read(url, sweep_id)))
    reader.start()
    writer.join()
    time.sleep(0.3)
    store.delete_unless_running(ids[1])  # DELETE /jobs/{id} of the one trial left: the sweep has ended
    reader.join(5)
    assert not reader.is_alive(), "the stream of a sweep whose last trial was deleted never ended"
    assert seen[-1]["event"] == "sweep" and seen[-1]["data"]["status"] == "cancelled", seen[-1]
