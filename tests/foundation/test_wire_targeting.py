"""The fields that several-teacher, targeted rounds add to the wire: bounded, validated, and older versions still read."""

from __future__ import annotations

import dataclasses

import pytest

from knexa_node.crypto import Signer
from knexa_node.profile import CATEGORIES, PROFILE_DIM
from knexa_node.wire import ExchangeRequest, Feedback, Message, Profile, WireError, open_envelope, seal_envelope
from knexa_node.wire.messages import (MAX_FEEDBACK_ITEMS, MAX_HELD, MAX_HELD_CHARS, MAX_REQUEST_BUDGET, MAX_TASK_ID,
                                     newest_held)
from knexa_node.wire.codec import pack, unpack
from knexa_node.wire.envelope import Envelope

SIGNER = Signer(bytes(range(32)))
VECTOR = tuple(0.1 for _ in range(PROFILE_DIM))


def sealed_as(message: Message, version: int, body: dict) -> bytes:
    """``message``'s type signed as ``version`` with ``body``: what an older (or a hostile) peer sends."""
    unsigned = Envelope(version, message.TYPE, SIGNER.peer_id, 1.7e9, bytes(16), pack(body), b"")
    return dataclasses.replace(unsigned, signature=SIGNER.sign(unsigned.signed_bytes())).to_bytes()


def body_of(message: Message, **changes: object) -> dict:
    fields = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
    return {**fields, **changes}


def profile(**competence: float) -> Profile:
    return Profile.with_competence(competence, round=2, vector=VECTOR, model_type="llama", tokenizer_id="t", addrs=())


def test_a_profile_carries_its_competence_in_category_order() -> None:
    sent = profile(math=0.25, string=1.0)
    _, received = open_envelope(seal_envelope(SIGNER, sent).to_bytes())
    assert isinstance(received, Profile) and received == sent
    assert received.competence_categories == ("string", "math")
    assert received.competence == {"string": 1.0, "math": 0.25}


def test_an_older_profile_without_competence_still_reads() -> None:
    old = {k: v for k, v in body_of(profile()).items() if not k.startswith("competence")}
    _, received = open_envelope(sealed_as(profile(), 1, old))
    assert isinstance(received, Profile) and received.competence == {} and received.vector == VECTOR


@pytest.mark.parametrize("changes", [
    {"competence_categories": ["math"], "competence_pass1": [1.5]},          # out of [0, 1]
    {"competence_categories": ["math"], "competence_pass1": [-0.1]},
    {"competence_categories": ["math", "math"], "competence_pass1": [0.1, 0.2]},  # twice
    {"competence_categories": ["cooking"], "competence_pass1": [0.1]},       # unknown category
    {"competence_categories": ["math"], "competence_pass1": []},             # lengths differ
    {"competence_categories": list(CATEGORIES) + ["x"], "competence_pass1": [0.0] * (len(CATEGORIES) + 1)},
    {"competence_categories": ["math"], "competence_pass1": ["high"]},       # not a number
    {"competence_categories": "math", "competence_pass1": [0.1]},            # not a list
])
def test_a_bad_competence_is_refused(changes: dict) -> None:
    with pytest.raises(WireError) as info:
        open_envelope(sealed_as(profile(), Profile.VERSION, body_of(profile(), **changes)))
    assert info.value.reason == "bad-field"


def test_a_version_1_profile_may_not_smuggle_competence() -> None:
    with pytest.raises(WireError):
        open_envelope(sealed_as(profile(), 1, body_of(profile(math=0.5))))


def request(categories: tuple[str, ...] = (), budget: int = 0, held: tuple[str, ...] = ()) -> ExchangeRequest:
    return ExchangeRequest(proposal=b"envelope", ephemeral_key=bytes(range(32)), categories=categories, budget=budget,
                           held=held)


def test_a_request_names_weak_categories_and_a_budget() -> None:
    sent = request(("math", "string"), 12)
    _, received = open_envelope(seal_envelope(SIGNER, sent).to_bytes())
    assert received == sent


def test_an_older_request_asks_for_nothing_in_particular() -> None:
    old = {k: v for k, v in body_of(request()).items() if k not in ("categories", "budget", "held")}
    _, received = open_envelope(sealed_as(request(), 1, old))
    assert isinstance(received, ExchangeRequest) and received.categories == () and received.budget == 0
    assert received.held == ()


def test_a_request_names_the_prompts_held_and_goes_out_as_version_2_without_them() -> None:
    plain, rich = request(("math",), 8), request(("math",), 8, ("embedded/math/0/1", "embedded-transfer/math/2/7"))
    assert plain.wire_version() == 2 and rich.wire_version() == ExchangeRequest.VERSION == 3
    for sent in (plain, rich):
        _, received = open_envelope(seal_envelope(SIGNER, sent).to_bytes())
        assert received == sent
    version_2 = {k: v for k, v in body_of(rich).items() if k != "held"}
    assert open_envelope(sealed_as(rich, 2, version_2))[1] == plain
    with pytest.raises(WireError):  # a version-2 body may not smuggle held prompts
        open_envelope(sealed_as(rich, 2, body_of(rich)))


