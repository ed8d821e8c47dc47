"""Model news: every API process serves a change to the model store before any client can know of it.

Read-your-writes. Once a client can see a job ``succeeded`` (``GET /jobs/{id}``, its event
stream), or a ``PUT``/``DELETE`` of an alias or a model has returned, every API process on that
Redis serves the change: the model by id, as the newest, through a moved alias, and no longer
a deleted one. The request path stays free of storage listings and of Redis.

How: the writer (the worker that published a model, the API that moved an alias) *announces*
the change after the storage has it and before it records or answers anything:

1. it publishes a token on ``MODELS_CHANNEL``; Redis answers with the number ``n`` of
   subscribers that got it: each API process holds one subscription (``app.events.EventHub``);
2. each API process, on the message, lists the storage again in a look that *starts after* the
   message arrived (``ModelStore.refresh_soon``), verifies what is new, works out the newest
   model, swaps the new listing in, and only then pushes the token's acknowledgement
   (``RPUSH`` on ``ack_key(token)``); a process that could not list, or not read every listed
   checkpoint, does not acknowledge;
3. the writer waits for ``n`` acknowledgements (``BLPOP``), then records the job succeeded or
   answers the PUT.

Why this is enough: the storage had the change before step 1 (local rename, one S3 PUT, both
read-after-write consistent), so every listing that starts in step 2 contains it; each of the
``n`` processes swapped such a listing in before its acknowledgement, and the success record
(the only way a client learns of the change) is written after the last acknowledgement: so a
request that any of them receives after a client could know already finds the change in its
listing, with no storage call. A process that subscribes later (a new one, or one whose
subscription broke and came back) lists the storage when its subscription is confirmed. A
notification alone (without waiting) would not do: the message and the client's next request
reach an API process on different connections, in no guaranteed order. A refresh on a miss
alone would not do either: a stale listing misses nothing when it serves the previous model
as the newest or an alias's previous target.

Where the guarantee stops, said exactly: the writer waits at most ``MODEL_NEWS_WAIT_S`` (5 s),
so that one stuck API process cannot hold up every job; a process that has not acknowledged
by then (its storage unreachable from it, its event loop stalled) catches up when its listing
lands, and a name it does not know (or no model at all) lists the storage before it answers
404/409 (at most ten times a second, ``bnlenet.model_store.store.MISS_REFRESH_S``). A process
whose subscription is down (Redis restarting) follows changes at ``NEWEST_MODEL_REFRESH_S``, as
every process also does for changes nobody announces (a file copied into the directory by
hand, ``bnlenet train`` writing to the store without Redis). If Redis cannot be reached the
worker retries the announcement with the success record; an alias route answers anyway and
logs that the others follow within ``NEWEST_MODEL_REFRESH_S``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis

from bnlenet.jobs import StoreUnavailable

if TYPE_CHECKING:
    from bnlenet.model_store import ModelStore

__all__ = ["ACK_TTL_S", "MODELS_CHANNEL", "ModelNews", "ack_key"]

log = logging.getLogger(__name__)

MODELS_CHANNEL = "bnlenet:model-news"  # pub/sub: each message is {"token", "what"}: the model store changed
ACK_TTL_S = 60  # an acknowledgement nobody waits for any more expires


def ack_key(token: str) -> str:
    """The list where API processes acknowledge the announcement ``token``."""
    return f"{MODELS_CHANNEL}:ack:{token}"


class ModelNews:
    """Announce changes to the model store to every API process (a writer), or acknowledge them (an API)."""

    def __init__(self, client: redis.Redis, *, wait_s: float = 5.0, poll_s: float = 1.0) -> None:
        # ``poll_s``: the longest single wait for an acknowledgement, kept under the client's read
        # timeout, so a frozen Redis fails an announcement within that timeout (the worker then
        # leaves the outcome to the reaper after OUTCOME_RETRY_S) instead of after ``wait_s``.
        self.redis, self.wait_s, self.poll_s = client, wait_s, poll_s

    @classmethod
    def from_url(cls, url: str, *, wait_s: float = 5.0, timeout: float = 2.0) -> ModelNews:
        """On a connection pool of its own, with the job store's timeouts."""
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        return cls(client, wait_s=wait_s, poll_s=max(0.05, timeout / 2))

    def announce(self, what: str) -> tuple[int, int]:
        """Tell every subscribed API process that the store changed (``what``: for logs); return once each has
        listed it again, or after ``wait_s``. (acknowledged, subscribed); StoreUnavailable without Redis."""
        token = uuid.uuid4().hex
        try:
            subscribed = int(self.redis.publish(MODELS_CHANNEL, json.dumps({"token": token, "what": what})))
            acknowledged = 0
            deadline = time.monotonic() + self.wait_s
            while acknowledged < subscribed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if self.redis.blpop([ack_key(token)], timeout=min(remaining, self.poll_s)) is not None:
                    acknowledged += 1
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the job store (Redis) is unavailable: cannot announce {what}: {exc}") from exc
        if acknowledged < subscribed:
            log.warning("announcing %s: %d of %d API processes listed it within %.1f s; the others follow "
                        "within NEWEST_MODEL_REFRESH_S", what, acknowledged, subscribed, self.wait_s)
        return acknowledged, subscribed

    def acknowledge(self, message: str) -> None:
        """Say that this process has listed the change announced in ``message`` (a ``MODELS_CHANNEL`` message)."""
        try:
            key = ack_key(str(json.loads(message)["token"]))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed model news message: %r", message[:200])
            return
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.rpush(key, 1)
                pipe.expire(key, ACK_TTL_S)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not acknowledge model news: %s", exc)

    def follower(self, store: ModelStore) -> Callable[[str | None], None]:
        """What an API process does with each message (None: its subscription was just confirmed, so news may
        have been missed): list ``store`` again in the background, then acknowledge the message."""

        def follow(message: str | None) -> None:
            def listed(ok: bool) -> None:
                if ok and message is not None:
                    self.acknowledge(message)

            store.refresh_soon(listed)

        return follow

    def close(self) -> None:
        self.redis.close()
