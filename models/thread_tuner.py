"""Choosing, step by step, between every usable core and one thread from what the steps take now.

On free cores two threads step 1.6-1.75x faster than one (bench/RESULTS.md, "Training
threads"). Beside a busy process each OpenMP barrier waits for the thread that shares a core
with it, and two threads step at 0.1-0.8x of one. No wait policy gives both: the spinning that
makes a barrier cheap on free cores is what starves it on a busy one. So a run on the automatic
count measures its steps and moves between the two:

* It starts with one untimed step on each count (each builds its kernels), times two on one
  thread, then tries every core as below.
* On every core it stays while its steps are faster than one thread's were. One step 1.5 times as
  slow as a step on one thread (a busy neighbour arrived), or three in a row no faster, send
  it to one thread at once.
* On one thread it tries every core for at most two steps, kept when they take at most 0.9 of
  one thread's time: after 32 steps, then twice as long after each try that did not pay (at
  most 1024). A try ends after one step that is slower than one thread's, so a neighbour that
  stays costs 4 slow steps in the first 300, then about one in a thousand.

Results depend on the thread count in the last bits, so the switches are recorded as the run's
thread schedule (``(step, threads)`` pairs, steps counted over the whole run); replaying a
schedule (``replay=``) gives the same model bit for bit. The checkpoint and the training state
carry it, and a resumed run continues the schedule of the state it resumes.

Pure bookkeeping: the caller times the steps and gives ``set_threads`` (``torch.set_num_threads``).
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = ["Schedule", "ThreadTuner", "schedule_steps"]

T = TypeVar("T")
Schedule = list[tuple[int, int]]  # (first step, threads), in step order; step 0 is the run's first

START_STEPS = 2  # steps timed on one thread as a run starts, after one untimed step on each count
RECENT = 3  # the last steps whose median says whether every core still pays
PAYS = 0.90  # every core is kept or tried again only when its steps take at most this share of one thread's
SLOW = 1.5  # a step on every core this many times one thread's: a busy neighbour, go to one thread at once
FIRST_RETRY = 32  # steps on one thread before every core is tried again ...
LAST_RETRY = 1024  # ... doubling after each try that did not pay, up to this
PROBE_STEPS = 2  # steps of a try on every core, at most
MAX_SWITCHES = 10_000  # a schedule longer than this stays on one thread (a record must stay small)


class ThreadTuner:
    """The thread count for each step of a run: adaptive between ``most`` and 1, or a replayed schedule.

    Call ``before_step(step)`` before and ``after_step(step, seconds, full)`` after each SGD step;
    ``schedule`` is then the run's thread schedule. ``recorded`` is the schedule of the steps
    before this process took over (a resumed run's state); ``replay`` a schedule to follow
    instead of measuring.
    """

    def __init__(self, most: int, set_threads: Callable[[int], None], *, recorded: Iterable[Iterable[int]] = (),
                 replay: Iterable[Iterable[int]] | None = None) -> None:
        self.most = max(1, most)
        self._set_threads = set_threads
        self.schedule: Schedule = [_pair(p) for p in recorded]
        self._replay = None if replay is None else dict(_pair(p) for p in replay)
        self.current: int | None = None
        self._one: float | None = None  # a recent full step's seconds on one thread (median)
        self._recent: deque[float] = deque(maxlen=RECENT)
        self._plan: list[int] = []  # the counts of the next steps while a run starts
        self._probe_left = 0  # steps left in a try of every core
        self._probe_times: list[float] = []
        self._retry_after = FIRST_RETRY
        self._on_one = 0  # steps on one thread since the last try
        self._started = False
        self._start_times: list[float] = []

    @property
    def adaptive(self) -> bool:
        """Whether the counts come from measuring (not from a replayed schedule, nor a single core)."""
        return self._replay is None and self.most > 1

    @property
    def recorded_threads(self) -> int:
        """The count a training state records: 0 while the counts come from measuring (automatic), else the one used."""
        return 0 if self.adaptive else self.most

    def before_step(self, step: int) -> None:
        """Set the count for step ``step`` (0-based over the whole run)."""
        if self._replay is not None:
            count = self._replay.get(step)
            if count is None and self.current is None:  # a replay that starts mid-run: the count in force
                count = next((c for s, c in reversed(sorted(self._replay.items())) if s <= step), self.most)
            if count is not None:
                self._switch(step, count)
            return
        if not self._started:
            self._started = True
            # One step on each count first, untimed: each builds its kernels (oneDNN's primitives
            # are made per thread count) and the run's buffers.
            self._plan = [self.most] + [1] * (1 + START_STEPS) if self.most > 1 else []
            self._switch(step, self.most)
        if self._plan:
            self._switch(step, self._plan[0])

    def run(self, step: int, sgd_step: Callable[[T], object], batch: T, *, full: bool = True) -> None:
        """Run ``sgd_step(batch)`` as step ``step`` on the count chosen for it, and learn from how long it took.

        On the CPU a step has finished when the call returns (nothing is queued), so the wall
        time of the call is the step's.
        """
        self.before_step(step)
        started = time.perf_counter()
        sgd_step(batch)
        self.after_step(step, time.perf_counter() - started, full)

    def end(self, steps: int) -> None:
        """After the last of ``steps`` steps: the count for what follows (precise BN), as a replay has it."""
        self.before_step(steps)

    def after_step(self, step: int, seconds: float, full: bool = True) -> None:
        """Record that step ``step`` took ``seconds`` (``full``: a full batch; others are not compared)."""
        if not self.adaptive or self.current is None:
            return
        if self._plan:
            self._plan.pop(0)
            if len(self._plan) < START_STEPS and full:  # the timed steps on one thread, after the untimed two
                self._start_times.append(seconds)
            if not self._plan:  # then every core, as a try: kept if it pays, left after one slower step
                if self._start_times:
                    self._one = statistics.median(self._start_times)
                self._try_every_core(step + 1)
            return
        if not full:
            return
        one = self._one
        if self._probe_left:
            self._probe_left -= 1
            self._probe_times.append(seconds)
            if one is not None and seconds > one:  # slower than one thread: the neighbour is still there
                self._end_probe(step, pays=False)
            elif not self._probe_left:
                self._end_probe(step, pays=one is None or statistics.mean(self._probe_times) <= PAYS * one)
            return
        self._recent.append(seconds)
        if self.current == 1:
            self._one = statistics.median(self._recent)
            self._on_one += 1
            if self._on_one >= self._retry_after and len(self.schedule) < MAX_SWITCHES:
                self._try_every_core(step + 1)
            return
        if one is not None and (seconds >= SLOW * one
                                or (len(self._recent) == RECENT and statistics.median(self._recent) > one)):
            self._to_one(step + 1)

    def _try_every_core(self, step: int) -> None:
        self._probe_left, self._probe_times = PROBE_STEPS, []
        self._switch(step, self.most)

    def _end_probe(self, step: int, *, pays: bool) -> None:
        self._probe_left = 0
        if pays:
            self._retry_after = FIRST_RETRY
            self._recent.clear()
            self._recent.extend(self._probe_times)
        else:
            self._retry_after = min(2 * self._retry_after, LAST_RETRY)
            self._to_one(step + 1)

    def _to_one(self, step: int) -> None:
        self._recent.clear()
        self._on_one = 0
        self._switch(step, 1)

    def _switch(self, step: int, count: int) -> None:
        if count == self.current:
            return
        self._set_threads(count)
        self.current = count
        if self.schedule and self.schedule[-1][0] >= step:  # decided again before that step ran
            self.schedule.pop()
        if not self.schedule or self.schedule[-1][1] != count:
            self.schedule.append((step, count))


def schedule_steps(schedule: Iterable[Iterable[int]], total: int) -> dict[int, int]:
    """Steps run on each thread count, of a run of ``total`` steps with ``schedule``."""
    pairs = [_pair(p) for p in schedule]
    counts: dict[int, int] = {}
    for i, (start, threads) in enumerate(pairs):
        end = pairs[i + 1][0] if i + 1 < len(pairs) else total
        if end > start:
            counts[threads] = counts.get(threads, 0) + min(end, total) - start
    return counts


def _pair(p: Iterable[int]) -> tuple[int, int]:
    step, threads = p
    return int(step), int(threads)
