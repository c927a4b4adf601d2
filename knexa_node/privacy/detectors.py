"""Detectors for secrets and personal data in outgoing text: regexes plus checks that cut false positives.

Each detector has a ``kind`` (the counter name) and finds spans. Patterns
follow the documented formats of the issuers (AWS key IDs, GitHub, Slack,
Google, Stripe, OpenAI-style keys, PEM private key blocks, JWTs). Checks
beyond the regex keep ordinary code from matching: a card number must pass
Luhn and start with a known issuer prefix, a generic ``secret = "..."``
assignment must look random (Shannon entropy), a phone number needs a ``+``
or separators the way people write them, not a bare integer literal.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator

SECRET = "secret"
PERSONAL = "personal"


@dataclass(frozen=True)
class Finding:
    kind: str  # e.g. "aws-access-key", "email"
    category: str  # SECRET or PERSONAL
    start: int
    end: int


@dataclass(frozen=True)
class Detector:
    kind: str
    category: str
    pattern: re.Pattern[str]
    accept: Callable[[re.Match[str]], bool] | None = None
    group: int = 0  # the group to redact (0: the whole match)

    def find(self, text: str) -> Iterator[Finding]:
        for match in self.pattern.finditer(text):
            if self.accept is None or self.accept(match):
                yield Finding(self.kind, self.category, match.start(self.group), match.end(self.group))


def luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


# Issuer prefixes (IIN ranges) of the major networks: Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay.
_CARD_PREFIX = re.compile(r"^(4|5[1-5]|2[2-7]|3[47]|6011|65|64[4-9]|35|30[0-5]|36|38|62)")


def _card_ok(match: re.Match[str]) -> bool:
    digits = re.sub(r"[ -]", "", match.group(0))
    return 13 <= len(digits) <= 19 and bool(_CARD_PREFIX.match(digits)) and luhn_ok(digits)


def shannon_entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values()) if text else 0.0


def _random_looking(match: re.Match[str]) -> bool:
    value = match.group("value")
    classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]"))
    return shannon_entropy(value) >= 3.5 and classes >= 2 and " " not in value


def _phone_ok(match: re.Match[str]) -> bool:
    digits = re.sub(r"\D", "", match.group(0))
    text, start, end = match.string, match.start(), match.end()
    # Dotted quads and version strings (255.255.255.0, 1.2.3.4567) are not phone numbers.
    dotted = text[end : end + 2][:1] == "." and text[end + 1 : end + 2].isdigit()
    dotted = dotted or (start >= 2 and text[start - 1] == "." and text[start - 2].isdigit())
    return 8 <= len(digits) <= 15 and not dotted


_DETECTORS: tuple[Detector, ...] = (
    Detector("private-key", SECRET, re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)")),
    Detector("aws-access-key", SECRET, re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b")),
    Detector("aws-secret-key", SECRET, re.compile(
        r"(?i)aws.{0,20}?(?:secret|key).{0,20}?['\"=:\s](?P<value>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"), group=1),
    Detector("github-token", SECRET, re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b")),
    Detector("slack-token", SECRET, re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,250}")),
    Detector("slack-webhook", SECRET, re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9_/]{20,}")),
    Detector("google-api-key", SECRET, re.compile(r"\bAIza[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])")),
    Detector("stripe-key", SECRET, re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,}\b")),
    Detector("api-key", SECRET, re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,}\b")),
    Detector("jwt", SECRET, re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    Detector("secret-assignment", SECRET, re.compile(
        r"(?i)(?:secret|passw(?:or)?d|token|api[_-]?key|access[_-]?key)[\w-]*['\"]?\s*[:=]\s*['\"](?P<value>[^'\"\s]{16,})['\"]"),
        accept=_random_looking, group=1),
    Detector("email", PERSONAL, re.compile(r"\b[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}\b")),
    Detector("card-number", PERSONAL, re.compile(r"(?<![\d.])\d(?:[ -]?\d){12,18}(?![\d.])"), accept=_card_ok),
    Detector("phone", PERSONAL, re.compile(
        r"(?<![\w+.])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"  # +1 415 555 0132, +4915112345678
        r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"  # (415) 555-0132
        r"|\d{3}([.-])\d{3}\1\d{4})(?![\w-])"),  # 415-555-0132, 415.555.0132
        accept=_phone_ok),
)


def detectors(categories: frozenset[str] = frozenset({SECRET, PERSONAL})) -> tuple[Detector, ...]:
    return tuple(d for d in _DETECTORS if d.category in categories)


def find_all(text: str, active: tuple[Detector, ...]) -> list[Finding]:
    """Every finding, overlaps resolved in favour of the earliest, then the longest span."""
    found = sorted((f for d in active for f in d.find(text)), key=lambda f: (f.start, -(f.end - f.start)))
    kept: list[Finding] = []
    for finding in found:
        if not kept or finding.start >= kept[-1].end:
            kept.append(finding)
    return kept
