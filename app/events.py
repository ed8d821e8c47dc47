"""Live job events for ``GET /jobs/{job_id}/events``, and model news: one pub/sub subscription per API process.

The job store appends a job's events to its Redis Stream and publishes the job's id on
``EVENTS_CHANNEL`` in the same transaction (``bnlenet.jobs``). Here, ``EventHub`` holds the
process's one subscription to that channel. A stream that opens joins the *feed* of its job;
when the channel names a job that has a feed, the hub reads the new entries once (``XRANGE``
from the feed's cursor) and hands them to every stream of that job. An idle stream costs no
Redis command at all: it waits on an in-process event, and sends a comment as a heartbeat.

No gaps and no duplicates: a stream joins its feed *before* it reads the snapshot and its
backlog, so whatever is written after that read reaches it through the feed; it drops what it
already sent by comparing entry ids.

The same subscription carries the model news (``bnlenet.model_news``): each message, and each
time the subscription is confirmed (news may have been missed), goes to ``on_model_news`` (the
message, or None), which must return at once. The subscription opens as the process starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable

import redis
import redis.asyncio
from fastapi import HTTPException
from fastapi.sse import ServerSentEvent
from starlette.concurrency import run_in_threadpool

from app.schemas import JobOut, SweepOut
from bnlenet.jobs import EVENTS_CHANNEL, TERMINAL, JobEvent, JobNotFound, JobStore, StoreUnavailable, event_id_key
from bnlenet.model_news import MODELS_CHANNEL
from bnlenet.sweeps.errors import SweepNotFound
from bnlenet.sweeps.record import sweep_view
from bnlenet.sweeps.store import SweepStore

__all__ = ["EventHub", "Watch", "follow_job", "follow_sweep", "open_stream"]

log = logging.getLogger(__name__)

BACKLOG_MAX = 1000  # events a slow stream may fall behind before it is closed (its client resumes)
RECONNECT_S = 1.0  # between attempts to subscribe again after Redis went away
READ_TIMEOUT_S = 0.2  # the longest read on the subscription: how long closing the hub may wait for it
_MODELS = MODELS_CHANNEL.encode()


class Watch:
    """One open stream's place in its job's feed: the events handed to it, not yet sent."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.pending: deque[JobEvent] = deque()
        self.overflowed = False  # fell too far behind: the stream ends and the client resumes
        self.wake = asyncio.Event()

    def put(self, event: JobEvent) -> None:
        if len(self.pending) >= BACKLOG_MAX:
            self.overflowed = True
        else:
            self.pending.append(event)
        self.wake.set()

    def poke(self) -> None:
        """Something changed without an event (a deletion): the stream looks again (``next_batch`` gives [])."""
        self.wake.set()

    async def next_batch(self, timeout: float) -> list[JobEvent] | None:
        """The events handed over since the last call, waiting up to ``timeout`` (None: nothing came;
        []: poked, look again)."""
        if not self.pending and not self.overflowed:
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except TimeoutError:
                return None
        self.wake.clear()
        batch = list(self.pending)
        self.pending.clear()
        return batch


class _Feed:
    """The streams of one job (or sweep) and how far the hub has read its events for them."""

    def __init__(self, read: Callable[[str, str], list[JobEvent]]) -> None:
        self.read = read  # (id, after) -> the events after ``after``: a job's stream, or a sweep's
        self.watches: set[Watch] = set()
        self.cursor: str | None = None  # set by the first stream that has read its backlog
        self.stale = False  # the channel named this job since the last read
        self.task: asyncio.Task[None] | None = None


