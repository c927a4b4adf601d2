"""Building the package a teacher sends for one proposal: the agent's answers, filtered and (optionally) noised.

Blocking and trio-free: the exchange service runs :meth:`Packager.build` in a
worker thread, under the agent's lock. Steps, in order:

1. the agent answers the public transfer set (``teacher_package``) with the
   proposal's protocol, the student's weak categories first and within the
   item budget its request names (capped by this node's own
   ``learning.exchange_budget``), as a :class:`~knexa_node.learn.package.KnowledgePackage`
   object (not yet encoded) — or, when DP is on, always as top-k logits, since
   only logits can be noised (a text package under DP is then decoded from
   the noisy release, see below);
2. DP (``privacy.dp_enabled``): every position of every item is one row of a
   Gaussian release calibrated for the whole package
   (:class:`~knexa_node.privacy.dp.GaussianRelease`); the noisy, centred
   values are renormalized to log-probabilities over the k ids plus a fixed
   public rest mass (:data:`DP_REST_MASS`, so the student's "rest" bin stays
   finite), and each item's token sequence is replaced by the argmax of its
   noisy rows: the teacher's own greedy tokens would otherwise leak unnoised.
   All of this is post-processing of the noisy rows, so the package is as
   private as the rows; what that covers (values, not the choice of ids nor
   the lengths) is spelled out in :mod:`knexa_node.privacy.dp`;
3. the guardrail on every text item that leaves: text answers are redacted
   or dropped in place; a logit item is decoded with the agent's tokenizer
   and dropped whole if the guardrail would touch it (a token sequence
   cannot be redacted without invalidating its rows);
4. encoding, once, into the exchange's :class:`~knexa_node.exchange.driver.BuiltPackage`
   with the epsilon spent and the number of guardrail actions.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from knexa_node.config import PrivacySection
from knexa_node.exchange.driver import BuiltPackage
from knexa_node.learn.package import KnowledgePackage, LogitItem, encode_package
from knexa_node.learn.problems import Problem
from knexa_node.privacy.dp import GaussianRelease, privatize_rows
from knexa_node.privacy.guardrail import Guardrail, GuardrailSettings
from knexa_node.wire import PairingProposal

log = logging.getLogger("knexa.daemon.packaging")

# Probability mass left outside the k released ids after DP renormalization. A public
# constant: the student's KD loss has a "rest" bin, log(1 - sum p), which must stay finite
# after the float16 rounding of the package (about 5e-4 relative per value).
DP_REST_MASS = 0.01
# float16 holds down to -65504; noise that large carries no signal anyway.
_MIN_LOGP = -1e4


class PackagingError(Exception):
    """The package cannot be built as configured (the exchange ends ``build-failed`` with this reason)."""


class BuiltByAgent(Protocol):
    """What the agent's ``teacher_package`` returns: the package object, not yet encoded."""

    @property
    def package(self) -> KnowledgePackage: ...


class Wanted(Protocol):
    """What a student asks for: the wire's ``ExchangeRequest`` and the agent's have both fields."""

    @property
    def categories(self) -> tuple[str, ...]: ...

    @property
    def budget(self) -> int: ...

    @property
    def held(self) -> tuple[str, ...]: ...


class TeacherAgent(Protocol):
    """What packaging needs of :class:`knexa_node.learn.agent.Agent`."""

    tokenizer: Any  # ``decode(ids, skip_special_tokens=True)`` and ``eos_token_id``

    def teacher_package(self, transfer: Sequence[Problem], *, protocol: str = "text",
                        request: Any = None) -> BuiltByAgent:
        ...



class Packager:
    """The guardrail (built once over the private texts) and the privacy settings of one node.

    ``public texts`` for the guardrail's n-gram index are the transfer prompts:
    repeating the question is not a leak of the node's private data.
    """

    def __init__(self, privacy: PrivacySection, transfer: Sequence[Problem], private_texts: Iterable[str], *,
                 max_package_bytes: int = 256 * 1024 * 1024, rng: np.random.Generator | None = None,
                 budget: int = 0) -> None:
        if not transfer:
            raise ValueError("the transfer set is empty: there is nothing to teach on")
        self.privacy = privacy
        self.budget = budget  # transfer prompts this teacher answers per request at most (0: all)
        self.transfer = list(transfer)
        self.max_package_bytes = max_package_bytes
        self.guardrail = Guardrail.build(GuardrailSettings.from_config(privacy), private_texts,
                                         [p.prompt for p in self.transfer])
        # Without a seed numpy draws from OS entropy: noise must not be predictable by the student.
        self.rng = rng if rng is not None else np.random.default_rng()

    def build(self, agent: TeacherAgent, proposal: PairingProposal, request: Wanted | None = None) -> BuiltPackage:
        """The package for ``proposal`` (blocking: model inference, then filtering and noise).

        ``request``: what the student asked for; its budget never exceeds this teacher's own.
        """
        if request is not None:
            request = capped(request, self.budget)
        return build_outgoing(agent, proposal, self.transfer, self.guardrail, self.privacy, self.rng,
                              max_package_bytes=self.max_package_bytes, request=request)


def capped(request: Any, budget: int) -> Any:
    """``request`` (a frozen dataclass) with its item budget at most ``budget`` (0 on either side: the other one)."""
    asked = request.budget
    if budget > 0 and (asked == 0 or asked > budget):
        return dataclasses.replace(request, budget=budget)
    return request


