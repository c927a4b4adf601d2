"""Profiles are held to the layout's documented ranges, at the CPM's door (issue 15, finding 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knexa_cpm.policies import make_policy
from knexa_cpm.rounds import Refusal, RoundBook, RoundSettings
from knexa_cpm.service import CpmService
from knexa_cpm.sim import Federation, SimConfig
from knexa_node.config import Config
from knexa_node.crypto import Signer
from knexa_node.profile import (
    CATEGORIES, FAMILIES, HISTOGRAM_SLICE, METRIC_SLICE, METRICS, PROFILE_DIM, ProfileError, ProfileInputs,
    build_profile, validate_profile,
)
from knexa_node.wire import Ack, Profile, seal_envelope

PASS1 = METRIC_SLICE.start


def honest(pass1: float = 0.4) -> np.ndarray:
    metrics = {name: 0.5 for name in METRICS}
    metrics["pass1"] = pass1
    return build_profile(ProfileInputs("llama", metrics, {name: 0.3 for name in METRICS}, [3.0] * len(CATEGORIES)))


wide = st.floats(-50.0, 50.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(family=st.sampled_from(FAMILIES + ("unknown-model",)), values=st.lists(wide, min_size=6, max_size=6),
       previous=st.none() | st.lists(wide, min_size=6, max_size=6),
       counts=st.lists(st.floats(0.0, 1e9), min_size=len(CATEGORIES), max_size=len(CATEGORIES)))
def test_every_profile_a_node_builds_is_valid(family, values, previous, counts):
    # Sizes beyond the scale (a 10^13-parameter model, 10^7 examples) saturate at 1 instead of
    # producing a profile the CPM refuses.
    prev = None if previous is None else dict(zip(METRICS, previous))
    vector = build_profile(ProfileInputs(family, dict(zip(METRICS, values)), prev, counts))
    validate_profile(vector)
    assert np.all((vector[METRIC_SLICE][0::2] >= 0) & (vector[METRIC_SLICE][0::2] <= 1))


def test_bounds_are_inclusive():
    vector = honest()
    vector[PASS1], vector[PASS1 + 1] = 1.0, 1.0
    vector[PASS1 + 2], vector[PASS1 + 3] = 0.0, -1.0
    vector[HISTOGRAM_SLICE] = 0.0
    vector[HISTOGRAM_SLICE.start] = 1.0
    validate_profile(vector)


@pytest.mark.parametrize("index, value, field", [
    (PASS1, 1000.0, "pass1 = 1000 is outside [0, 1]"),
    (PASS1, -0.01, "pass1 = -0.01 is outside [0, 1]"),
    (PASS1 + 1, 1.5, "pass1 delta = 1.5 is outside [-1, 1]"),
    (METRIC_SLICE.start + 2 * METRICS.index("capacity"), 1.2, "capacity = 1.2"),
    (METRIC_SLICE.start + 2 * METRICS.index("data_size") + 1, -3.0, "data_size delta = -3"),
])
def test_each_metric_and_delta_is_held_to_its_range(index, value, field):
    vector = honest()
    vector[index] = value
    with pytest.raises(ProfileError, match=field.replace("[", r"\[").replace("]", r"\]")):
        validate_profile(vector)


@pytest.mark.parametrize("change", ["two-families", "half-family", "histogram-over-one", "histogram-sum", "short", "nan"])
def test_family_and_histogram_shape_are_checked(change):
    vector = honest()
    if change == "two-families":
        vector[0] = vector[1] = 1.0
    elif change == "half-family":
        vector[0:8] = 0.0
        vector[0] = vector[1] = 0.5
    elif change == "histogram-over-one":
        vector[HISTOGRAM_SLICE] = 0.0
        vector[20], vector[21], vector[22] = 1.5, -0.25, -0.25
    elif change == "histogram-sum":
        vector[20] += 0.01
    elif change == "short":
        vector = vector[:PROFILE_DIM - 1]
    else:
        vector[25] = np.nan
    with pytest.raises(ProfileError):
        validate_profile(vector)


def profile_message(vector: np.ndarray, round_: int = 1) -> Profile:
    return Profile(round=round_, vector=tuple(float(x) for x in vector), model_type="llama", tokenizer_id="t", addrs=())


def test_inflated_member_is_refused_and_never_teaches():
    # Issue 15, finding 4: a member claiming pass1 = 1000 was accepted (|x| <= 1000) and chosen as
    # teacher in 40 of 40 trials (12 of 40 honestly).
    teacher_rounds = 0
    for trial in range(40):
        fed = Federation(SimConfig(clients=8, seed=trial))
        book = RoundBook(round=1, opened_at=0.0, settings=RoundSettings(), expected_members=8)
        liar = fed.names[0]
        for name, vector in fed.profiles().items():
            if name == liar:
                vector = vector.copy()
                vector[PASS1] = 1000.0
                with pytest.raises(Refusal, match="pass1 = 1000 is outside") as refusal:
                    book.add_profile(name, profile_message(vector))
                assert refusal.value.code == "bad-profile"
            else:
                book.add_profile(name, profile_message(vector))
        pairs = make_policy("knexa", seed=trial).propose(book.profile_vectors(), book.budget(), 1)
        teacher_rounds += any(p.teacher == liar for p in pairs)
        assert liar not in book.profiles
    assert teacher_rounds == 0


async def test_service_refuses_counts_and_logs_an_inflated_profile(tmp_path: Path):
    cpm, member = Signer(bytes([9] * 32)), Signer(bytes([1] * 32))
    config = Config()
    config.consortium.members = [member.peer_id]
    events: list[tuple[str, dict]] = []

    async def publish(topic: str, data: bytes) -> None:
        pass

    service = CpmService(cpm, config, tmp_path / "cpm", publish=publish,
                         on_event=lambda name, **fields: events.append((name, fields)), policy_name="knexa")
    try:
        await service.open_round()
        vector = honest()
        vector[PASS1] = 1000.0
        answer = service.handle_request(seal_envelope(member, profile_message(vector)).to_bytes(), member.peer_id)
        assert isinstance(answer, Ack) and not answer.ok and answer.code == "bad-profile"
        assert "pass1 = 1000 is outside [0, 1]" in answer.reason
        assert service.refusals == {"bad-profile": 1} and service.counters["profiles"] == 0
        assert ("request-refused", {"code": "bad-profile", "reason": answer.reason}) in events
        ok = service.handle_request(seal_envelope(member, profile_message(honest())).to_bytes(), member.peer_id)
        assert isinstance(ok, Ack) and ok.ok
    finally:
        service.close()