class EventHub:
    """The process's subscription to ``EVENTS_CHANNEL``, fanned out to the open streams by job."""

    def __init__(self, redis_url: str, store: JobStore, *, timeout: float = 2.0,
                 on_model_news: Callable[[str | None], None] | None = None) -> None:
        self.redis_url, self.store, self.timeout = redis_url, store, timeout
        self.on_model_news = on_model_news
        self._feeds: dict[str, _Feed] = {}
        self._listener: asyncio.Task[None] | None = None
        self._subscribed: asyncio.Event | None = None
        self._closing = False

    @property
    def open_streams(self) -> int:
        return sum(len(f.watches) for f in self._feeds.values())

    def listen(self) -> asyncio.Event:
        """Subscribe in the background (once per process, again whenever Redis comes back); set once subscribed."""
        if self._listener is None or self._listener.done() or self._subscribed is None:
            self._subscribed = asyncio.Event()
            self._listener = asyncio.create_task(self._listen(self._subscribed), name="job-events-listener")
        return self._subscribed

    async def start(self) -> None:
        """Subscribe (once per process); ``StoreUnavailable`` if Redis does not answer in time."""
        subscribed = self.listen()
        try:
            await asyncio.wait_for(subscribed.wait(), self.timeout)
        except TimeoutError:
            raise StoreUnavailable("the job store (Redis) is unavailable: cannot subscribe to job events") from None

    def join(self, job_id: str, read: Callable[[str, str], list[JobEvent]] | None = None) -> Watch:
        """A new stream's place in the feed of ``job_id``: a job, or with ``read`` another stream (a sweep's)."""
        watch = Watch(job_id)
        self._feeds.setdefault(job_id, _Feed(read or self.store.events_after)).watches.add(watch)
        return watch

    def ready(self, watch: Watch, position: str) -> None:
        """``watch`` has read everything up to ``position`` itself; the feed takes over from there."""
        feed = self._feeds.get(watch.job_id)
        if feed is not None and feed.cursor is None:
            feed.cursor = position
            if feed.stale:
                self._read(watch.job_id, feed)

    def leave(self, watch: Watch) -> None:
        feed = self._feeds.get(watch.job_id)
        if feed is None:
            return
        feed.watches.discard(watch)
        if not feed.watches:
            del self._feeds[watch.job_id]
            if feed.task is not None:
                feed.task.cancel()

    async def close(self) -> None:
        self._closing = True
        tasks = [f.task for f in self._feeds.values() if f.task is not None]
        if self._listener is not None:
            tasks.append(self._listener)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._listener = None

    # the subscription ----------------------------------------------------------------------

    async def _listen(self, subscribed: asyncio.Event) -> None:
        while not self._closing:
            client = redis.asyncio.Redis.from_url(self.redis_url, socket_connect_timeout=self.timeout)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(EVENTS_CHANNEL, MODELS_CHANNEL)
                subscribed.set()
                for job_id, feed in self._feeds.items():  # what was published while we were away
                    self._notify(job_id, feed)
                self._model_news(None)
                while True:
                    # Never a read without a timeout, and a flag besides the cancel: redis-py can swallow a
                    # cancel that arrives during a read, so closing the hub relies on the flag and this timeout.
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=READ_TIMEOUT_S)
                    if self._closing:
                        return
                    if message is None or message["type"] != "message":
                        continue
                    if message["channel"] == _MODELS:
                        self._model_news(message["data"].decode())
                    elif (watched := self._feeds.get(job_id := message["data"].decode())) is not None:
                        self._notify(job_id, watched)
            except (redis.RedisError, OSError) as exc:
                log.warning("job events subscription lost (%s); subscribing again", exc)
                await asyncio.sleep(RECONNECT_S)
            finally:
                await pubsub.aclose()
                await client.aclose()

    def _model_news(self, message: str | None) -> None:
        if self.on_model_news is not None:
            try:
                self.on_model_news(message)
            except Exception:
                log.exception("handling model news failed")

    def _notify(self, job_id: str, feed: _Feed) -> None:
        feed.stale = True
        if feed.cursor is not None:
            self._read(job_id, feed)

    def _read(self, job_id: str, feed: _Feed) -> None:
        if feed.task is None or feed.task.done():
            feed.task = asyncio.create_task(self._drain(job_id, feed), name=f"job-events-{job_id}")

    async def _drain(self, job_id: str, feed: _Feed) -> None:
        """Read the job's new events once and hand them to each of its streams, until none are new."""
        while feed.stale:
            feed.stale = False
            assert feed.cursor is not None
            try:
                events = await run_in_threadpool(feed.read, job_id, feed.cursor)
            except StoreUnavailable as exc:
                log.warning("reading the events of job %s failed: %s", job_id, exc)
                feed.stale = True
                await asyncio.sleep(RECONNECT_S)
                continue
            for event in events:
                feed.cursor = event.id
                for watch in feed.watches:
                    watch.put(event)
            if not events:  # named on the channel with nothing new: deleted, say
                for watch in feed.watches:
                    watch.poke()


async def _exists(store: JobStore, job_id: str) -> bool:
    try:
        await run_in_threadpool(store.get, job_id)
    except JobNotFound:
        return False
    except StoreUnavailable:
        pass  # cannot tell now: the stream goes on, as it does while Redis is away
    return True


async def open_stream(hub: EventHub, *, ended: bool, last: str, last_event_id: str | None) -> str | None:
    """Before a stream starts: 204 when the client has seen the end (``Last-Event-ID`` at or after ``last``,
    the latest event of something that ``ended``), else subscribe (503 without Redis); the id to resume after.

    A 204 is how a server tells a browser's EventSource to stop reconnecting.
    """
    if last_event_id is not None and ended and event_id_key(last) <= event_id_key(last_event_id):
        raise HTTPException(status_code=204)
    await hub.start()
    return last_event_id


def _sse(event: JobEvent, *, retry: int | None = None) -> ServerSentEvent:
    data = JobOut.model_validate(event.data).model_dump(mode="json") if event.type == "status" else event.data
    return ServerSentEvent(event=event.type, data=data, id=event.id, retry=retry)


def _final(event: JobEvent) -> bool:
    return event.type == "status" and event.data["status"] in TERMINAL


