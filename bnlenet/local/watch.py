"""``bnlenet watch``: follow a job of a running service through ``GET /jobs/{job_id}/events``.

The events are read with httpx and a minimal parser of the server-sent events format (the
``data``, ``event`` and ``id`` fields and comments are all the service sends). A dropped
connection is resumed with ``Last-Event-ID``, so no epoch is printed twice or lost.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import httpx
from tqdm import tqdm

__all__ = ["SSEvent", "WatchError", "iter_sse", "watch_job"]

TERMINAL = ("succeeded", "failed", "cancelled")  # bnlenet.jobs.TERMINAL, as the API reports it
RECONNECTS = 5  # tries to resume a stream that dropped before the job ended
RECONNECT_DELAY_S = 1.0


class WatchError(RuntimeError):
    """The job cannot be followed: no such job, refused, or the service cannot be reached."""


@dataclass
class SSEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


def iter_sse(lines: Iterable[str]) -> Iterator[SSEvent]:
    """Events from the lines of a ``text/event-stream`` (the WHATWG parsing rules, without ``retry``)."""
    event, last_id = "", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield SSEvent(event or "message", "\n".join(data), last_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue  # a comment: the server's heartbeat
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            last_id = value


def _refusal(response: httpx.Response, url: str, job_id: str) -> WatchError:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if response.status_code == 404:
        return WatchError(f"no job {job_id} at {url}")
    if response.status_code in (401, 403):
        return WatchError(f"{url} refused the token ({response.status_code}): {detail}; pass --token or set API_TOKEN")
    return WatchError(f"{url} answered {response.status_code}: {detail}")


class _Printer:
    """A progress bar over the job's epochs and one line per finished epoch."""

    def __init__(self, job_id: str, out: TextIO) -> None:
        self.job_id, self.out = job_id, out
        self.bar: tqdm[Any] | None = None
        self.status: str | None = None
        self.epochs_shown: set[int] = set()

    def _bar(self, epochs: int) -> tqdm[Any]:
        if self.bar is None:
            self.bar = tqdm(total=epochs, unit="epoch", desc=f"job {self.job_id[:8]}", file=sys.stderr,
                            disable=not sys.stderr.isatty())
        return self.bar

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.out)
        else:
            print(text, file=self.out, flush=True)

    def job(self, record: dict[str, Any]) -> None:
        epochs = int(record["params"].get("epochs") or 1)
        self._bar(epochs)
        for m in record.get("history") or []:
            self.epoch(m)
        if record.get("progress"):
            self.progress(record["progress"])
        if record["status"] != self.status and record["status"] not in TERMINAL:  # the end: see _final
            self.status = record["status"]
            where = f" on {record['worker']}" if record["status"] == "running" and record.get("worker") else ""
            note = f" ({record['note']})" if record.get("note") and record["status"] == "queued" else ""
            self.line(f"job {self.job_id}: {record['status']}{where}{note}")

    def progress(self, p: dict[str, Any]) -> None:
        bar = self._bar(int(p.get("epochs") or 1))
        bar.n = round(float(p.get("fraction", 0.0)) * (bar.total or 1), 3)
        bar.set_postfix(loss=f"{p.get('loss', 0):.3f}", acc=f"{p.get('train_acc', 0):.3f}", refresh=True)

    def epoch(self, m: dict[str, Any]) -> None:
        if m["epoch"] in self.epochs_shown:
            return
        self.epochs_shown.add(m["epoch"])
        self.line(f"epoch {m['epoch']}: loss {m['loss']:.3f}, train acc {m['train_acc']:.3f}, "
                  f"test acc {m['test_acc']:.3f}, {m['examples_per_sec']:,.0f} examples/sec")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def watch_job(url: str, job_id: str, *, token: str | None = None, out: TextIO | None = None,
              connect_timeout: float = 5.0) -> dict[str, Any]:
    """Print the job's progress (to ``out``, default stdout) until it ends; returns its final record.

    Raises ``WatchError`` for an unknown job, a refusal or a service that cannot be reached.
    """
    url = url.rstrip("/")
    out = sys.stdout if out is None else out
    headers = {"Accept": "text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    printer = _Printer(job_id, out)
    last_id: str | None = None
    record: dict[str, Any] | None = None
    tries = 0
    timeout = httpx.Timeout(connect_timeout, read=None)  # the server's heartbeats keep a quiet stream alive
    try:
        with httpx.Client(timeout=timeout, headers=headers) as client:
            while True:
                resume = {"Last-Event-ID": last_id} if last_id else {}
                try:
                    with client.stream("GET", f"{url}/jobs/{job_id}/events", headers=resume) as response:
                        if response.status_code != 200:
                            response.read()
                            raise _refusal(response, url, job_id)
                        for sse in iter_sse(response.iter_lines()):
                            tries = 0
                            last_id = sse.id or last_id
                            data = sse.json()
                            if sse.event == "status":
                                record = data
                                printer.job(data)
                                if data["status"] in TERMINAL:
                                    return _final(printer, data)
                            elif sse.event == "epoch":
                                printer.epoch(data)
                                if record is not None:
                                    record["history"] = [*record.get("history", []), data]
                            elif sse.event == "progress" and data.get("progress"):
                                printer.progress(data["progress"])
                except httpx.TransportError as exc:
                    if last_id is None:
                        raise WatchError(f"cannot reach the service at {url}: {exc}") from exc
                tries += 1  # the stream ended before the job did: resume after the last event
                if tries > RECONNECTS:
                    raise WatchError(f"the stream from {url} keeps closing before job {job_id} ends")
                time.sleep(RECONNECT_DELAY_S)
    finally:
        printer.close()


def _final(printer: _Printer, record: dict[str, Any]) -> dict[str, Any]:
    status = record["status"]
    if status == "succeeded":
        acc = record.get("final_test_acc")
        printer.line(f"job {record['job_id']} succeeded: model {record.get('model_id')}"
                     + (f", final test acc {acc:.3f}" if acc is not None else ""))
    elif status == "failed":
        printer.line(f"job {record['job_id']} failed: {record.get('error') or 'no reason recorded'}")
    else:
        printer.line(f"job {record['job_id']} {status}" + (f" ({record['note']})" if record.get("note") else ""))
    return record
