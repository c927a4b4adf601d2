"""The outgoing package: the real agent's answers, guardrail on every text item, DP on logits (no network)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from wiring_helpers import SHARDS, TRANSFER, make_agent, private_texts, proposal
from wiring_stubs import StubAgent

from knexa_node.config import PrivacySection
from knexa_node.crypto import Signer
from knexa_node.daemon import packaging
from knexa_node.daemon.packaging import DP_REST_MASS, Packager, PackagingError
from knexa_node.learn.package import decode_package
from knexa_node.privacy.dp import GaussianRelease
from knexa_node.wire import ExchangeRequest

AWS_KEY = "AKIA" + "Q3EXAMPLE7KEYZ2B"
PEERS = (Signer.generate(), Signer.generate(), Signer.generate())


def _proposal(protocol: str):
    cpm, teacher, student = PEERS
    return proposal(cpm, teacher.peer_id, student.peer_id, protocol=protocol)[1]


def _privacy(**changes) -> PrivacySection:
    privacy = PrivacySection()
    for key, value in changes.items():
        setattr(privacy, key, value)
    return privacy


@pytest.fixture(scope="module")
def agent(tiny_model, tmp_path_factory):
    return make_agent(tiny_model, tmp_path_factory.mktemp("agent"))


@pytest.mark.slow
def test_real_agent_text_package_passes_the_guardrail_unchanged(agent) -> None:
    packager = Packager(_privacy(), TRANSFER, private_texts(0))
    built = packager.build(agent, _proposal("text"))
    package = decode_package(built.payload, max_size=len(built.payload) + 1)
    clean = decode_package(agent.teacher_package(TRANSFER, protocol="text").payload, max_size=1 << 24)
    assert package.kind == "text" and built.dp_epsilon == 0.0
    # Nothing secret and nothing copied in random-model answers: every item leaves as the agent wrote it.
    assert built.redactions == 0 and package.texts == clean.texts
    assert set(package.texts) == {p.task_id for p in TRANSFER}


@pytest.mark.slow
def test_real_agent_dp_logits_are_noised_renormalized_and_decode(agent) -> None:
    privacy = _privacy(dp_enabled=True, dp_epsilon_per_exchange=2.0)
    clean = decode_package(agent.teacher_package(TRANSFER, protocol="logits").payload, max_size=1 << 24)
    built = Packager(privacy, TRANSFER, private_texts(0), rng=np.random.default_rng(1)).build(agent, _proposal("logits"))
    again = Packager(privacy, TRANSFER, private_texts(0), rng=np.random.default_rng(2)).build(agent, _proposal("logits"))
    package = decode_package(built.payload, max_size=len(built.payload) + 1)
    assert package.kind == "logits" and built.dp_epsilon == 2.0 and package.k == clean.k
    assert set(package.logits) == set(clean.logits)
    for key, item in package.logits.items():
        reference = clean.logits[key]
        assert item.topk_ids.shape == reference.topk_ids.shape
        # Same id set per row (only reordered by the noisy values), tokens = the noisy argmax.
        assert np.array_equal(np.sort(item.topk_ids, axis=1), np.sort(reference.topk_ids, axis=1))
        assert np.array_equal(item.tokens, item.topk_ids[:, 0])
        logp = item.topk_logp.astype(np.float64)
        assert np.all(np.diff(logp, axis=1) <= 1e-3)
        mass = np.exp(logp).sum(axis=1)
        assert np.allclose(mass, 1 - DP_REST_MASS, atol=3e-3) and np.all(mass < 1)
    assert built.payload != again.payload  # fresh noise per package


def test_dp_noise_has_the_calibrated_scale() -> None:
    """Released rows spread around the clipped clean row exactly as the calibrated mechanism says."""
    privacy = _privacy(dp_enabled=True, dp_epsilon_per_exchange=50.0, dp_clip_norm=1.0)
    stub = StubAgent(k=4)
    built = Packager(privacy, TRANSFER, [], rng=np.random.default_rng(0)).build(stub, _proposal("logits"))
    package = decode_package(built.payload, max_size=len(built.payload) + 1)
    rows = sum(len(item.tokens) for item in package.logits.values())
    noise_std = GaussianRelease.from_config(privacy, rows).noise_std
    # Every stub position has the same clean row; centred and clipped as the mechanism does.
    clean = np.log(np.array([0.7] + [0.2 / 3] * 3))
    clean = clean - clean.mean()
    clean = clean * min(1.0, 1.0 / np.linalg.norm(clean))
    # Renormalizing adds a constant per row and sorting permutes it: neither changes a row's variance,
    # whose expectation is the clean row's plus (k-1)/k of the noise variance.
    variances = np.concatenate([item.topk_logp.astype(np.float64).var(axis=1) for item in package.logits.values()])
    expected = clean.var() + 3 / 4 * noise_std**2
    assert float(variances.mean()) == pytest.approx(expected, rel=0.2)
    assert noise_std > 0.5  # the check above would be vacuous for negligible noise


def test_planted_secret_in_a_text_answer_is_redacted_and_counted() -> None:
    answers = {TRANSFER[0].task_id: f"    return '{AWS_KEY}'\n", TRANSFER[1].task_id: "    return 'mail bob@example.org'\n"}
    built = Packager(_privacy(), TRANSFER, []).build(StubAgent(answers), _proposal("text"))
    package = decode_package(built.payload, max_size=len(built.payload) + 1)
    assert AWS_KEY not in built.payload.decode("latin-1") and b"bob@example.org" not in built.payload
    assert "[REDACTED:aws-access-key]" in package.texts[TRANSFER[0].task_id]
    assert "[REDACTED:email]" in package.texts[TRANSFER[1].task_id]
    assert built.redactions == 2 and len(package.texts) == len(TRANSFER)


def test_verbatim_copy_of_private_data_is_dropped() -> None:
    private = SHARDS[0][0]
    answers = {TRANSFER[2].task_id: private.solution + "\n" + private.prompt}
    stub = StubAgent(answers)
    built = Packager(_privacy(), TRANSFER, private_texts(0)).build(stub, _proposal("text"))
    package = decode_package(built.payload, max_size=len(built.payload) + 1)
    assert TRANSFER[2].task_id not in package.texts and len(package.texts) == len(TRANSFER) - 1
    assert built.redactions == 1
    # The same answer from a node that never trained on it is not a leak.
    other = Packager(_privacy(), TRANSFER, private_texts(1)).build(stub, _proposal("text"))
    assert private.prompt not in private_texts(1)[0] and other.redactions == 0


def test_logit_item_carrying_a_secret_is_dropped_whole() -> None:
    answers = {TRANSFER[0].task_id: f"    return '{AWS_KEY}'\n"}
    built = Packager(_privacy(), TRANSFER, []).build(StubAgent(answers), _proposal("logits"))
    package = decode_package(built.payload, max_size=len(built.payload) + 1)
    assert TRANSFER[0].task_id not in package.logits and len(package.logits) == len(TRANSFER) - 1
    assert built.redactions >= 1
    assert AWS_KEY.encode() not in np.concatenate([i.tokens for i in package.logits.values()]).astype("u1").tobytes()


def test_dp_with_text_protocol_sends_text_decoded_from_the_noisy_release() -> None:
    privacy = _privacy(dp_enabled=True, dp_epsilon_per_exchange=1.0)
    stub = StubAgent()
    built = Packager(privacy, TRANSFER, [], rng=np.random.default_rng(3)).build(stub, _proposal("text"))
    package = decode_package(built.payload, max_size=len(built.payload) + 1)
    assert stub.calls == ["logits"]  # only logits can be noised
    assert package.kind == "text" and built.dp_epsilon == 1.0 and set(package.texts) == {p.task_id for p in TRANSFER}
    # At this epsilon the noise dominates: the text is not the teacher's clean answer.
    assert sum(text == "    return 0\n" for text in package.texts.values()) < len(TRANSFER)


def test_guardrail_off_lets_items_through_and_bad_inputs_are_refused() -> None:
    answers = {TRANSFER[0].task_id: f"    return '{AWS_KEY}'\n"}
    built = Packager(_privacy(guardrail=False), TRANSFER, []).build(StubAgent(answers), _proposal("text"))
    assert AWS_KEY.encode() in built.payload and built.redactions == 0
    with pytest.raises(ValueError):
        Packager(_privacy(), [], [])

    class WrongKind(StubAgent):
        def teacher_package(self, transfer, *, protocol="text", request=None):
            return super().teacher_package(transfer, protocol="logits" if protocol == "text" else "text")

    with pytest.raises(PackagingError):
        Packager(_privacy(), TRANSFER, []).build(WrongKind(), _proposal("text"))
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


@pytest.mark.parametrize("protocol, dp", [("text", False), ("logits", False), ("text", True), ("logits", True)])
def test_the_package_is_filtered_as_an_object_and_encoded_once(monkeypatch, protocol, dp) -> None:
    class ObjectOnly(StubAgent):
        def teacher_package(self, transfer, *, protocol="text", request=None):
            built = super().teacher_package(transfer, protocol=protocol)
            return type("NoBytes", (), {"package": built.package})()  # no payload: the agent's bytes are not used

    encoded = []
    real_encode = packaging.encode_package
    monkeypatch.setattr(packaging, "encode_package", lambda package: encoded.append(package) or real_encode(package))
    built = Packager(_privacy(dp_enabled=dp, dp_epsilon_per_exchange=1.0), TRANSFER, [],
                     rng=np.random.default_rng(5)).build(ObjectOnly(), _proposal(protocol))
    assert len(encoded) == 1 and built.payload == real_encode(encoded[0])
    assert decode_package(built.payload, max_size=len(built.payload) + 1).kind == protocol


@pytest.mark.parametrize("asked, own, expected", [(0, 0, 0), (3, 0, 3), (0, 2, 2), (5, 2, 2), (1, 2, 1)])
def test_a_request_reaches_the_agent_with_the_teachers_budget_as_a_cap(asked, own, expected) -> None:
    categories = tuple(dict.fromkeys(p.category for p in TRANSFER))[:1]
    request = ExchangeRequest(proposal=b"p", ephemeral_key=bytes(32), categories=categories, budget=asked)
    agent = StubAgent()
    built = Packager(_privacy(), TRANSFER, [], budget=own).build(agent, _proposal("text"), request)
    assert agent.requests[0].categories == categories and agent.requests[0].budget == expected
    package = decode_package(built.payload, max_size=len(built.payload) + 1)
    first = [p.task_id for p in TRANSFER if p.category == categories[0]]
    assert list(package.texts) == (first[:expected] if expected else first)
