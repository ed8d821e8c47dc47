"""``bnlenet sweep`` and ``bnlenet sweeps``: submit a sweep to a running service, follow it, list, show, cancel, delete.

A sweep request comes from a JSON file (the body of ``POST /sweeps``) or from options:
``--param lr=0.1,0.3 --param seed=0..4 --base epochs=3``. Values are converted to the type the job
parameter declares (``bnlenet.jobs.JOB_PARAMS``), so ``lr=1`` is the number 1.0 and
``variant=scratch`` a string; the service checks the rest and says what to change.
"""

from __future__ import annotations

import json
import sys
import time
import typing
from pathlib import Path
from typing import Any, TextIO

import httpx

from bnlenet.local.watch import TERMINAL, iter_sse

__all__ = ["SweepCliError", "follow_sweep", "parse_param", "reachable", "settings_table", "submit", "sweep_request",
           "sweeps_command"]

T = typing.TypeVar("T")


class SweepCliError(RuntimeError):
    """A request the command cannot make, or one the service refused (its message says why)."""


def _value(name: str, text: str) -> Any:
    """``text`` as the job parameter ``name`` takes it: JSON where it parses, else text; ints for float fields widen."""
    from bnlenet.jobs import JOB_PARAMS

    try:
        value = json.loads(text)
    except ValueError:
        value = text
    field = JOB_PARAMS.get(name)
    if field is not None and field.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if field is not None and str in (typing.get_args(field.type) or (field.type,)) and not isinstance(value, str):
        value = text  # a text parameter (variant, init_model, device) keeps what was typed
    return value


def parse_param(spec: str) -> tuple[str, list[Any]]:
    """``NAME=V1,V2,...`` or ``NAME=A..B`` (every whole number from A to B) as (name, values)."""
    name, sep, rest = spec.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name or not rest:
        raise SweepCliError(f"--param {spec!r}: write NAME=V1,V2,... or NAME=A..B")
    low, dots, high = rest.partition("..")
    if dots and low.strip().lstrip("-").isdigit() and high.strip().lstrip("-").isdigit():
        if int(high) < int(low):
            raise SweepCliError(f"--param {spec!r}: {low}..{high} is empty; write the smaller number first")
        return name, list(range(int(low), int(high) + 1))
    return name, [_value(name, v.strip()) for v in rest.split(",")]


def sweep_request(file: str | None, params: list[str], base: list[str], *, method: str = "grid",
                  max_trials: int | None = None, seed: int = 0, early_stopping: str | None = None,
                  name: str | None = None) -> dict[str, Any]:
    """The body of ``POST /sweeps``: the file's, or built from the options."""
    if file is not None:
        if params or base:
            raise SweepCliError("give a FILE.json or --param/--base options, not both")
        try:
            loaded = json.loads(Path(file).read_text())
        except (OSError, ValueError) as exc:
            raise SweepCliError(f"cannot read the sweep request {file}: {exc}") from None
        if not isinstance(loaded, dict):
            raise SweepCliError(f"{file} should hold a JSON object, the body of POST /sweeps")
        return loaded
    if not params:
        raise SweepCliError("nothing to sweep: give a FILE.json, or --param NAME=V1,V2,... (one per parameter)")
    parameters = {n: {"values": v} for n, v in map(parse_param, params)}
    shared: dict[str, Any] = {}
    for item in base:
        key, sep, text = item.partition("=")
        if not sep:
            raise SweepCliError(f"--base {item!r}: write NAME=VALUE")
        key = key.strip().replace("-", "_")
        shared[key] = _value(key, text.strip())
    body: dict[str, Any] = {"method": method, "parameters": parameters, "base": shared, "seed": seed,
                            "max_trials": max_trials, "name": name}
    if early_stopping is not None:
        body["early_stopping"] = {"type": early_stopping, "min_epochs": 1}
    return body


def _client(url: str, token: str | None, timeout: float | None = 30.0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)


def reachable(call: typing.Callable[[], T], url: str) -> T:
    """``call()``, with a service that cannot be reached said as a ``SweepCliError``."""
    try:
        return call()
    except httpx.HTTPError as exc:
        raise SweepCliError(f"cannot reach the service at {url}: {exc}") from None


def _answer(response: httpx.Response, expected: int) -> Any:
    if response.status_code == expected:
        return None if expected == 204 else response.json()
    try:
        body = response.json()
        detail = body.get("detail", response.text)
        problems = body.get("problems") or []
    except ValueError:
        detail, problems = response.text, []
    # A refused sweep's detail joins its problems: each is said once, on a line of its own.
    lines = ([f"the service answered {response.status_code}:", *(f"  - {p}" for p in problems)] if problems
             else [f"the service answered {response.status_code}: {detail}"])
    raise SweepCliError("\n".join(lines))


