"""The job lifecycle as plain functions on a record: no Redis, no clock."""

from __future__ import annotations

import pytest

from bnlenet.jobs import JobFinished, JobRecord, lifecycle, new_record

T0 = 1000.0


def _queued(**fields) -> JobRecord:
    return {**new_record("j1", {"epochs": 1}, T0), **fields}  # type: ignore[typeddict-item]


def _claim(r: JobRecord, worker: str = "host:1", now: float = T0 + 1, **kw):
    return lifecycle.claim(r, worker=worker, pid=7, task_id="t1", max_attempts=kw.pop("max_attempts", 3),
                           stale_after=kw.pop("stale_after", 30), owner_gone=kw.pop("owner_gone", lambda r: False),
                           now=now, published=kw.pop("published", None))


def _running(**fields) -> JobRecord:
    new, refusal = _claim(_queued())
    assert new is not None and refusal is None
    return {**new, **fields}  # type: ignore[typeddict-item]


def test_job_lifecycle_claim_starts_an_attempt():
    new, refusal = _claim(_queued(progress={"batch": 3}))
    assert refusal is None and new is not None
    assert (new["status"], new["attempts"], new["worker"], new["worker_pid"], new["task_id"]) == (
        "running", 1, "host:1", 7, "t1")
    assert new["started_at"] == new["heartbeat_at"] == T0 + 1 and new["progress"] is None


def test_job_lifecycle_claim_leaves_a_live_run_and_takes_over_a_stale_or_dead_one():
    r = _running()
    assert _claim(r, worker="host:2", now=T0 + 5) == (None, "running under another live worker (host:1)")
    stale, refusal = _claim(r, worker="host:2", now=T0 + 100)
    assert refusal is None and stale is not None and (stale["worker"], stale["attempts"]) == ("host:2", 2)
    dead, refusal = _claim(r, worker="host:2", now=T0 + 5, owner_gone=lambda r: True)
    assert refusal is None and dead is not None and dead["attempts"] == 2


def test_job_lifecycle_claim_fails_a_job_past_max_attempts():
    # Two fruitless attempts before the latest, which died without progress too: three in a row.
    new, refusal = _claim(_running(attempts=3, fruitless_attempts=2), worker="host:2", now=T0 + 100)
    assert refusal == "attempts exhausted" and new is not None
    assert new["status"] == "failed" and new["attempts"] == 3 and "lost 3 time" in (new["error"] or "")


def test_job_lifecycle_claim_of_an_ended_or_cancelled_job():
    assert _claim(_queued(status="succeeded")) == (None, "job already succeeded")
    new, refusal = _claim(_queued(cancel_requested=True))
    assert refusal == "cancelled before it started" and new is not None and new["status"] == "cancelled"


def test_job_lifecycle_worker_writes_apply_only_for_the_owning_attempt():
    r = _running()
    step = lambda r: lifecycle.beat(r, progress={"batch": 5}, now=T0 + 2)  # noqa: E731
    new = lifecycle.as_owner(r, "host:1", 1, step)
    assert new is not None and new["heartbeat_at"] == T0 + 2 and new["progress"] == {"batch": 5}
    assert lifecycle.as_owner(r, "host:2", 1, step) is None  # another worker
    assert lifecycle.as_owner(r, "host:1", 2, step) is None  # another attempt (the fencing token)
    assert lifecycle.as_owner({**r, "status": "succeeded"}, "host:1", 1, step) is None  # ended: never revived


def test_job_lifecycle_beat_without_progress_keeps_the_last():
    new = lifecycle.beat(_running(progress={"batch": 1}), progress=None, now=T0 + 3)
    assert new["progress"] == {"batch": 1} and new["heartbeat_at"] == T0 + 3


def test_job_lifecycle_first_step_and_epochs():
    r = lifecycle.first_step(_running(), at=T0 + 1.5, progress={"batch": 1}, now=T0 + 2)
    assert r["first_step_at"] == T0 + 1.5 and r["progress"] == {"batch": 1}
    r = lifecycle.add_epoch(r, metrics={"epoch": 1}, progress={"batch": 10}, now=T0 + 3)
    r = lifecycle.add_epoch(r, metrics={"epoch": 2}, progress={"batch": 20}, now=T0 + 4)
    assert r["history"] == [{"epoch": 1}, {"epoch": 2}] and r["heartbeat_at"] == T0 + 4


