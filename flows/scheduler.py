"""The order of the candidate builds: each starts as soon as its upstreams are current and a
worker is free, the one with the most work waiting on it first, and finished builds are taken in
as they come.

Pure logic over the candidate graph (params' upstreams and workload), with no Prefect in it:
the flow (flows.compress.fan_out) gives it `start`, which checks a model's staleness and submits
its build to the task runner, and `finish`, which records a finished build in the workspace.
A future is anything with `add_done_callback` (a PrefectFuture, a concurrent.futures.Future).
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol


class Future(Protocol):
    """A build under way: calls back with itself when it is done."""

    def add_done_callback(self, fn: Callable[[Any], Any]) -> None: ...


def schedule(
    names: Sequence[str],
    upstreams: Mapping[str, Sequence[str]],
    workload: Mapping[str, float],
    current: Iterable[str],
    start: Callable[[str], Future | None],
    finish: Callable[[str, Any], None],
    slots: int | None = None,
) -> dict[str, bool]:
    """Build every model of names as soon as its upstreams are current; return {name: built}.

    Args:
        names: the models to build, topological (upstreams first).
        upstreams: model -> the models it is made from.
        workload: model -> the work its build and every build made from it take (any unit,
            Params.workload: fine-tuning epochs): of the models ready when a worker is free,
            the heaviest starts first (list scheduling with Graham's longest-processing-time-
            first rule, a model's work counting what waits on it: a long build started last
            would end the run alone, the other workers idle).
        current: models already current (the teacher).
        start: start(name) -> its build under way, or None when the model is current already
            (skipped: it makes the models made from it ready at once).
        finish: finish(name, future) takes a finished build in; raising marks the build failed.
        slots: at most this many builds under way (the runner's workers), so that a model
            ready later is not queued behind lighter ones submitted before it; None: every
            ready model is started at once.
    Returns:
        {name: True if built, False if skipped}, in the order of names.
    Raises:
        The first build's failure. After a failure nothing new starts; the builds under way
        finish and are taken in, then the failure is raised.
    """
    waiting, current = list(names), set(current)
    running: dict[Any, str] = {}
    finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
    done: dict[str, bool] = {}
    failure: Exception | None = None
    while True:
        ready = [n for n in waiting if set(upstreams[n]) <= current] if failure is None else []
        # a stable sort: among equals, the topological order
        ready.sort(key=lambda n: -workload[n])
        moved = False  # a skipped one may make others ready: look again after these
        for name in ready:
            if slots is not None and len(running) >= slots:
                break
            moved = True
            waiting.remove(name)
            future = start(name)
            if future is None:
                done[name] = False
                current.add(name)
                continue
            future.add_done_callback(finished.put)
            running[future] = name
        if moved:
            continue
        if not running:
            break
        future = finished.get()
        name = running.pop(future)
        try:
            finish(name, future)
        except Exception as err:
            failure = failure or err
            continue
        done[name] = True
        current.add(name)
    if failure is not None:
        raise failure
    if waiting:  # made from a model neither current nor among names: never ready
        raise ValueError(f"{', '.join(waiting)}: an upstream is neither current nor built here")
    return {name: done[name] for name in names}
