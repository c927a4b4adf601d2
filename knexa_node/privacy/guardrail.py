"""The guardrail: every outgoing text item is checked before it can enter a package.

Three families of findings, each counted by kind and logged (never with the
matched text):

- secrets (API keys, tokens, private key blocks, JWTs, random-looking
  ``secret = "..."`` values) and personal data (emails, phone numbers,
  Luhn-valid card numbers): redacted in place with ``[REDACTED:<kind>]``,
  or the whole item dropped, per :class:`GuardrailSettings`;
- verbatim leakage of the node's private training data: an item sharing an
  n-gram of ``guardrail_ngram`` tokens with D_i (and not with public text)
  is dropped, because redacting a copied passage leaves its neighbours.

A dropped item comes back as ``None`` so the learning engine keeps its
prompts aligned. The filter is deterministic and pure apart from its log.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence

from knexa_node.config import PrivacySection
from knexa_node.privacy.detectors import PERSONAL, SECRET, Detector, detectors, find_all
from knexa_node.privacy.ngram import NgramIndex

log = logging.getLogger("knexa.privacy.guardrail")

VERBATIM = "verbatim-private-data"
Action = Literal["redact", "drop", "allow"]


@dataclass(frozen=True)
class GuardrailSettings:
    enabled: bool = True
    secrets: Action = "redact"
    personal: Action = "redact"
    verbatim: bool = True  # drop items that copy private data
    ngram: int = 12

    @classmethod
    def from_config(cls, privacy: PrivacySection, **overrides: object) -> "GuardrailSettings":
        return cls(**{"enabled": privacy.guardrail, "ngram": privacy.guardrail_ngram, **overrides})  # type: ignore[arg-type]


@dataclass
class GuardrailResult:
    """Filtered items (``None`` = dropped) and what was found, by kind."""

    items: list[str | None]
    counts: Counter = field(default_factory=Counter)
    redacted: int = 0  # spans replaced
    dropped: int = 0  # items removed

    @property
    def actions(self) -> int:
        """Redactions plus drops: what a package header reports as ``redactions``."""
        return self.redacted + self.dropped


class Guardrail:
    def __init__(self, settings: GuardrailSettings, private_index: NgramIndex | None = None) -> None:
        if private_index is not None and private_index.n != settings.ngram:
            raise ValueError(f"n-gram index built for n={private_index.n}, settings say {settings.ngram}")
        self.settings = settings
        self.index = private_index
        self._actions = {SECRET: settings.secrets, PERSONAL: settings.personal}
        categories = frozenset(c for c, a in self._actions.items() if a != "allow")
        self._detectors: tuple[Detector, ...] = detectors(categories)
        self.totals: Counter = Counter()  # over the node's lifetime, for status and metrics

    @classmethod
    def build(cls, settings: GuardrailSettings, private_texts: Iterable[str], public_texts: Iterable[str] = ()) -> "Guardrail":
        index = NgramIndex.build(settings.ngram, private_texts, public_texts) if settings.verbatim else None
        return cls(settings, index)

    def filter_items(self, items: Sequence[str]) -> GuardrailResult:
        result = GuardrailResult(items=[])
        for text in items:
            result.items.append(self._filter_one(text, result))
        self.totals.update(result.counts)
        if result.actions:
            log.warning(
                "guardrail: %d of %d items dropped, %d spans redacted (%s)", result.dropped, len(items), result.redacted,
                ", ".join(f"{k}={v}" for k, v in sorted(result.counts.items())),
            )
        return result

    def filter_text(self, text: str) -> str | None:
        return self.filter_items([text]).items[0]

    def _filter_one(self, text: str, result: GuardrailResult) -> str | None:
        if not self.settings.enabled:
            return text
        if self.index is not None and self.index.overlaps(text):
            result.counts[VERBATIM] += 1
            result.dropped += 1
            return None
        findings = find_all(text, self._detectors)
        if not findings:
            return text
        result.counts.update(f.kind for f in findings)
        if any(self._actions[f.category] == "drop" for f in findings):
            result.dropped += 1
            return None
        pieces, cursor = [], 0
        for finding in findings:
            pieces += [text[cursor : finding.start], f"[REDACTED:{finding.kind}]"]
            cursor = finding.end
        result.redacted += len(findings)
        return "".join(pieces) + text[cursor:]