def test_job_lifecycle_finish_once():
    new = lifecycle.finish(_running(), "succeeded", now=T0 + 9, model_id="j1", device="cpu", final_test_acc=0.8)
    assert new is not None
    assert (new["status"], new["finished_at"], new["model_id"], new["device"], new["final_test_acc"]) == (
        "succeeded", T0 + 9, "j1", "cpu", 0.8)
    assert lifecycle.finish(new, "failed", now=T0 + 10, error="late") is None
    with pytest.raises(ValueError, match="not a final status"):
        lifecycle.finish(_running(), "running", now=T0)  # type: ignore[arg-type]


def test_job_lifecycle_request_cancel():
    queued = lifecycle.request_cancel(_queued(), now=T0 + 1)
    assert queued["status"] == "cancelled" and queued["cancel_requested"] and queued["finished_at"] == T0 + 1
    running = lifecycle.request_cancel(_running(), now=T0 + 1)
    assert running["status"] == "running" and running["cancel_requested"]
    with pytest.raises(JobFinished):
        lifecycle.request_cancel(queued, now=T0 + 2)


def test_job_lifecycle_reap():
    r = _running()
    kw = {"stale_after": 30, "max_attempts": 3, "published": None}
    assert lifecycle.reap(r, now=T0 + 5, **kw) is None  # fresh
    back = lifecycle.reap(r, now=T0 + 100, **kw)
    assert back is not None and back["status"] == "queued" and "requeued" in (back["note"] or "")
    out = lifecycle.reap({**r, "attempts": 3, "fruitless_attempts": 2}, now=T0 + 100, **kw)
    assert out is not None and out["status"] == "failed" and "lost 3 time" in (out["error"] or "")
    cancelled = lifecycle.reap({**r, "cancel_requested": True}, now=T0 + 100, **kw)
    assert cancelled is not None and cancelled["status"] == "cancelled"
    done = lifecycle.reap(r, now=T0 + 100, stale_after=30, max_attempts=3,
                          published={"job_id": "j1", "attempt": 1, "final_test_acc": 0.9})
    assert done is not None and (done["status"], done["model_id"], done["final_test_acc"]) == ("succeeded", "j1", 0.9)
    other = lifecycle.reap(r, now=T0 + 100, stale_after=30, max_attempts=3, published={"job_id": "j1", "attempt": 0})
    assert other is not None and other["status"] == "queued"  # an earlier attempt's checkpoint: trained again


def _died(r: JobRecord, *, saved: int | None, resumed_from: int = 0, at: float = T0) -> JobRecord:
    """The latest attempt resumed from ``resumed_from``, saved up to ``saved`` (None: nothing) and died."""
    r = lifecycle.resumed(r, epoch=resumed_from, history=[{"epoch": e} for e in range(1, resumed_from + 1)], now=at)
    if saved is not None:
        r = lifecycle.add_epoch(r, metrics={"epoch": saved}, progress={}, now=at, saved_epoch=saved)
    return r


def test_job_lifecycle_claim_logs_each_attempt():
    r = _running()
    assert r["attempt_log"] == [{"attempt": 1, "worker": "host:1", "started_at": T0 + 1, "resumed_from": None,
                                 "saved_epoch": None}]
    r = _died(r, saved=2)
    again, _ = _claim(r, worker="host:2", now=T0 + 100)
    assert again is not None and [(a["attempt"], a["worker"], a["saved_epoch"]) for a in again["attempt_log"]] == [
        (1, "host:1", 2), (2, "host:2", None)]