@pytest.mark.parametrize("changes", [
    {"categories": ["math", "math"]},
    {"categories": ["cooking"]},
    {"categories": list(CATEGORIES) * 2},
    {"budget": MAX_REQUEST_BUDGET + 1},
    {"budget": -1},
    {"budget": 1.5},
    {"held": ["embedded/math/0/1"] * 2},
    {"held": [""]},
    {"held": ["x" * (MAX_TASK_ID + 1)]},
    {"held": [f"t{i}" for i in range(MAX_HELD + 1)]},
    {"held": [f"{i:04d}" + "x" * (MAX_TASK_ID - 4) for i in range(MAX_HELD_CHARS // MAX_TASK_ID + 1)]},
])
def test_a_bad_request_is_refused(changes: dict) -> None:
    with pytest.raises(WireError) as info:
        open_envelope(sealed_as(request(), ExchangeRequest.VERSION, body_of(request(), **changes)))
    assert info.value.reason == "bad-field"


def feedback(**counts: int) -> Feedback:
    return Feedback(bytes(16), 2, 0.5, 1.0, 0.5, 100, bytes(range(32)), **counts)


def test_feedback_carries_what_the_students_sandbox_found() -> None:
    sent = feedback(items_used=10, items_failed=3, claims_failed=2)
    assert open_envelope(seal_envelope(SIGNER, sent).to_bytes())[1] == sent
    old = {k: v for k, v in body_of(sent).items() if k not in ("items_used", "items_failed", "claims_failed")}
    _, received = open_envelope(sealed_as(sent, 1, old))
    assert isinstance(received, Feedback) and (received.items_used, received.items_failed, received.claims_failed) == (0, 0, 0)
    assert not received.reports_failure and Feedback.failure(bytes(16), 2).reports_failure


@pytest.mark.parametrize("changes", [
    {"claims_failed": 2, "items_failed": 1},     # more failed claims than failed items
    {"items_failed": MAX_FEEDBACK_ITEMS + 1},
    {"items_used": MAX_FEEDBACK_ITEMS + 1},
    {"items_used": -1},
    {"claims_failed": True},
])
def test_bad_feedback_counts_are_refused(changes: dict) -> None:
    with pytest.raises(WireError) as info:
        open_envelope(sealed_as(feedback(), Feedback.VERSION, body_of(feedback(), **changes)))
    assert info.value.reason == "bad-field"


def first_release_reads(data: bytes, cls: type[Message]) -> dict:
    """What a peer of the first release checked: version 1 and exactly the version-1 fields (else it refused)."""
    raw = unpack(data)
    body = unpack(raw[6])
    old_fields = {f.name for f in dataclasses.fields(cls)} - set(cls.OLDER[1])
    if raw[1] != 1 or set(body) != old_fields:
        raise WireError("bad-version", f"{cls.TYPE} version {raw[1]} with {sorted(body)}")
    return body


@pytest.mark.parametrize("plain, rich", [
    (profile(), profile(math=0.5)),
    (ExchangeRequest(bytes(16), bytes(32)), ExchangeRequest(bytes(16), bytes(32), ("math",), 8)),
    (feedback(), feedback(items_used=1)),
])
def test_a_message_goes_out_at_the_oldest_version_that_carries_what_it_uses(plain: Message, rich: Message) -> None:
    """New nodes talk to peers of the first release unless they use a newer field (then: the new version)."""
    data = seal_envelope(SIGNER, plain).to_bytes()
    assert plain.wire_version() == 1
    first_release_reads(data, type(plain))
    assert open_envelope(data)[1] == plain  # and this release reads its own old-version message back
    assert rich.wire_version() == 2
    data = seal_envelope(SIGNER, rich).to_bytes()
    with pytest.raises(WireError, match="bad-version"):
        first_release_reads(data, type(rich))
    assert open_envelope(data)[1] == rich


def test_newest_held_keeps_the_newest_ids_that_fit_one_request() -> None:
    long_ids = [f"{i:04d}" + "x" * (MAX_TASK_ID - 4) for i in range(MAX_HELD)]  # 200 KiB: more than a frame
    kept = newest_held(long_ids + ["", "y" * (MAX_TASK_ID + 1)])
    assert kept == tuple(long_ids[-(MAX_HELD_CHARS // MAX_TASK_ID):])
    many = [f"t{i}" for i in range(MAX_HELD + 5)]
    assert newest_held(many) == tuple(many[5:])
    sent = request(("math",), 8, kept)
    assert open_envelope(seal_envelope(SIGNER, sent).to_bytes())[1] == sent
