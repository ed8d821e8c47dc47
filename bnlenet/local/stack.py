"""Run the whole local stack on one machine: Redis, Celery worker(s) and the API (``bnlenet up``).

Every child runs in its own session, so a Ctrl-C in the terminal reaches only this launcher,
which then stops the children in dependency order: the API first (no new jobs), then the
workers (a warm shutdown lets a running batch finish; a job cut short is requeued by late
acknowledgement), then Redis last, with SIGTERM, so it flushes its append-only file.

Once up, the launcher supervises: a child that dies (Redis, a worker, the API) is started again
after a backoff (1 s, doubling to 30 s, back to 1 s once it has run for a minute), with a log
line each time, while the others keep running. The API keeps serving predictions while Redis or
a worker is down. Only a signal stops the stack.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bnlenet.checkpoint_storage import is_s3_url
from bnlenet.local import procs
from bnlenet.local.redis_server import RedisNotFound, RedisServer
from bnlenet.metrics import MULTIPROC_ENV, prepare_multiproc_dir
from bnlenet.settings import Settings
from models.threads import usable_cores

__all__ = ["Child", "api_child", "data_note", "gpu_ids", "run_stack", "worker_children", "worker_cpus"]

API_STOP_TIMEOUT_S = 15.0


class StackError(RuntimeError):
    """The stack could not start, or a part of it died."""


@dataclass
class Child:
    """One child process of the stack, leader of its own session and process group."""

    name: str
    argv: list[str]
    env: dict[str, str]
    stop_timeout: float
    cpus: frozenset[int] | None = None  # the CPUs it may run on (None: the stack's own)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> Child:
        self.process = procs.start(self.argv, env=self.env, orphan_dies=True)
        if self.cpus:
            # Set while the child is still starting its interpreter (one thread): every thread
            # and process it makes later inherits the set.
            os.sched_setaffinity(self.process.pid, self.cpus)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def exited(self) -> int | None:
        """The exit status if the process has ended, else None."""
        return None if self.process is None else self.process.poll()

    def kill(self) -> None:
        """SIGKILL the whole process group now (no waiting: also called from a signal handler)."""
        if self.process is not None:
            procs.signal_group(self.process, signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM the leader, wait, then SIGKILL whatever is left of its process group."""
        if self.process is not None and not procs.stop(self.process, self.stop_timeout):
            print(f"bnlenet: {self.name} did not stop within {self.stop_timeout:.0f}s; killed it", file=sys.stderr)


