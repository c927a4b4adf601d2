"""The node's ``config.toml``: schema, validation with one-line errors, and a commented template.

The schema is a set of dataclasses whose fields carry their help text, so
that the template written by ``knexa-node init`` and the configuration
reference in ``docs/configuration.md`` are generated from the same source
(:func:`render_reference`).

Every problem raises :class:`ConfigError` naming the file, the key and what
is wrong; the CLI prints it on one line and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, get_args, get_origin, get_type_hints

import multiaddr

from knexa_node.crypto import is_valid_peer_id
from knexa_node.profile import WEAK_PASS1


class ConfigError(Exception):
    """A config file is missing, unreadable, or invalid. ``str()`` is one line."""

    def __init__(self, path: Path | str, key: str | None, problem: str) -> None:
        self.path, self.key, self.problem = str(path), key, problem
        where = f"{self.path}: key {key}" if key else self.path
        super().__init__(f"{where}: {problem}")


# --- validators (return an error message or None) -------------------------------------------

def _multiaddr(value: str) -> str | None:
    try:
        multiaddr.Multiaddr(value)
    except Exception as exc:  # multiaddr raises several unrelated types for bad input
        return f"malformed multiaddr {value!r}: {exc}"
    return None


def _bootstrap_addr(value: str) -> str | None:
    problem = _multiaddr(value)
    if problem:
        return problem
    if "/p2p/" not in value:
        return f"bootstrap address {value!r} must end with /p2p/<peer ID>"
    peer = value.rsplit("/p2p/", 1)[1]
    return _peer_id(peer)


def _peer_id(value: str) -> str | None:
    if value and not is_valid_peer_id(value):
        return f"malformed peer ID {value!r} (expected an Ed25519 peer ID, 12D3KooW...)"
    return None


def _choice(*options: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in options else f"must be one of {', '.join(options)}; got {value!r}"

    return check


def _range(low: float, high: float) -> Callable[[float], str | None]:
    def check(value: float) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high}; got {value}"

    return check


def _name(value: str) -> str | None:
    ok = value and len(value) <= 64 and all(c.isalnum() or c in "-_." for c in value)
    return None if ok else f"must be 1-64 characters of letters, digits, '-', '_' or '.'; got {value!r}"


def opt(default: Any, help: str, check: Callable[[Any], str | None] | None = None, *, each: bool = False) -> Any:
    """A config field with its help text and an optional validator (``each``: per list item)."""
    meta = {"help": help, "check": check, "each": each}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# --- schema ---------------------------------------------------------------------------------

@dataclass
class NodeSection:
    """Identity of this node on the network."""

    name: str = opt("knexa-node", "Human-readable name of this organization's node (logs, tables).", _name)
    listen: list[str] = opt(["/ip4/0.0.0.0/tcp/4001"], "Multiaddrs to listen on (TCP; Noise + Yamux).", _multiaddr, each=True)
    announce: list[str] = opt([], "Addresses to announce instead of the listen addresses (hosts behind NAT).", _multiaddr, each=True)
    bootstrap: list[str] = opt([], "Bootstrap peers, /ip4/<ip>/tcp/<port>/p2p/<peer ID>.", _bootstrap_addr, each=True)


@dataclass
class ConsortiumSection:
    """Who this node trusts."""

    name: str = opt("default", "Consortium name; gossip topics are knexa/<name>/....", _name)
    cpm: str = opt("", "Peer ID of the trusted CPM (matchmaker). Proposals signed by any other key are refused.", _peer_id)
    members: list[str] = opt([], "Allow-list of member peer IDs. Empty: accept any peer (demo only).", _peer_id, each=True)


@dataclass
class ModelSection:
    """The local model and its LoRA adapter."""

    path: str = opt("", "A local Hugging Face causal-LM directory, embedded:<name> for a built-in model (llama-tiny, qwen2-tiny, neox-tiny, gpt2-tiny), or pretrained:smollm2-135m (imported from its installed package into the model cache on first use). Empty: this node relays and bootstraps but does not learn.")
    lora_rank: int = opt(8, "LoRA rank.", _range(1, 512))
    device: str = opt("auto", "auto, cpu or cuda.", _choice("auto", "cpu", "cuda"))
    prompt_format: str = opt("auto", "How the model is prompted: raw (continue the code), chat (one user turn, the answer a code block), or auto (chat when the tokenizer has a chat template).", _choice("auto", "raw", "chat"))
    max_memory_gb: float = opt(0.0, "Refuse a model whose weights need more than this (0: no limit).", _range(0, 4096))


@dataclass
class DataSection:
    """Private and public data (JSONL of prompt, tests, entry_point, category)."""

    train: str = opt("", "Private training problems (JSONL). Empty: the embedded task's shard.")
    validation: str = opt("", "Private validation split (JSONL). Empty: derived from the training set.")
    transfer: str = opt("", "Public transfer set shared by the consortium (JSONL). Empty: embedded.")
    dev: str = opt("", "Public dev set over all categories, for the reward on what the student lacks (JSONL). Empty: embedded.")
    test: str = opt("", "Local test set for Pass@k in profiles and reports (JSONL). Empty: embedded.")
    seed: int = opt(0, "Seed of the embedded task and of this node's shard when no files are given.", _range(0, 2**31))
    shard: int = opt(0, "This node's shard index in the embedded task's Dirichlet split.", _range(0, 4096))
    shards: int = opt(1, "Number of shards in the embedded task's split (the consortium size).", _range(1, 4096))
    shard_size: int = opt(0, "Private problems in this node's embedded shard (0: an equal share of the pool).", _range(0, 10_000_000))
    dirichlet_alpha: float = opt(0.3, "Skew of the embedded split over categories (smaller: more skewed).", _range(0.001, 1000))
    transfer_per_category: int = opt(16, "Public transfer prompts per category in the embedded task (more: a further draw; the private, dev and test sets stay the same). Every member must use the same value.", _range(1, 1024))


@dataclass
class LearningSection:
    """Local training and distillation (paper defaults)."""

    lr: float = opt(3e-5, "AdamW learning rate.", _range(0, 1))
    batch_size: int = opt(8, "Micro-batch size.", _range(1, 4096))
    generation_batch_size: int = opt(32, "Prompts decoded together when evaluating and building packages (larger is faster on a GPU and needs more memory).", _range(1, 4096))
    grad_accumulation: int = opt(1, "Gradient accumulation steps.", _range(1, 1024))
    warmup_fraction: float = opt(0.02, "Share of steps used for linear warm-up.", _range(0, 1))
    alpha_start: float = opt(0.2, "Distillation weight a_kd in the first round (Eq. 2).", _range(0, 1))
    alpha_end: float = opt(0.5, "Distillation weight a_kd in the last round.", _range(0, 1))
    temperature_start: float = opt(1.5, "Logit distillation temperature in the first round.", _range(0.1, 20))
    temperature_end: float = opt(2.5, "Logit distillation temperature in the last round.", _range(0.1, 20))
    schedule_rounds: int = opt(10, "Rounds over which a_kd and the temperature move from start to end.", _range(1, 100000))
    kd_filter: str = opt("weak", "Which teacher answers to distil: all, or weak (only categories this node lacks; less forgetting).", _choice("all", "weak"))
    warmup_epochs: int = opt(0, "Local epochs on first start, before joining any round (the organization's starting model).", _range(0, 1000))
    epochs_per_round: int = opt(1, "Local epochs per round.", _range(0, 1000))
    reward_on: str = opt("dev", "Where Eq. 3's losses are measured: dev (public set over all categories) or validation (private split).", _choice("dev", "validation"))
    reward: str = opt("covered", "The reward a student reports: covered (its public dev-set Pass@1 gain on the categories the package covered: new knowledge) or eq3 (the paper's loss difference, on reward_on).", _choice("covered", "eq3"))
    verify: str = opt("tests", "Teacher answers sent: tests (only answers that pass the transfer problems' public tests, marked verified) or off (every greedy answer, the paper's behaviour).", _choice("tests", "off"))
    teacher_samples: int = opt(4, "Sampled answers a teacher decodes for a tested prompt whose greedy answer failed (besides the greedy one).", _range(0, 64))
    teacher_temperature: float = opt(0.8, "Sampling temperature of those answers.", _range(0.05, 5))
    answers_per_prompt: int = opt(1, "Verified answers sent per transfer prompt at most (m).", _range(1, 64))
    untested: str = opt("confidence", "Transfer prompts without tests: confidence (send the greedy answer when its mean token log-probability reaches min_mean_logprob), keep, or drop.", _choice("confidence", "keep", "drop"))
    min_mean_logprob: float = opt(-0.35, "The confidence filter's floor, in nats per token.", _range(-100, 0))
    check_received: bool = opt(True, "Re-run the public tests of every received item in this node's sandbox before training on it; failures are dropped and counted.")
    exchange_budget: int = opt(0, "Transfer prompts a teacher answers per request at most (the requested categories first; 0: all).", _range(0, 1_000_000))
    weak_pass1: float = opt(WEAK_PASS1, "A category is asked for when this node's public dev-set Pass@1 there is below this.", _range(0, 1.0001))
    distill_epochs: int = opt(2, "Passes over the received items in one distillation phase.", _range(1, 100))
    received_memory: int = opt(2000, "Verified received answers kept and replayed in later local epochs (0: none; they are public problems, checked here).", _range(0, 1_000_000))
    skip_held: bool = opt(True, "Name in each exchange request the transfer prompts this node already holds a verified answer to, so that teachers spend their budget on prompts it has not been taught (the teacher learns which public prompts those are).")
    replay_after: float = opt(1.0, "Steps on this node's own training data (and held answers) that end a distillation phase, per distillation step: a phase ending on foreign answers alone cost the node its own categories (0: none).", _range(0, 100))
    distill_guard: str = opt("dev", "dev: undo a distillation phase after which this node's public dev-set Pass@1 fell (its verified answers stay in replay memory); off: keep every phase.", _choice("dev", "off"))
    reward_gamma: float = opt(1.0, "gamma in r = gamma (L_pre - L_post) - delta KB (Eq. 3).", _range(0, 1e6))
    reward_delta: float = opt(1e-6, "delta (per kilobyte) in Eq. 3.", _range(0, 1e3))


@dataclass
class ExchangeSection:
    """Knowledge packages."""

    protocol: str = opt("text", "Preferred package kind: text (any tokenizers) or logits (same tokenizer only).", _choice("text", "logits"))
    max_package_mb: float = opt(256.0, "Refuse packages larger than this.", _range(0.001, 65536))
    timeout_s: float = opt(600.0, "Give up an exchange after this many seconds.", _range(1, 86400))


@dataclass
class PrivacySection:
    """Guardrail and differential privacy on outgoing packages."""

    guardrail: bool = opt(True, "Redact secrets, personal data and verbatim private text from outgoing packages.")
    guardrail_ngram: int = opt(12, "Drop an item sharing an n-gram of this many tokens with the private data.", _range(4, 256))
    dp_enabled: bool = opt(False, "Add calibrated Gaussian noise to released logits (off by default).")
    dp_epsilon_per_exchange: float = opt(1.0, "epsilon spent by one exchange.", _range(1e-4, 1e3))
    dp_delta: float = opt(1e-5, "delta of the (epsilon, delta) guarantee.", _range(1e-12, 0.1))
    dp_clip_norm: float = opt(1.0, "L2 bound of each released position's log-probabilities.", _range(1e-6, 1e6))
    dp_budget_total: float = opt(10.0, "Total epsilon this node may spend; exchanges beyond are refused.", _range(0, 1e6))
    dp_budget_per_peer: float = opt(5.0, "epsilon this node may spend on any one peer.", _range(0, 1e6))


@dataclass
class MetricsSection:
    """Prometheus metrics (optional)."""

    enabled: bool = opt(False, "Serve Prometheus metrics.")
    address: str = opt("127.0.0.1:9464", "host:port of the metrics endpoint (keep it on loopback).")


@dataclass
class DashboardSection:
    """A read-only web page of this daemon's state (optional)."""

    enabled: bool = opt(False, "Serve the dashboard page and its JSON (read-only).")
    address: str = opt("127.0.0.1:8470", "host:port of the dashboard (loopback; port 0 picks a free one).")
    allow_remote: bool = opt(False, "Allow a non-loopback address (then a token is required).")
    token: str = opt("", "Secret that requests must carry (?token= or Authorization: Bearer); required off loopback.")


