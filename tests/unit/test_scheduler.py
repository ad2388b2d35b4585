"""The order of the candidate builds (flows.scheduler): the model with the most work waiting on
it starts first, no more builds run than there are slots, a model starts only once all its
upstreams are current, a current model is skipped and
frees its dependents at once, and after a failure nothing new starts while the builds under way
are still taken in. Pure logic: futures of concurrent.futures, no Prefect."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from flows.scheduler import schedule
from squeeze.config.files import load_params

PROJECT = Path(__file__).resolve().parents[2]
# teacher -> kd_small, teacher_ch50, teacher_int8; teacher_ch50 -> ch50_int8;
# kd_small + teacher_ch50 -> ensemble
UPSTREAMS = {
    "kd_small": ["teacher"],
    "teacher_ch50": ["teacher"],
    "teacher_int8": ["teacher"],
    "ch50_int8": ["teacher_ch50"],
    "ensemble": ["kd_small", "teacher_ch50"],
}
NAMES = list(UPSTREAMS)  # topological
WORKLOAD = {"kd_small": 8, "teacher_ch50": 9, "teacher_int8": 0, "ch50_int8": 0, "ensemble": 2}


class Builds:
    """start and finish for schedule(), recording ("start"|"finish", name) in order.

    A build is done as soon as it starts unless held; a held one is done when the build named
    by release[it] is taken in. skip: models that are current; fail: builds that fail.
    """

    def __init__(
        self,
        skip: set[str] = frozenset(),
        fail: set[str] = frozenset(),
        release: dict[str, str] | None = None,
    ) -> None:
        self.skip, self.fail, self.release = skip, fail, release or {}
        self.events: list[tuple[str, str]] = []
        self.futures: dict[str, Future] = {}

    def start(self, name: str) -> Future | None:
        self.events.append(("start", name))
        if name in self.skip:
            return None
        future = self.futures[name] = Future()
        if name not in self.release:
            future.set_result(name)
        return future

    def finish(self, name: str, future: Future) -> None:
        self.events.append(("finish", name))
        for held, by in self.release.items():
            if by == name:
                self.futures[held].set_result(held)
        if name in self.fail:
            raise RuntimeError(f"{name} failed")
        assert future.result() == name

    def started(self) -> list[str]:
        return [name for event, name in self.events if event == "start"]

    def at(self, event: str, name: str) -> int:
        return self.events.index((event, name))


def run(builds: Builds, names: list[str] = NAMES) -> dict[str, bool]:
    return schedule(names, UPSTREAMS, WORKLOAD, {"teacher"}, builds.start, builds.finish)


def test_the_model_with_the_most_work_waiting_on_it_starts_first() -> None:
    builds = Builds()
    assert run(builds) == dict.fromkeys(NAMES, True)
    # the first wave, the heaviest first
    assert builds.started()[:3] == ["teacher_ch50", "kd_small", "teacher_int8"]


def test_a_heavy_model_ready_later_overtakes_lighter_ones_waiting_for_a_slot() -> None:
    # one slot: teacher_ch50, then kd_small; by then ch50_int8 and the ensemble are ready beside
    # teacher_int8, which has waited since the start, and go first with their heavier work
    work = WORKLOAD | {"ch50_int8": 5}
    builds = Builds()
    ran = schedule(NAMES, UPSTREAMS, work, {"teacher"}, builds.start, builds.finish, slots=1)
    assert ran == dict.fromkeys(NAMES, True)
    assert builds.started() == ["teacher_ch50", "kd_small", "ch50_int8", "ensemble",
                                "teacher_int8"]  # fmt: skip
    # one at a time: each build is taken in before the next starts
    assert builds.events == [(e, n) for n in builds.started() for e in ("start", "finish")]


def test_no_more_builds_run_at_once_than_there_are_slots() -> None:
    builds = Builds(release={"teacher_ch50": "kd_small"})
    ran = schedule(NAMES, UPSTREAMS, WORKLOAD, {"teacher"}, builds.start, builds.finish, slots=2)
    assert ran == dict.fromkeys(NAMES, True)
    under_way, most = 0, 0
    for event, _ in builds.events:
        under_way += 1 if event == "start" else -1
        most = max(most, under_way)
    assert most == 2
    assert builds.at("start", "teacher_int8") > builds.at("finish", "kd_small")  # no slot before


def test_a_model_starts_once_all_its_upstreams_are_built_and_not_before() -> None:
    # kd_small is still building when teacher_ch50 is taken in
    builds = Builds(release={"kd_small": "teacher_ch50"})
    assert run(builds) == dict.fromkeys(NAMES, True)
    assert builds.at("start", "ch50_int8") < builds.at("finish", "kd_small")  # it waits on none
    assert builds.at("start", "ensemble") > builds.at("finish", "kd_small")
    assert builds.at("start", "ensemble") > builds.at("finish", "teacher_ch50")


def test_on_the_project_graph_every_model_starts_after_its_upstreams() -> None:
    params = load_params(PROJECT)
    teacher, *names = params.model_names()
    builds = Builds()
    upstreams = params.upstreams()
    ran = schedule(names, upstreams, params.workload(), {teacher}, builds.start, builds.finish)
    assert list(ran) == names and all(ran.values())  # as declared, not as finished
    for name in names:
        for up in set(upstreams[name]) - {teacher}:
            assert builds.at("start", name) > builds.at("finish", up), (name, up)


def test_a_current_model_is_skipped_and_its_dependents_start_at_once() -> None:
    builds = Builds(skip={"teacher_ch50"})
    assert run(builds) == {name: name != "teacher_ch50" for name in NAMES}
    assert builds.at("finish", "kd_small") > builds.at("start", "ch50_int8")
    assert ("finish", "teacher_ch50") not in builds.events


def test_after_a_failure_nothing_starts_and_the_builds_under_way_are_taken_in() -> None:
    # kd_small fails while teacher_ch50 is still building; teacher_int8 fails too, later
    builds = Builds(fail={"kd_small", "teacher_int8"}, release={"teacher_ch50": "kd_small"})
    with pytest.raises(RuntimeError, match="^kd_small failed$"):  # the first failure
        run(builds)
    first_wave = ["teacher_ch50", "kd_small", "teacher_int8"]
    assert builds.started() == first_wave  # not ch50_int8, although teacher_ch50 was built
    taken_in = ["kd_small", "teacher_int8", "teacher_ch50"]
    assert builds.events[3:] == [("finish", name) for name in taken_in]


def test_builds_on_a_thread_pool_may_finish_in_any_order() -> None:
    """As on Prefect's thread pool runner: builds take their time, on two workers."""
    took = {"kd_small": 0.05, "teacher_ch50": 0.01, "teacher_int8": 0.03, "ch50_int8": 0.0,
            "ensemble": 0.02}  # fmt: skip
    finished: list[str] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        ran = schedule(
            NAMES, UPSTREAMS, WORKLOAD, {"teacher"},
            lambda name: pool.submit(time.sleep, took[name]),
            lambda name, future: finished.append(name) or future.result(),
        )  # fmt: skip
    assert ran == dict.fromkeys(NAMES, True)
    assert sorted(finished) == sorted(NAMES)
    assert finished.index("ensemble") > max(finished.index(u) for u in UPSTREAMS["ensemble"])


def test_a_model_made_from_an_unknown_one_is_refused() -> None:
    builds = Builds()
    with pytest.raises(ValueError, match="ensemble: an upstream is neither current nor built"):
        schedule(["ensemble"], UPSTREAMS, WORKLOAD, {"teacher"}, builds.start, builds.finish)
