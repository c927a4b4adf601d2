"""The trio driver of the node's round, against the real CPM service, in memory and on a mock clock.

Two participants and a real :class:`knexa_cpm.service.CpmService` talk over
:class:`knexa_node.testing.MemoryNetwork`; learners and exchanges are fakes that
take simulated time (``trio.sleep`` under ``autojump_clock``), so a round with
timeouts of minutes runs in milliseconds. The real network is proven by
tests/wiring and the demo.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from knexa_cpm import service as cpm_service
from knexa_node.config import Config
from knexa_node.crypto import Signer
from knexa_node.daemon.logs import EventLog
from knexa_node.daemon.participant import Participant
from knexa_node.daemon.round_machine import RoundLimits, Step
from knexa_node.daemon.rounds import RoundTracker
from knexa_node.exchange.errors import ExchangeOutcome
from knexa_node.identity import NodeHome
from knexa_node.learn.agent import DistillReport, ExchangeRequest, MultiDistillReport
from knexa_node.net.errors import StreamClosed, StreamTimeout
from knexa_node.profile import PROFILE_DIM
from knexa_node.testing import MemoryNetwork, framed_stream_pair
from knexa_node.wire import WireError

VECTOR = [1.0] + [0.0] * 7 + [0.5] * 12 + [1 / 12] * 12
assert len(VECTOR) == PROFILE_DIM


@dataclass
class Host:
    """A :class:`~knexa_node.daemon.role.RoleHost` without the daemon around it."""

    home: NodeHome
    config: Config
    signer: Signer
    net: MemoryNetwork
    log: EventLog
    rounds: RoundTracker
    services: list[Any] = field(default_factory=list)
    commands: dict[str, Any] = field(default_factory=dict)
    statuses: dict[str, Any] = field(default_factory=dict)

    def add_service(self, service: Any, *, name: str | None = None) -> None:
        self.services.append(service)

    def add_command(self, name: str, handler: Any) -> None:
        self.commands[name] = handler

    def add_status(self, name: str, provider: Any) -> None:
        self.statuses[name] = provider

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.err.getvalue().splitlines()]

    def names(self) -> list[str]:
        return [e["event"] for e in self.events()]


def make_host(tmp_path, name: str, hub: MemoryNetwork.Hub, signer: Signer, config: Config) -> Host:
    net = MemoryNetwork(hub, signer)
    log = EventLog("json", out=io.StringIO(), err=io.StringIO())
    rounds = RoundTracker(net, config.consortium.name, config.consortium.cpm, log.event)  # type: ignore[arg-type]
    home = NodeHome(tmp_path / name)
    home.state_dir.mkdir(parents=True, exist_ok=True)
    return Host(home, config, signer, net, log, rounds)


class FakeAgent:
    model_type = "fake"

    def __init__(self) -> None:
        self.rounds_finished = 0
        self.bad_packages = False
        self.phases: list[tuple[list[str], Any]] = []  # (teachers, dev_competence) of each distillation phase

    def local_epoch(self) -> Any:
        return SimpleNamespace(steps=3, mean_loss=1.25, seconds=0.5)

    def profile(self, **metrics: float) -> list[float]:
        return VECTOR

    def tokenizer_fingerprint(self) -> str:
        return "tok"

    def evaluate(self, problems: Any, samples: int) -> Any:
        point = SimpleNamespace(value=0.25, low=0.1, high=0.4)
        return SimpleNamespace(pass_at={1: point}, per_category={}, problems=4)

    def validation_loss(self, data: Any = None) -> float:
        return 1.0

    def competence(self, dev: Any) -> dict[str, float]:
        return {"string": 0.8, "math": 0.1}

    def exchange_request(self, competence: dict[str, float]) -> ExchangeRequest:
        return ExchangeRequest(tuple(c for c, v in competence.items() if v < 0.5), 5, ("embedded/math/0/3",))

    def distill_many(self, packages: Any, transfer: Any, *, dev: Any, max_package_bytes: int,
                     dev_competence: Any = None) -> MultiDistillReport:
        if self.bad_packages:
            raise ValueError("package is not JSON")
        self.phases.append(([teacher for teacher, _ in packages], dev_competence))
        reports = [DistillReport(protocol="text", items_received=3, items_used=2, steps=1, alpha=0.5, temperature=1.0,
                                 loss_pre=1.0, loss_post=0.9, reward=0.1, dev_loss_pre=1.2, dev_loss_post=1.1,
                                 reward_dev=0.05, package_bytes=len(payload), seconds=1.0, teacher=teacher,
                                 items_failed=1, claims_failed=1, covered=("math",), reward_covered=0.25)
                   for teacher, payload in packages]
        return MultiDistillReport(reports, 1, {}, {}, 1.0)

    def finish_round(self) -> None:
        self.rounds_finished += 1

    def save(self) -> None:
        pass


class FakeLearner:
    """The :class:`~knexa_node.daemon.learner.Learner` surface; each call takes simulated seconds."""

    SECONDS = {"local epoch": 30.0, "evaluating": 10.0, "distilling": 20.0, "saving": 1.0}

    def __init__(self, *, loads: bool = True) -> None:
        self.agent = FakeAgent() if loads else None
        self.loads = loads
        self.data = SimpleNamespace(test=[], dev=["a public dev problem"], transfer=[])

    async def load(self) -> None:
        await trio.sleep(5)
        if not self.loads:
            raise OSError("no such model")

    async def call(self, fn: Any, *, doing: str = "working") -> Any:
        await trio.sleep(self.SECONDS.get(doing.split(" (")[0], 0.1))
        return fn(self.agent)

    def status(self) -> dict[str, Any]:
        return {"busy": "idle"}


class FakeExchanges:
    """The student side of the exchange service: every fetch delivers a package after 2 s."""

    def __init__(self) -> None:
        self.distilled: list[Any] = []
        self.rewards: list[tuple[Any, str]] = []
        self.requests: list[tuple[tuple[str, ...], int, tuple[str, ...]]] = []
        self.hang_from: set[str] = set()  # teachers whose package never comes

    async def fetch(self, proposal_envelope: bytes, proposal: Any, *, categories: tuple = (),
                    budget: int = 0, held: tuple = ()) -> ExchangeOutcome:
        self.requests.append((categories, budget, held))
        await trio.sleep(2)
        if proposal.teacher in self.hang_from:
            await trio.sleep_forever()
        return ExchangeOutcome(status="done", role="student", peer=proposal.teacher, proposal_id=proposal.proposal_id,
                               round=proposal.round, payload=b"package", payload_size=7, receipt_envelope=b"receipt")

    async def record_distillation(self, outcome: Any, report: Any, *, error: str | None = None) -> None:
        self.distilled.append((report, error))

    async def record_reward(self, proposal: Any, feedback: Any, *, outcome: str = "ok") -> None:
        self.rewards.append((feedback, outcome))


@dataclass
class Consortium:
    cpm: Host
    service: Any
    nodes: list[Host]
    participants: list[Participant]
    learners: list[FakeLearner]


async def start(nursery: trio.Nursery, tmp_path, *, n: int = 2, members: int | None = None, loads: bool = True,
                limits: RoundLimits | None = None, teachers_per_student: int = 1, reward: str = "covered",
                policy: str = "knexa") -> Consortium:
    hub = MemoryNetwork.Hub(nursery)
    cpm_signer, signers = Signer.generate(), [Signer.generate() for _ in range(n)]
    config = Config()
    config.consortium.cpm = cpm_signer.peer_id
    count = n if members is None else members
    absent = [Signer.generate().peer_id for _ in range(count - n)]  # members that never show up
    config.consortium.members = [s.peer_id for s in signers[:count]] + absent
    config.cpm.round_deadline_s = 120.0
    config.cpm.teachers_per_student = teachers_per_student
    config.learning.reward = reward
    cpm = make_host(tmp_path, "cpm", hub, cpm_signer, config)
    service = cpm_service.install(cpm, policy_name=policy, seed=1)
    service.clock = trio.current_time
    nodes, participants, learners = [], [], []
    for i, signer in enumerate(signers):
        host = make_host(tmp_path, f"node{i}", hub, signer, config)
        learner = FakeLearner(loads=loads)
        participant = Participant(host, learner, FakeExchanges(), limits=limits, clock=trio.current_time)  # type: ignore[arg-type]
        participant.install()
        nodes.append(host), participants.append(participant), learners.append(learner)
    for host in (cpm, *nodes):
        for service_fn in host.services:
            await nursery.start(service_fn)
    return Consortium(cpm, service, nodes, participants, learners)


async def settle(consortium: Consortium, predicate: Any, limit_s: float = 3600) -> None:
    with trio.fail_after(limit_s):  # mock seconds: autojump makes them instant
        while not predicate():
            await trio.sleep(1)


async def test_a_round_in_memory_trains_profiles_exchanges_reports_and_closes(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        c = await start(nursery, tmp_path)
        await settle(c, lambda: all(p.machine.phase == "waiting" and p.learner.agent for p in c.participants))
        opened = await c.service.open_round()
        assert opened["round"] == 1
        await settle(c, lambda: c.service.status()["rounds_closed"] == 1
                     and all(p.status()["phase"] == "waiting" for p in c.participants))
        for host, participant, learner in zip(c.nodes, c.participants, c.learners):
            names = host.names()
            for name in ("round-open", "round-start", "local-epoch", "evaluated", "profile-sent", "proposal-received",
                         "round-done"):
                assert name in names, (name, names)
            assert names.index("round-start") < names.index("profile-sent") < names.index("round-done")
            assert host.rounds.current == 1 and participant.status()["round"] == 1
            assert learner.agent.rounds_finished == 1
        students = [p for p in c.participants if p.lessons.counts["as_student"]]
        assert students, "the CPM paired nobody"
        for student in students:
            assert student.lessons.rewards and all(r["accepted"] for r in student.lessons.rewards)
            assert "distilled" in student.host.names() and "feedback-sent" in student.host.names()
            exchanges = student.lessons.exchanges
            assert [error for _, error in exchanges.distilled] == [None] and exchanges.rewards[0][1] == "ok"
        assert c.service.status()["counters"]["feedback"] == sum(p.lessons.counts["as_student"] for p in c.participants)
        assert c.cpm.rounds.current == 1  # the CPM's round, through the same owner
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("reward, expected", [("covered", 0.25), ("eq3", 0.05)])
async def test_a_student_of_two_teachers_distils_once_and_reports_to_each(tmp_path, autojump_clock, reward, expected):
    async with trio.open_nursery() as nursery:
        c = await start(nursery, tmp_path, n=3, teachers_per_student=2, reward=reward, policy="random")
        await settle(c, lambda: all(p.machine.phase == "waiting" and p.learner.agent for p in c.participants))
        await c.service.open_round()
        await settle(c, lambda: c.service.status()["rounds_closed"] == 1
                     and all(p.status()["phase"] == "waiting" for p in c.participants))
        for host, participant, learner in zip(c.nodes, c.participants, c.learners):
            teachers = sorted(x.proposal.teacher for x in participant.machine.exchanges.values() if x.role == "student")
            assert len(teachers) == 2
            # One phase with both packages, the profile's competence as its "before".
            assert [sorted(t) for t, _ in learner.agent.phases] == [teachers]
            assert learner.agent.phases[0][1] == {"string": 0.8, "math": 0.1}
            phases = [e for e in host.events() if e["event"] == "distil-phase"]
            assert len(phases) == 1 and phases[0]["packages"] == 2
            # Targeted at its weak category, naming the prompt it holds.
            assert participant.lessons.exchanges.requests == [(("math",), 5, ("embedded/math/0/3",))] * 2
            rewards = participant.lessons.rewards
            assert len(rewards) == 2 and all(r["accepted"] and r["reward"] == expected for r in rewards), rewards
            sent = [feedback for feedback, _ in participant.lessons.exchanges.rewards]
            assert all((f.items_used, f.items_failed, f.claims_failed) == (2, 1, 1) for f in sent)
        status = c.service.status()
        assert status["counters"]["feedback"] == 6 and status["bandit_updates"] == 6
        assert all(entry["claims_failed"] == 1 for entry in status["feedback"])
        nursery.cancel_scope.cancel()


async def test_a_package_that_never_comes_is_abandoned_and_the_other_is_distilled(tmp_path, autojump_clock):
    limits = RoundLimits(collect_s=100.0)
    async with trio.open_nursery() as nursery:
        c = await start(nursery, tmp_path, n=3, teachers_per_student=2, policy="random", limits=limits)
        stuck, lost_teacher = c.participants[0], c.nodes[1].signer.peer_id
        stuck.lessons.exchanges.hang_from = {lost_teacher}
        await settle(c, lambda: all(p.machine.phase == "waiting" and p.learner.agent for p in c.participants))
        await c.service.open_round()
        await settle(c, lambda: all(p.lessons.rewards for p in c.participants)
                     and all(p.status()["phase"] == "waiting" for p in c.participants))
        events = c.nodes[0].events()
        abandoned = [e for e in events if e["event"] == "exchange-abandoned"]
        assert len(abandoned) == 1 and abandoned[0]["teacher"] == lost_teacher
        phases = [e for e in events if e["event"] == "distil-phase"]
        assert len(phases) == 1 and phases[0]["packages"] == 1 and lost_teacher not in phases[0]["teachers"]
        assert [r["teacher"] for r in stuck.lessons.rewards] == [c.nodes[2].signer.peer_id]
        assert "round-done" in c.nodes[0].names()
        assert c.service.status()["counters"]["feedback"] == 5  # the others' four, and the package that came
        nursery.cancel_scope.cancel()


async def test_the_teacher_side_is_closed_by_the_exchange_service_outcome(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        c = await start(nursery, tmp_path)
        await settle(c, lambda: all(p.machine.phase == "waiting" and p.learner.agent for p in c.participants))
        await c.service.open_round()
        await settle(c, lambda: c.service.status()["rounds_closed"] == 1
                     and all(p.status()["phase"] == "waiting" for p in c.participants))
        teacher = next(p for p in c.participants
                       if any(x.role == "teacher" for x in p.machine.exchanges.values()))
        served = next(x for x in teacher.machine.exchanges.values() if x.role == "teacher")
        assert served.step is not Step.DONE  # the fake exchange service never served it
        outcome = ExchangeOutcome(status="done", role="teacher", peer=served.proposal.student,
                                  proposal_id=served.proposal.proposal_id, round=served.proposal.round)
        teacher.on_taught(outcome)
        assert served.step is Step.DONE and teacher.lessons.counts["as_teacher"] == 1
        teacher.on_taught(dataclasses.replace(outcome, status="refused", code="x"))  # already closed: not an error
        assert teacher.lessons.counts["as_teacher"] == 1
        teacher.on_taught(dataclasses.replace(outcome, proposal_id=b"\7" * 32))  # served but never seen on gossip
        assert teacher.lessons.counts["as_teacher"] == 2 and teacher.machine.phase == "waiting"
        nursery.cancel_scope.cancel()


async def test_a_package_that_does_not_distil_is_reported_as_failed_and_the_round_ends(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        c = await start(nursery, tmp_path)
        for learner in c.learners:
            learner.agent.bad_packages = True
        await settle(c, lambda: all(p.machine.phase == "waiting" and p.learner.agent for p in c.participants))
        await c.service.open_round()
        await settle(c, lambda: c.service.status()["rounds_closed"] == 1
                     and all(p.machine.state.value == "waiting" for p in c.participants))
        students = [p for p in c.participants if p.lessons.counts["as_student"]]
        assert students
        for student in students:
            errors = [e for e in student.host.events() if e["event"] == "exchange-error"]
            sent = [e for e in student.host.events() if e["event"] == "feedback-sent"]
            assert errors and "not JSON" in errors[0]["error"] and student.lessons.counts["failed"] == 1
            assert sent and all(e["failed"] for e in sent) and "round-done" in student.host.names()
            assert "not JSON" in student.lessons.exchanges.distilled[0][1]
        assert c.service.status()["counters"].get("failed_exchanges") == len(students)
        nursery.cancel_scope.cancel()


async def test_a_cpm_that_goes_silent_after_the_profiles_is_given_up_after_its_deadline(tmp_path, autojump_clock):
    limits = RoundLimits(pairing_grace_s=60.0)
    async with trio.open_nursery() as nursery:
        # Three members, two present: the CPM waits for a quorum; then it vanishes before pairing.
        c = await start(nursery, tmp_path, n=2, members=3, limits=limits)
        await settle(c, lambda: all(p.learner.agent and p.machine.phase == "waiting" for p in c.participants))
        await c.service.open_round()
        await settle(c, lambda: all(p.machine.phase == "profiled" for p in c.participants))
        c.cpm.net.handlers.clear()  # no more answers

        async def unheard(topic: str, data: bytes) -> None:
            pass
        c.service.publish = unheard  # and its proposals reach nobody
        await settle(c, lambda: all(p.status()["phase"] == "waiting" for p in c.participants))
        deadline = c.nodes[0].rounds.last["deadline"]
        assert trio.current_time() > deadline + limits.pairing_grace_s
        for host in c.nodes:
            failed = [e for e in host.events() if e["event"] == "round-failed"]
            assert failed and "did not pair" in failed[0]["error"] and failed[0]["what"] == "round 1"
            assert "round-done" not in host.names() and "cpm-unreachable" in host.names()
        nursery.cancel_scope.cancel()


async def test_a_refused_profile_ends_the_round_without_round_done(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        c = await start(nursery, tmp_path, n=2, members=1)  # node 1 is no member
        await settle(c, lambda: all(p.learner.agent and p.machine.phase == "waiting" for p in c.participants))
        await c.service.open_round()
        outsider = c.participants[1]
        await settle(c, lambda: outsider.machine.state.value == "waiting")  # after saving (its phase says waiting at once)
        refused = [e for e in outsider.host.events() if e["event"] == "profile-refused"][0]
        assert "not-member" in refused["answer"]
        assert "round-done" not in outsider.host.names() and outsider.learner.agent.rounds_finished == 1
        nursery.cancel_scope.cancel()


async def test_a_model_that_does_not_load_leaves_a_relay_that_ignores_rounds(tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        c = await start(nursery, tmp_path, loads=False)
        await settle(c, lambda: all(p.status()["phase"] == "no-model" for p in c.participants))
        await c.service.open_round()
        await trio.sleep(60)
        for host in c.nodes:
            assert "model-load-failed" in host.names() and "round-start" not in host.names()
        nursery.cancel_scope.cancel()


async def test_framed_stream_pair_keeps_frames_and_reports_close_and_timeout(autojump_clock):
    a, b = framed_stream_pair("a", "b", max_frame=10)
    await a.send(b"one")
    await a.send(b"")
    assert await b.receive() == b"one" and await b.receive() == b""
    assert b.remote_peer_id == "a" and a.bytes_sent == b.bytes_received == 11
    with pytest.raises(StreamTimeout):
        await b.receive(timeout=5)
    await a.close()
    with pytest.raises(WireError):
        await a.send(b"x" * 11)
    with pytest.raises(StreamClosed):
        await b.receive()