@dataclass
class CpmSection:
    """Matchmaker settings (used by knexa-cpm only)."""

    policy: str = opt("knexa", "Matchmaking policy: knexa, linucb, random, heuristic, or local-only (pairs nobody: the LocalOnly baseline).", _choice("knexa", "linucb", "random", "heuristic", "local-only"))
    pairs_per_round: int = opt(0, "Pairs proposed per round (0: half the members with one teacher per student; teachers_per_student times the members otherwise).", _range(0, 100000))
    competence: bool = opt(True, "The knexa policy reads each node's public dev-set Pass@1 per category (sent with its profile) and the pair history: teacher strong where the student is weak. Off: the paper's context (a state saved with the other setting does not load).")
    package_categories: float = opt(0.0, "What one package carries, in categories' worth of transfer prompts: the members' learning.exchange_budget divided by data.transfer_per_category (0: everything a student asks for, the members' default). The knexa policy counts only the new answers that fit.", _range(0, 1024))
    teachers_per_student: int = opt(1, "c: teachers per student and students per teacher in a round (1: the paper's disjoint pairs; a student distils from all its packages in one phase).", _range(1, 64))
    round_deadline_s: float = opt(300.0, "Seconds to wait for profiles before pairing anyway.", _range(0.1, 86400))
    quorum: float = opt(1.0, "Share of members whose profiles trigger pairing before the deadline.", _range(0.01, 1))
    proposal_ttl_s: float = opt(900.0, "Seconds a proposal stays valid.", _range(1, 86400))
    auto_rounds: int = opt(0, "Run this many rounds by itself, each after the previous one closed (0: rounds are opened by `knexa-cpm round open`).", _range(0, 1000000))
    round_gap_s: float = opt(0.0, "Pause between automatic rounds.", _range(0, 86400))