def settings_table(sweep: dict[str, Any]) -> str:
    """Per setting: trials counted, mean +- std, min and max of the served models' test accuracy."""
    rows = [f"{'setting':<40} {'trials':>6} {'mean':>8} {'std':>8} {'min':>8} {'max':>8}"]
    for s in sweep["settings"]:
        numbers = [f"{s[k]:8.4f}" if s[k] is not None else f"{'-':>8}" for k in ("mean", "std", "min", "max")]
        rows.append(f"{s['setting']:<40} {s['trials']:>6} {' '.join(numbers)}")
    best = sweep.get("best")
    if best:
        rows.append(f"best: job {best['job_id']} ({_setting_text(best['params'])}), final test acc "
                    f"{best['final_test_acc']:.4f}, model {best['model_id']}")
    return "\n".join(rows)


def _setting_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()))


def _trial_line(trial: dict[str, Any]) -> str:
    acc = f"final test acc {trial['final_test_acc']:.4f}" if trial["final_test_acc"] is not None else "no model"
    early = f", stopped early after {trial['epochs_run']} epoch(s)" if trial["stopped_early"] else ""
    return f"trial {trial['job_id']} ({_setting_text(trial['params'])}): {trial['status']}, {acc}{early}"


def follow_sweep(url: str, sweep_id: str, *, token: str | None = None, out: TextIO | None = None) -> Any:
    """Print a line per trial as it ends, then the per-setting table; the sweep as it ended.

    Follows ``GET /sweeps/{id}/events``, resuming with ``Last-Event-ID`` when the connection drops.
    """
    out = sys.stdout if out is None else out
    shown: set[str] = set()
    last_id: str | None = None
    sweep: dict[str, Any] | None = None
    for _ in range(20):
        headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_id} if last_id else {})}
        try:
            with _client(url, token, timeout=None) as client, client.stream(
                    "GET", f"/sweeps/{sweep_id}/events", headers=headers) as r:
                if r.status_code == 204:
                    break
                if r.status_code != 200:
                    r.read()
                    _answer(r, 200)
                for event in iter_sse(r.iter_lines()):
                    last_id = event.id or last_id
                    if event.event != "sweep":
                        continue
                    sweep = event.json()
                    for trial in sweep["trials"]:
                        if trial["status"] in TERMINAL and trial["job_id"] not in shown:
                            shown.add(trial["job_id"])
                            print(_trial_line(trial), file=out, flush=True)
                    if sweep["status"] in TERMINAL:
                        break
        except httpx.TransportError as exc:
            print(f"(connection lost: {exc}; resuming)", file=sys.stderr)
            time.sleep(1)
        if sweep is not None and sweep["status"] in TERMINAL:
            break
    with _client(url, token) as client:
        sweep = _answer(client.get(f"/sweeps/{sweep_id}"), 200)
    print(f"sweep {sweep_id}: {sweep['status']}", file=out)
    print(settings_table(sweep), file=out, flush=True)
    return sweep


def submit(url: str, body: dict[str, Any], *, token: str | None = None) -> dict[str, Any]:
    with _client(url, token) as client:
        return _answer(client.post("/sweeps", json=body), 202)  # type: ignore[no-any-return]


def sweeps_command(action: str, url: str, sweep_id: str | None, *, token: str | None = None,
                   as_json: bool = False, out: TextIO | None = None) -> int:
    """``bnlenet sweeps list|show|cancel|delete``: 0 done, 2 refused (the message says why)."""
    out = sys.stdout if out is None else out
    with _client(url, token) as client:
        if action == "list":
            page = _answer(client.get("/sweeps", params={"limit": 100}), 200)
            if as_json:
                print(json.dumps(page), file=out)
            for s in [] if as_json else page["data"]:
                print(f"{s['id']}  {s['status']:<10} {len(s['trials']):>3} trials  {s['name'] or ''}", file=out)
            return 0
        if sweep_id is None:
            raise SweepCliError(f"bnlenet sweeps {action} needs a sweep id")
        if action == "delete":
            _answer(client.delete(f"/sweeps/{sweep_id}"), 204)
            print(f"deleted sweep {sweep_id}", file=out)
            return 0
        sweep = _answer(client.post(f"/sweeps/{sweep_id}/cancel") if action == "cancel"
                        else client.get(f"/sweeps/{sweep_id}"), 200)
    if as_json:
        print(json.dumps(sweep), file=out)
        return 0
    print(f"sweep {sweep['id']} ({sweep['name'] or 'unnamed'}): {sweep['status']}", file=out)
    for trial in sweep["trials"]:
        print(_trial_line(trial), file=out)
    print(settings_table(sweep), file=out)
    return 0

