"""Guardrail: planted secrets, personal data and verbatim private text never leave; ordinary code passes."""

from __future__ import annotations

import fractions
import functools
import heapq
import inspect
import json.encoder
import string

import pytest

from knexa_node.config import PrivacySection
from knexa_node.privacy.detectors import detectors, find_all, luhn_ok
from knexa_node.privacy.guardrail import VERBATIM, Guardrail, GuardrailSettings
from knexa_node.privacy.ngram import NgramIndex

# Planted values: each is built from parts so that this file itself does not trip secret scanners.
PLANTED = {
    "aws-access-key": "AKIA" + "Q3EXAMPLE7KEYZ2B",
    "aws-secret-key": "aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "github-token": "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5",
    "slack-token": "xoxb-" + "2048-1234567890-aBcDeFgHiJkLmNoP",
    "google-api-key": "AIza" + "SyD-4bX9q2Lm8Nv7Rt6Wz1Yk3Hc5Jp0Fg2E",
    "stripe-key": "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "api-key": "sk-" + "proj-Xa9Bq2Lm8Nv7Rt6Wz1Yk3Hc5Jp0Fg",
    "jwt": "eyJhbGciOiJIUzI1NiJ9" + ".eyJzdWIiOiIxMjM0NTY3ODkwIn0" + ".dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "private-key": "-----BEGIN RSA " + "PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq9\nc2VjcmV0\n-----END RSA " + "PRIVATE KEY-----",
    "secret-assignment": 'db_password = "' + 'Zq8xL2mV9rT4wK7bN3cJ' + '"',
    "email": "jane.doe" + "@example-corp.com",
    "phone": "+1 415-555-" + "0132",
    "card-number": "4111 1111 " + "1111 1111",
}


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_each_planted_secret_or_personal_datum_is_redacted(kind):
    value = PLANTED[kind]
    guard = Guardrail(GuardrailSettings(verbatim=False))
    item = f"def helper():\n    # config\n    x = {value!r}\n    return x\n" if kind != "private-key" else f"key:\n{value}\nend"
    result = guard.filter_items([item])
    out = result.items[0]
    assert out is not None and f"[REDACTED:{kind}]" in out
    secret_core = value.split("=")[-1].strip().strip('"')[-12:]
    assert secret_core not in out
    assert result.counts[kind] == 1 and result.redacted == 1 and guard.totals[kind] == 1


def test_drop_action_removes_the_whole_item_and_keeps_alignment():
    guard = Guardrail(GuardrailSettings(secrets="drop", verbatim=False))
    result = guard.filter_items(["clean answer", f"token {PLANTED['github-token']}", "another"])
    assert result.items == ["clean answer", None, "another"]
    assert result.dropped == 1 and result.actions == 1


def test_verbatim_private_training_text_is_dropped_but_public_text_is_not():
    private = [
        "def rotate_secret_ledger(entries, k):\n    shifted = entries[k:] + entries[:k]\n    return [e * 31 % 97 for e in shifted]\n",
        "Patient 7 reported mild headaches after the second dose of the experimental compound.",
    ]
    public = ["def rotate_secret_ledger(entries, k):\n    \"\"\"Rotate entries by k.\"\"\"\n"]
    guard = Guardrail.build(GuardrailSettings(ngram=8), private, public)
    copied = "Here you go:\n    shifted = entries[k:] + entries[:k]\n    return [e * 31 % 97 for e in shifted]"
    prose = "As noted, patient 7 reported mild headaches after the second dose of the drug."
    echo_of_prompt = "def rotate_secret_ledger(entries, k):\n    return list(entries[k:]) + list(entries[:k])"
    result = guard.filter_items([copied, prose, echo_of_prompt])
    assert result.items[:2] == [None, None]
    assert result.items[2] == echo_of_prompt  # repeats the public prompt and writes new code
    assert result.counts[VERBATIM] == 2


def test_ngram_index_counts_overlaps_and_ignores_whitespace():
    index = NgramIndex.build(4, ["alpha beta gamma delta epsilon"])
    assert index.overlaps("alpha   beta\ngamma delta") == 1
    assert index.overlaps("beta gamma delta epsilon zeta") == 1
    assert index.overlaps("alpha beta gamma zeta") == 0
    assert len(NgramIndex.build(4, [])) == 0 and NgramIndex.build(4, []).overlaps("a b c d") == 0


def test_disabled_guardrail_passes_everything():
    guard = Guardrail(GuardrailSettings.from_config(PrivacySection(guardrail=False), verbatim=False))
    assert guard.filter_items([PLANTED["email"]]).items == [PLANTED["email"]]


def test_settings_follow_config():
    settings = GuardrailSettings.from_config(PrivacySection(guardrail_ngram=20))
    assert settings.enabled and settings.ngram == 20
    with pytest.raises(ValueError):
        Guardrail(GuardrailSettings(ngram=12), NgramIndex.build(8, ["a b c d e f g h"]))


def test_luhn():
    assert luhn_ok("4111111111111111") and luhn_ok("378282246310005")
    assert not luhn_ok("4111111111111112")


@pytest.mark.parametrize("text", ["order 4111 1111 1111 1112 shipped", "seed = 1234567890123456", "id 0000-0000-0000-0000"])
def test_card_like_numbers_failing_luhn_or_issuer_are_kept(text):
    assert find_all(text, detectors()) == []


ORDINARY_CODE = [
    *(inspect.getsource(module) for module in (functools, json.encoder, heapq, fractions, string)),
    "def parse(ip):\n    return [int(p) for p in ip.split('.')]\n\nassert parse('192.168.100.200') == [192, 168, 100, 200]\n",
    "MASKS = [0xFFFFFFFF, 4294967295, 1099511627776]\nVERSION = '3.11.7'\nx = range(1000, 1002)\nprint(999, 1000, 1001)\n",
    "def token_count(tokens):\n    token = tokens[0]\n    password_hash = hash_fn(password)\n    return len(token)\n",
    "API_KEY_ENV = 'KNEXA_API_KEY'\nsecret_name = 'database-password-for-tests'\n",
]


def test_no_false_positives_on_ordinary_code():
    for source in ORDINARY_CODE:
        assert find_all(source, detectors()) == [], source[:60]
    guard = Guardrail.build(GuardrailSettings(), ["private text nobody else has seen in this form at all, really"])
    assert guard.filter_items(ORDINARY_CODE).items == ORDINARY_CODE