def gpu_ids(environ: Mapping[str, str] | None = None) -> list[str]:
    """The CUDA devices to run one worker each on, found without initializing CUDA here.

    ``CUDA_VISIBLE_DEVICES`` wins when set (empty or ``-1`` means none); otherwise ``nvidia-smi -L``.
    Initializing CUDA in this parent would be inherited, broken, by every forked child.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d.strip() for d in visible.split(",") if d.strip()]
        # CUDA stops at the first invalid entry, and -1 is the usual way to hide all devices.
        out: list[str] = []
        for d in ids:
            if d.startswith("-"):
                break
            out.append(d)
        return out
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(ln for ln in listing.splitlines() if ln.startswith("GPU "))]


def _lock(var_dir: Path) -> IO[str]:
    """Hold a lock so two launchers never share one Redis data directory."""
    var_dir.mkdir(parents=True, exist_ok=True)
    handle = open(var_dir / "stack.lock", "w")  # held open for the launcher's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StackError(f"another `bnlenet up` is already running with {var_dir}; stop it or set BNLENET_VAR_DIR") from None
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _probe_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(200 <= response.status < 300)
    except (urllib.error.URLError, OSError):
        return False


def _check_alive(children: list[Child], redis: RedisServer | None) -> None:
    if redis is not None and redis.process is not None and redis.process.poll() is not None:
        raise StackError(f"redis-server (pid {redis.process.pid}) exited unexpectedly with status "
                         f"{redis.process.returncode}; its log: {redis.data_dir / 'redis.log'}")
    for child in children:
        code = child.exited()
        if code is not None:
            raise StackError(f"{child.name} (pid {child.pid}) exited unexpectedly with status {code}")


@dataclass
class _Restarts:
    """When one supervised part may start again after dying, and how often it has."""

    what: str
    delay: float = 1.0
    due_at: float | None = None  # set when its death is noticed
    count: int = 0
    started_at: float = field(default_factory=time.monotonic)

    FIRST_DELAY_S = 1.0
    MAX_DELAY_S = 30.0
    STABLE_AFTER_S = 60.0  # up this long: the next death starts the backoff afresh

    def ready(self, now: float, status: int | None) -> bool:
        """Whether the dead part should be started now; logs its death the first time it is seen."""
        if self.due_at is None:
            if now - self.started_at >= self.STABLE_AFTER_S:
                self.delay = self.FIRST_DELAY_S
            self.due_at = now + self.delay
            print(f"bnlenet: {self.what} exited with status {status}; starting it again in {self.delay:.0f}s "
                  f"(restart {self.count + 1})", file=sys.stderr, flush=True)
            self.delay = min(self.delay * 2, self.MAX_DELAY_S)
        return now >= self.due_at

    def restarted(self, now: float) -> None:
        self.count += 1
        self.due_at = None
        self.started_at = now


def _supervise(children: list[Child], redis: RedisServer | None, stop: threading.Event) -> None:
    """Until ``stop``: start again, with backoff, any child (or Redis) that died."""
    restarts = {id(child): _Restarts(child.name) for child in children}
    redis_restarts = _Restarts("redis-server")
    while not stop.is_set():
        now = time.monotonic()
        if redis is not None and redis.process is not None and redis.process.poll() is not None:
            if redis_restarts.ready(now, redis.process.returncode):
                try:
                    redis.start()  # same port and data directory: the data comes back from its files
                except RuntimeError as exc:
                    print(f"bnlenet: redis-server did not start again: {exc}", file=sys.stderr, flush=True)
                redis_restarts.restarted(now)
        for child in children:
            status = child.exited()
            if status is not None and restarts[id(child)].ready(now, status):
                child.start()
                restarts[id(child)].restarted(now)
        stop.wait(0.5)


def _wait_healthy(url: str, children: list[Child], redis: RedisServer | None, stop: threading.Event,
                  timeout: float) -> None:
    def healthy_or_stopped() -> bool:
        _check_alive(children, redis)
        return stop.is_set() or _answers(url)

    try:
        procs.wait_until(healthy_or_stopped, timeout, f"the API to answer {url}", interval=0.25)
    except TimeoutError as exc:
        raise StackError(str(exc)) from None


def data_note(settings: Settings) -> str:
    """What the startup banner says about Fashion-MNIST: where it was found, or what happens instead."""
    from models.data import candidate_dirs, find_data_dir

    found = find_data_dir(settings.DATA_DIR)
    if found is not None:
        return f"Fashion-MNIST in {found}"
    looked = ", ".join(str(d) for d in candidate_dirs(settings.DATA_DIR))
    if settings.DATA_DOWNLOAD:
        return (f"Fashion-MNIST not found (looked in {looked}); the first training job downloads it "
                f"to {settings.DATA_DIR or Path.home() / '.cache' / 'bnlenet'}")
    return f"Fashion-MNIST not found (looked in {looked}) and DATA_DOWNLOAD is off: training jobs will fail"


def worker_children(devices: list[str], env: dict[str, str], stop_timeout: float = 30.0,
                    cpus: frozenset[int] | None = None) -> list[Child]:
    """One Celery worker per GPU, each seeing only its card; one CPU worker when there is none, on ``cpus``."""
    out = []
    for i, device in enumerate(devices or [None]):
        worker_env = dict(env)
        if device is None:
            node, label = "bnlenet-cpu@%h", "worker (CPU)"
        else:
            node, label = f"bnlenet-gpu{i}@%h", f"worker {i} (GPU {device})"
            worker_env["CUDA_VISIBLE_DEVICES"] = device
        out.append(Child(
            name=label,
            argv=[sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
                  "--concurrency", "1", "--loglevel", "INFO", "-n", node],
            env=worker_env,
            stop_timeout=stop_timeout,
            cpus=cpus if device is None else None,
        ))
    return out


def worker_cpus(cpus: set[int] | frozenset[int], cores: int) -> frozenset[int] | None:
    """The CPUs the CPU worker trains on beside the API, of the stack's ``cpus`` (``cores`` usable): all but one above two cores.

    Above two cores one is left to the API processes, Redis and the worker's own main process,
    so that predictions stay fast while a job trains; the worker's automatic thread count is then
    the rest. On one or two cores keeping one back would halve training for an API that is idle
    between requests: the worker trains on every core, and its thread tuner drops to one thread
    while the API's requests make two slower (``models.thread_tuner``). None: no change.
    """
    if cores <= 2 or len(cpus) <= 2:
        return None
    return frozenset(sorted(cpus)[1:cores])  # cores - 1 of them (fewer than cpus under a cgroup quota)


def api_child(host: str, port: int, workers: int, env: dict[str, str]) -> Child:
    """The API (``app.edge``: uvicorn with request deadlines and limits) with ``workers`` processes."""
    return Child(
        name="api",
        argv=[sys.executable, "-m", "app.edge", "--host", host, "--port", str(port),
              "--workers", str(workers), "--timeout-graceful-shutdown", "10"],
        env=env,
        stop_timeout=API_STOP_TIMEOUT_S,
    )


def run_stack(settings: Settings, host: str = "127.0.0.1", port: int = 8000, workers: int | None = None) -> int:
    """Start Redis (unless ``REDIS_URL`` is set), the Celery worker(s) and the API; block until stopped.

    ``workers`` is the number of API (uvicorn) processes, default ``BNLENET_API_WORKERS``, else
    the number of CPU cores this process may use (affinity and cgroup quota). Celery runs one
    worker per visible GPU, or one on the CPU on ``worker_cpus``. The
    children get this process's environment, with ``REDIS_URL`` and ``CHECKPOINT_DIR`` set.
    Once up, a child that dies is started again (see the module docstring). Returns 0 after a
    clean stop on SIGINT/SIGTERM/SIGHUP, 1 when the stack could not start.
    """
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():  # a second Ctrl-C: stop waiting for anyone
            print("bnlenet: killing what is left", file=sys.stderr, flush=True)
            for child in children:
                child.kill()
            if redis is not None and redis.process is not None:
                procs.signal_group(redis.process, signal.SIGKILL)  # no waiting inside a signal handler
        stop.set()

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}

    redis: RedisServer | None = None
    children: list[Child] = []  # in start order; stopped in reverse
    lock: IO[str] | None = None
    status = 0
    try:
        var_dir = settings.BNLENET_VAR_DIR.resolve()
        env = dict(os.environ)
        explicit = settings.model_fields_set
        checkpoints = settings.CHECKPOINT_DIR if "CHECKPOINT_DIR" in explicit else str(var_dir / "checkpoints")
        env["CHECKPOINT_DIR"] = checkpoints
        if not is_s3_url(checkpoints):
            Path(checkpoints).mkdir(parents=True, exist_ok=True)
        if "MODEL_CACHE_DIR" not in explicit:
            env["MODEL_CACHE_DIR"] = str(var_dir / "model-cache")

        if "REDIS_URL" in explicit:
            env["REDIS_URL"] = settings.REDIS_URL
            redis_note = f"{settings.REDIS_URL} (external, from REDIS_URL)"
        else:
            lock = _lock(var_dir)
            try:
                redis = RedisServer(var_dir / "redis", port=settings.BNLENET_REDIS_PORT, persistence=True).start()
            except RedisNotFound as exc:
                raise StackError(str(exc)) from None
            except RuntimeError as exc:
                raise StackError(f"Redis did not start: {exc}") from None
            env["REDIS_URL"] = redis.url
            redis_note = f"{redis.url} (pid {redis.process.pid if redis.process else '?'}), data in {redis.data_dir}"

        devices = gpu_ids(env)
        cores = usable_cores()
        api_workers = workers or settings.BNLENET_API_WORKERS or cores
        # The CPU worker's cores (all but one above two); TRAINING_THREADS set by the user fixes its count instead.
        cpus = None if devices or "TRAINING_THREADS" in explicit else worker_cpus(os.sched_getaffinity(0), cores)
        # The API processes add up their metrics in one directory, emptied now so that a
        # previous run's counts never add to this one's; the workers keep none there.
        api_env = dict(env)
        api_env[MULTIPROC_ENV] = str(prepare_multiproc_dir(env.pop(MULTIPROC_ENV, "") or var_dir / "metrics"))
        celery_workers = worker_children(devices, env, settings.BNLENET_WORKER_STOP_TIMEOUT, cpus)
        for child in [*celery_workers, api_child(host, port, api_workers, api_env)]:
            children.append(child)
            child.start()

        api = _url(host, port)
        _wait_healthy(_url(_probe_host(host), port) + "/healthz", children, redis, stop,
                      settings.BNLENET_START_TIMEOUT)
        if not stop.is_set():
            threads = int(env.get("TRAINING_THREADS") or 0)
            cpu = (f"CPU, {threads} training threads" if threads
                   else f"CPU, training on up to {len(cpus) if cpus else cores} cores")
            where = "one per GPU: " + ", ".join(devices) if devices else cpu
            print(
                "\nbnlenet is up\n"
                f"  API          {api}\n"
                f"  docs         {api}/docs\n"
                f"  Redis        {redis_note}\n"
                f"  workers      {len(devices) or 1} ({where})\n"
                f"  checkpoints  {env['CHECKPOINT_DIR']}\n"
                f"  data         {data_note(settings)}\n"
                "Press Ctrl-C to stop.\n",
                flush=True,
            )
        _supervise(children, redis, stop)
        print("bnlenet: stopping (API, then workers, then Redis)", file=sys.stderr, flush=True)
    except (StackError, OSError) as exc:
        print(f"bnlenet: {exc}; stopping the rest", file=sys.stderr, flush=True)
        status = 1
    finally:
        for child in reversed(children):
            child.stop()
        if redis is not None:
            redis.stop()
        if lock is not None:
            lock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