def test_job_lifecycle_only_attempts_without_progress_count_toward_max_attempts():
    r = _running()
    now = T0 + 100
    # Five deaths, each after saving one more epoch: never exhausted.
    for epoch in range(1, 6):
        r = _died(r, resumed_from=epoch - 1, saved=epoch, at=now)
        assert lifecycle.fruitless_attempts(r) == 0
        r, refusal = _claim(r, worker="host:2", now=now + 100)  # type: ignore[assignment]
        assert refusal is None and r["status"] == "running" and r["fruitless_attempts"] == 0
        now += 200
    assert r["attempts"] == 6
    # Then three deaths in a row without a new epoch (resumed from 5, saved nothing new): failed.
    for fruitless in (1, 2):
        r = _died(r, resumed_from=5, saved=None, at=now)
        r, refusal = _claim(r, worker="host:2", now=now + 100)  # type: ignore[assignment]
        assert refusal is None and r["fruitless_attempts"] == fruitless
        now += 200
    r = _died(r, resumed_from=5, saved=None, at=now)
    out, refusal = _claim(r, worker="host:2", now=now + 100)
    assert refusal == "attempts exhausted" and out is not None and out["status"] == "failed"
    assert out["fruitless_attempts"] == 3 and "lost 3 time" in (out["error"] or "") and out["attempts"] == 8


def test_job_lifecycle_a_save_resets_the_fruitless_count():
    r = _running(fruitless_attempts=2)  # two fruitless attempts before this one
    assert lifecycle.fruitless_attempts(_died(r, saved=None)) == 3
    assert lifecycle.fruitless_attempts(_died(r, resumed_from=4, saved=4)) == 3  # the same epoch again: no progress
    assert lifecycle.fruitless_attempts(_died(r, resumed_from=4, saved=5)) == 0
    kw = {"stale_after": 30, "max_attempts": 3, "published": None}
    back = lifecycle.reap(_died(r, resumed_from=4, saved=5), now=T0 + 100, **kw)
    assert back is not None and back["status"] == "queued" and "after saving a new epoch" in (back["note"] or "")
    out = lifecycle.reap(_died(r, saved=None), now=T0 + 100, **kw)
    assert out is not None and out["status"] == "failed"


def test_job_lifecycle_resumed_takes_the_state_history_once():
    r = lifecycle.add_epoch(_running(), metrics={"epoch": 1}, progress={}, now=T0 + 2, saved_epoch=1)
    r = lifecycle.add_epoch(r, metrics={"epoch": 2}, progress={}, now=T0 + 3)  # recorded, its state not saved
    r, _ = _claim(r, worker="host:2", now=T0 + 100)  # type: ignore[assignment]
    r = lifecycle.resumed(r, epoch=1, history=[{"epoch": 1}], now=T0 + 101)
    assert r["history"] == [{"epoch": 1}]
    r = lifecycle.add_epoch(r, metrics={"epoch": 2}, progress={}, now=T0 + 102, saved_epoch=2)
    assert [m["epoch"] for m in r["history"]] == [1, 2]
    assert [(a["resumed_from"], a["saved_epoch"]) for a in r["attempt_log"]] == [(None, 1), (1, 2)]


def test_job_lifecycle_old_records_count_every_earlier_attempt():
    import json

    from bnlenet.jobs import load_record

    old = {k: v for k, v in _running(attempts=3).items() if k not in ("fruitless_attempts", "attempt_log")}
    r = load_record(json.dumps(old))
    assert r["fruitless_attempts"] == 2 and r["attempt_log"] == []
    assert lifecycle.fruitless_attempts(r) == 3


def test_job_lifecycle_claim_over_a_dead_run_that_published_its_model_records_the_success():
    mine = {"job_id": "j1", "attempt": 1, "final_test_acc": 0.9}
    live = _claim(_running(), worker="host:2", now=T0 + 5, published=mine)
    assert live == (None, "running under another live worker (host:1)")  # its worker records it
    r = _running(cancel_requested=True)  # a cancel asked after the model was published
    done, refusal = _claim(r, worker="host:2", now=T0 + 5, published=mine, owner_gone=lambda r: True)
    assert refusal == "its model was published" and done is not None
    assert (done["status"], done["model_id"], done["final_test_acc"], done["attempts"]) == ("succeeded", "j1", 0.9, 1)
    other, refusal = _claim(_running(), worker="host:2", now=T0 + 100, published={**mine, "attempt": 0})
    assert refusal is None and other is not None and other["attempts"] == 2  # an earlier attempt's model: runs again
