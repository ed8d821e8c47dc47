"""The listing of models and aliases: what the storage holds, as of one look, refreshed by one rule.

The rule: a listing older than ``refresh_s`` is listed again before it is used. Who lists
depends on whether anyone may wait: in a serving store (``background``) a listing thread does
it and requests use the last listing meanwhile, so that no request waits on the storage; any
other store lists in the caller's thread. While the storage cannot be reached the last listing
goes on being used (marked ``down``) and the listing thread asks again every ``refresh_s``.

``refresh()`` lists at once (after this process changed the storage, or when a name is
missing); ``refresh_soon(then)`` has the listing thread list in a look that starts after the
call, then calls ``then`` (another process said it changed the storage). Every look at the
storage is ``_list``, one at a time, under one lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from bnlenet.checkpoint_storage import CheckpointStorage, ObjectStoreUnavailable
from bnlenet.model_store.errors import valid_model_id

__all__ = ["Listing", "Snapshot"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """One look at the storage."""

    versions: Mapping[str, str] = field(default_factory=dict)  # model id -> version
    aliases: Mapping[str, str] = field(default_factory=dict)  # alias -> model id
    at: float = float("-inf")  # time.monotonic() of the look (or of the last failed one)
    down: str | None = None  # why the last look failed, when it did


class Listing:
    """The current ``Snapshot`` of ``storage``; ``on_listed`` sees each new one before it is used."""

    def __init__(self, storage: CheckpointStorage, *, refresh_s: float, background: bool,
                 on_listed: Callable[[Snapshot], None] = lambda snapshot: None) -> None:
        self.storage, self.refresh_s, self.background, self.on_listed = storage, refresh_s, background, on_listed
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()  # one look at a time
        self._thread_lock = threading.Lock()  # the listing thread and its waiting callbacks
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._after: list[Callable[[bool], None]] = []
        self._closed = threading.Event()

    @property
    def listed(self) -> bool:
        return self._snapshot is not None

    def current(self) -> Snapshot:
        """The listing by the rule above; ObjectStoreUnavailable when the storage was never reached."""
        snapshot = self._snapshot
        if snapshot is None:  # nothing to go on: the first look waits
            with self._lock:
                if self._snapshot is None:
                    self._list()
            assert self._snapshot is not None
            return self._snapshot
        if time.monotonic() - snapshot.at >= self.refresh_s:
            if self.background or snapshot.down is not None:
                self._start_thread()  # it lists; this look uses the last listing
            elif self._lock.acquire(blocking=False):  # one caller lists; the others use the last listing
                try:
                    self._list()
                finally:
                    self._lock.release()
        return self._snapshot or snapshot

    def refresh(self) -> Snapshot:
        """List now, after any look under way; the last listing marked ``down`` if the storage cannot be reached."""
        with self._lock:
            self._list()
            assert self._snapshot is not None
            return self._snapshot

    def refresh_soon(self, then: Callable[[bool], None]) -> None:
        """Have the listing thread list in a look that starts after this call; then ``then(listed)``."""
        with self._thread_lock:
            self._after.append(then)
        self._wake.set()
        self._start_thread()

    def close(self) -> None:
        """Stop the listing thread, if one runs."""
        self._closed.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    def _list(self) -> None:
        """Look at the storage (the caller holds ``_lock``)."""
        previous = self._snapshot
        try:
            versions, aliases = self.storage.versions(), self.storage.aliases()
        except ObjectStoreUnavailable as exc:
            if previous is None:
                raise
            if previous.down is None:
                log.warning("model store unreachable, serving from the last listing: %s", exc)
            self._snapshot = replace(previous, at=time.monotonic(), down=str(exc))
            return
        if previous is not None and previous.down is not None:
            log.info("model store %s reachable again", self.storage.location)
        snapshot = Snapshot({i: v for i, v in versions.items() if valid_model_id(i)}, aliases, time.monotonic())
        self.on_listed(snapshot)
        self._snapshot = snapshot

    def _start_thread(self) -> None:
        with self._thread_lock:
            if self._thread is None and not self._closed.is_set():
                self._thread = threading.Thread(target=self._run, daemon=True, name="model-store-listing")
                self._thread.start()

    def _run(self) -> None:
        """List whenever the listing is due or a look is asked for; a non-serving store's thread ends once
        the storage answers again."""
        while True:
            snapshot = self._snapshot
            self._wake.wait(max(0.0, self.refresh_s - (time.monotonic() - snapshot.at)) if snapshot else 0.0)
            self._wake.clear()
            if self._closed.is_set():
                return
            with self._thread_lock:
                after, self._after = self._after, []
            try:
                snapshot = self.refresh()
            except Exception:  # never let the thread die: serving goes on from the last listing
                log.exception("listing the model store failed")
                snapshot = None
            for then in after:
                try:
                    then(snapshot is not None and snapshot.down is None)
                except Exception:
                    log.exception("a callback after listing the model store failed")
            if snapshot is None:
                self._closed.wait(self.refresh_s)
            elif not self.background and snapshot.down is None:
                with self._thread_lock:
                    if not self._after:
                        self._thread = None
                        return