def build_outgoing(agent: TeacherAgent, proposal: PairingProposal, transfer: Sequence[Problem], guardrail: Guardrail,
                   privacy: PrivacySection, rng: np.random.Generator, *,
                   max_package_bytes: int = 256 * 1024 * 1024, request: Wanted | None = None) -> BuiltPackage:
    """Steps 1-4 of the module docstring for one proposal."""
    if proposal.protocol not in ("text", "logits"):
        raise PackagingError(f"unknown package protocol {proposal.protocol!r}")
    dp = privacy.dp_enabled
    asked = "logits" if dp else proposal.protocol
    package = agent.teacher_package(transfer, protocol=asked, request=request).package
    if not isinstance(package, KnowledgePackage):
        raise PackagingError(f"the agent built a {type(package).__name__}, not a KnowledgePackage")
    if package.kind != asked:
        raise PackagingError(f"the agent built a {package.kind!r} package, {asked!r} was asked for")
    epsilon = 0.0
    if dp:
        package = privatize_package(package, privacy, rng)
        epsilon = privacy.dp_epsilon_per_exchange
        if proposal.protocol == "text":
            package = noisy_text_package(package, agent.tokenizer)
    package, actions = guard_package(package, guardrail, agent.tokenizer)
    payload = encode_package(package)
    if len(payload) > max_package_bytes:
        raise PackagingError(f"package of {len(payload)} bytes exceeds the {max_package_bytes}-byte cap")
    log.info("package for %s (%s): %d items, %d bytes, epsilon %.3g, %d guardrail actions",
             proposal.proposal_id.hex()[:12], proposal.protocol, len(package), len(payload), epsilon, actions)
    return BuiltPackage(payload, dp_epsilon=epsilon, redactions=actions)


def privatize_package(package: KnowledgePackage, privacy: PrivacySection, rng: np.random.Generator) -> KnowledgePackage:
    """Noise every position's top-k values (one release per position, calibrated for them all)."""
    if package.kind != "logits":
        raise PackagingError("only logit packages can be noised")
    rows = sum(int(item.topk_logp.shape[0]) for item in package.logits.values())
    # Zero rows release nothing; calibrating for one keeps the mechanism well defined.
    mechanism = GaussianRelease.from_config(privacy, releases=max(rows, 1))
    noisy_items: dict[str, LogitItem] = {}
    for key, item in package.logits.items():
        if item.topk_logp.shape[0] == 0:
            noisy_items[key] = item
            continue
        noisy = privatize_rows(item.topk_logp.astype(np.float64), mechanism, rng).astype(np.float64)
        # Post-processing: the released ranking decides both the tokens and the order of ids.
        order = np.argsort(-noisy, axis=-1)
        ids = np.take_along_axis(item.topk_ids, order, axis=-1)
        noisy = np.take_along_axis(noisy, order, axis=-1)
        logp = _renormalize(noisy)
        noisy_items[key] = LogitItem(ids[:, 0].astype(np.int32), ids.astype(np.int32), logp)
    return KnowledgePackage("logits", package.tokenizer, package.round, logits=noisy_items, k=package.k)


def _renormalize(values: np.ndarray) -> np.ndarray:
    peak = values.max(axis=-1, keepdims=True)
    lse = peak + np.log(np.exp(values - peak).sum(axis=-1, keepdims=True))
    logp = values - lse + np.log1p(-DP_REST_MASS)
    return np.clip(logp, _MIN_LOGP, 0.0).astype(np.float16)


def noisy_text_package(package: KnowledgePackage, tokenizer: Any) -> KnowledgePackage:
    """A text package decoded from a (noised) logit package's tokens, cut at the first end-of-sequence."""
    eos = getattr(tokenizer, "eos_token_id", None)
    texts = {}
    for key, item in package.logits.items():
        tokens = [int(t) for t in item.tokens]
        if eos is not None and eos in tokens:
            tokens = tokens[: tokens.index(eos)]
        texts[key] = tokenizer.decode(tokens, skip_special_tokens=True)
    return KnowledgePackage("text", package.tokenizer, package.round, texts=texts)


def guard_package(package: KnowledgePackage, guardrail: Guardrail, tokenizer: Any) -> tuple[KnowledgePackage, int]:
    """The package with every text item filtered, and the number of guardrail actions (redactions + drops)."""
    if package.kind == "text":
        keys = list(package.texts)
        result = guardrail.filter_items([package.texts[k] for k in keys])
        texts = {k: t for k, t in zip(keys, result.items) if t is not None}
        return KnowledgePackage("text", package.tokenizer, package.round, texts=texts), result.actions
    keys = list(package.logits)
    decoded = [tokenizer.decode([int(t) for t in package.logits[k].tokens], skip_special_tokens=True) for k in keys]
    result = guardrail.filter_items(decoded)
    kept = {k: package.logits[k] for k, before, after in zip(keys, decoded, result.items) if after == before}
    dropped_whole = len(keys) - len(kept)
    # A redacted logit item is dropped whole: count one action per item touched, at least.
    actions = max(result.actions, dropped_whole)
    return KnowledgePackage("logits", package.tokenizer, package.round, logits=kept, k=package.k), actions