@dataclass
class Config:
    node: NodeSection = field(default_factory=NodeSection)
    consortium: ConsortiumSection = field(default_factory=ConsortiumSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    learning: LearningSection = field(default_factory=LearningSection)
    exchange: ExchangeSection = field(default_factory=ExchangeSection)
    privacy: PrivacySection = field(default_factory=PrivacySection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    dashboard: DashboardSection = field(default_factory=DashboardSection)
    cpm: CpmSection = field(default_factory=CpmSection)


# --- loading --------------------------------------------------------------------------------

def _convert(path: Path, key: str, expected: Any, value: Any) -> Any:
    origin = get_origin(expected)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(path, key, f"must be a list, got {type(value).__name__}")
        (item_type,) = get_args(expected)
        return [_convert(path, f"{key}[{i}]", item_type, item) for i, item in enumerate(value)]
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, key, f"must be true or false, got {value!r}")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, key, f"must be an integer, got {value!r}")
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(path, key, f"must be a finite number, got {value!r}")
        return float(value)
    if expected is str:
        if not isinstance(value, str):
            raise ConfigError(path, key, f"must be a string, got {value!r}")
        return value
    raise AssertionError(f"unsupported config type {expected}")


def _build_section(path: Path, section_name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(path, section_name, "must be a table ([" + section_name + "])")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(path, f"{section_name}.{unknown[0]}", f"unknown key (known: {', '.join(fields)})")
    values = {}
    for name, value in raw.items():
        key = f"{section_name}.{name}"
        converted = _convert(path, key, hints[name], value)
        check, each = fields[name].metadata.get("check"), fields[name].metadata.get("each")
        if check:
            items = list(enumerate(converted)) if each else [(None, converted)]
            for index, item in items:
                problem = check(item)
                if problem:
                    raise ConfigError(path, key if index is None else f"{key}[{index}]", problem)
        values[name] = converted
    return cls(**values)


def parse_config(text: str, path: Path | str = "<config>") -> Config:
    path = Path(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"invalid TOML: {exc}") from None
    sections = {f.name: f for f in dataclasses.fields(Config)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(path, unknown[0], f"unknown section (known: {', '.join(sections)})")
    hints = get_type_hints(Config)
    built = {name: _build_section(path, name, hints[name], raw[name]) for name in raw}
    return Config(**built)


def load_config(path: Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found (run `knexa-node init` to create it)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from None
    return parse_config(text, path)


# --- rendering ------------------------------------------------------------------------------

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def render_config(config: Config) -> str:
    """The config as TOML, with every key's help text as a comment above it."""
    lines = ["# knexa node configuration. Every key is optional; shown values are in effect.", ""]
    for section in dataclasses.fields(Config):
        value = getattr(config, section.name)
        lines.append(f"# {type(value).__doc__}")
        lines.append(f"[{section.name}]")
        for f in dataclasses.fields(value):
            lines.append(f"# {f.metadata['help']}")
            lines.append(f"{f.name} = {_toml_value(getattr(value, f.name))}")
        lines.append("")
    return "\n".join(lines)


def render_reference() -> str:
    """Markdown reference of every key, generated from the schema."""
    out = ["# Configuration reference", "", "Generated from `knexa_node/config.py` (`knexa-node config-reference`).", ""]
    defaults = Config()
    for section in dataclasses.fields(Config):
        value = getattr(defaults, section.name)
        out += [f"## [{section.name}]", "", type(value).__doc__ or "", "", "| key | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(value):
            out.append(f"| `{f.name}` | `{_toml_value(getattr(value, f.name))}` | {f.metadata['help']} |")
        out.append("")
    return "\n".join(out)