async def follow_job(
    hub: EventHub, job_id: str, last_event_id: str | None, *, heartbeat_s: float, retry_ms: int = 1000,
) -> AsyncIterator[ServerSentEvent]:
    """The job's events as server-sent events: the snapshot (or the resumed backlog), then live, until it ends."""
    store = hub.store
    watch = hub.join(job_id)  # before any read: whatever is written after the reads comes through the feed
    try:
        try:
            record, last = await run_in_threadpool(store.snapshot, job_id)
            resume = last_event_id is not None and await run_in_threadpool(
                store.events_resumable, job_id, last_event_id)
        except (JobNotFound, StoreUnavailable):
            return  # gone since the route checked, or Redis went away: the client may reconnect
        if resume:
            assert last_event_id is not None
            position = last_event_id
            if record["status"] in TERMINAL and event_id_key(last) <= event_id_key(position):
                return  # the client saw the end already (the route answers 204 for that, unless it just ended)
        else:
            # The snapshot: the whole record as a status event, at the id of the latest event it includes.
            position = last
            yield ServerSentEvent(event="status", data=JobOut.model_validate(record).model_dump(mode="json"),
                                  id=position, retry=retry_ms)
            if record["status"] in TERMINAL:
                return
        try:
            backlog = await run_in_threadpool(store.events_after, job_id, position)
        except StoreUnavailable:
            return  # the client reconnects with the last id it got
        for event in backlog:
            position = event.id
            yield _sse(event)
            if _final(event):
                return
        hub.ready(watch, position)
        while True:
            batch = await watch.next_batch(heartbeat_s)
            if batch is None:
                yield ServerSentEvent(comment="heartbeat")
                continue
            if watch.overflowed:
                return  # too slow to keep up: the client reconnects with Last-Event-ID and resumes
            if not batch and not await _exists(store, job_id):
                return  # deleted: a reconnect gets its 404
            for event in batch:
                if event_id_key(event.id) <= event_id_key(position):
                    continue  # read already, in the backlog
                position = event.id
                yield _sse(event)
                if _final(event):
                    return
    finally:
        hub.leave(watch)


async def follow_sweep(
    hub: EventHub, sweeps: SweepStore, sweep_id: str, last_event_id: str | None, *, heartbeat_s: float,
    retry_ms: int = 1000,
) -> AsyncIterator[ServerSentEvent]:
    """A sweep's events: ``sweep`` (the whole sweep) first and after each trial's status change, ``trial``
    (the trial's job) on each status change, ``epoch`` (a finished epoch with its ``job_id``); until it ends."""

    async def current() -> tuple[ServerSentEvent, bool]:
        record, trials, _ = await run_in_threadpool(sweeps.snapshot, sweep_id)
        view = SweepOut.model_validate(sweep_view(record, trials))
        return ServerSentEvent(event="sweep", data=view.model_dump(mode="json")), view.status in TERMINAL

    watch = hub.join(sweep_id, read=sweeps.events_after)  # before any read, as follow_job
    try:
        try:
            record, trials, last = await run_in_threadpool(sweeps.snapshot, sweep_id)
            resume = last_event_id is not None and await run_in_threadpool(
                sweeps.events_resumable, sweep_id, last_event_id)
        except (SweepNotFound, StoreUnavailable):
            return
        position = last_event_id if resume and last_event_id is not None else last
        if not resume:
            view = SweepOut.model_validate(sweep_view(record, trials))
            yield ServerSentEvent(event="sweep", data=view.model_dump(mode="json"), id=position, retry=retry_ms)
            if view.status in TERMINAL:
                return
        try:
            backlog = await run_in_threadpool(sweeps.events_after, sweep_id, position)
        except StoreUnavailable:
            return
        hub.ready(watch, backlog[-1].id if backlog else position)
        batch: list[JobEvent] | None = backlog
        while True:
            if batch is None:
                yield ServerSentEvent(comment="heartbeat")
            elif watch.overflowed:
                return
            elif not batch:  # poked: a trial was deleted, and the sweep may have ended with it
                try:
                    sse, ended = await current()
                except (SweepNotFound, StoreUnavailable):
                    return
                if ended:
                    yield sse
                    return
            else:
                for event in batch:
                    if event_id_key(event.id) <= event_id_key(position):
                        continue
                    position = event.id
                    if event.type == "epoch":
                        yield ServerSentEvent(event="epoch", data=event.data, id=event.id)
                    elif event.type == "status":
                        yield ServerSentEvent(event="trial", data=JobOut.model_validate(event.data).model_dump(
                            mode="json"), id=event.id)
                        try:
                            sse, ended = await current()
                            # Ended, and this was its last event (a resumed stream may still have more to send).
                            ended = ended and not await run_in_threadpool(
                                sweeps.events_after, sweep_id, event.id, count=1)
                        except (SweepNotFound, StoreUnavailable):
                            return
                        yield sse
                        if ended:
                            return
            batch = await watch.next_batch(heartbeat_s)
    finally:
        hub.leave(watch)
