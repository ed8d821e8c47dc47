"""The outbox sweep: publish the queued jobs whose task never reached the broker (``bnlenet.jobs.store``)."""

from __future__ import annotations

import logging

from bnlenet.jobs import TERMINAL, JobNotFound, JobStore, MalformedJob, StoreUnavailable
from bnlenet.model_store import ModelStore
from bnlenet.settings import Settings
from bnlenet.training_queue import Publisher
from bnlenet.training_states import TrainingStates

__all__ = ["publish_outbox"]

log = logging.getLogger(__name__)


def publish_outbox(store: JobStore, publisher: Publisher, settings: Settings) -> list[str]:
    """Publish the queued jobs whose task was never confirmed on the broker; returns their ids.

    A job lands here when the API (or a reaper) stored it and then crashed, or lost the broker,
    before the publish was confirmed. If the first publish did get through, this one is a
    duplicate, which ``claim`` makes harmless.
    """
    published = []
    for job_id in store.pending_publish(settings.OUTBOX_GRACE_S):
        try:
            record = store.get(job_id)
        except (JobNotFound, MalformedJob):
            store.drop_from_outbox(job_id)
            continue
        if record["status"] != "queued" or record["cancel_requested"]:
            store.drop_from_outbox(job_id)  # it ran, ended or was cancelled: nothing to publish
            if record["status"] in TERMINAL:  # and no task will claim it: its training state goes now
                TrainingStates(ModelStore.from_settings(settings).storage).discard(job_id)
            continue
        try:
            store.published(job_id, publisher.publish(job_id))
        except StoreUnavailable:
            raise
        except Exception as exc:
            log.warning("could not publish job %s from the outbox yet: %s", job_id, exc)
            continue
        log.warning("published job %s from the outbox: its first publish was never confirmed", job_id)
        published.append(job_id)
    return published
