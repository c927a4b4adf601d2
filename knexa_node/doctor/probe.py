"""Network checks: bootstrap peers, the CPM and clock skew.

While the daemon runs, a second host under the same identity would confuse
its peers, so the probe asks the daemon (control socket ``status``): which
bootstrap peers and whether the CPM are connected, and the skew seen on the
last round announcement. When it does not run, the probe starts a short-lived
libp2p host under the node's own identity on a loopback port, dials each
bootstrap peer and asks the CPM one signed ``ProposalQuery``: the signed
answer proves the CPM speaks knexa, tells whether it counts this node as a
member, and its timestamp gives the clock skew (proposals expire, so a clock
off by minutes loses rounds).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import trio
from libp2p.peer.id import ID

from knexa_node.config import Config
from knexa_node.crypto import Signer
from knexa_node.daemon.control import ControlError, call
from knexa_node.doctor.checks import Check
from knexa_node.identity import NodeHome
from knexa_node.net.network import Network, open_network
from knexa_node.net.params import NetParams
from knexa_node.net.protocols import CPM_PROTOCOL, STREAM_PROTOCOLS
from knexa_node.wire import Ack, ProposalList, ProposalQuery, WireError, open_envelope, seal_envelope

# Beyond this, signed messages may be judged stale or proposals expired early.
SKEW_WARN_S = 5.0
SKEW_FAIL_S = 60.0
DIAL_TIMEOUT_S = 10.0
IDENTIFY_WAIT_S = 2.0


def bootstrap_peer_ids(config: Config) -> list[str]:
    return [addr.rsplit("/p2p/", 1)[1] for addr in config.node.bootstrap if "/p2p/" in addr]


def skew_check(skew_s: float | None, source: str) -> Check:
    if skew_s is None:
        return Check("clock", "warn", f"clock skew unknown ({source})", "keep the clock synchronised (NTP)")
    level = "fail" if abs(skew_s) >= SKEW_FAIL_S else "warn" if abs(skew_s) >= SKEW_WARN_S else "ok"
    return Check("clock", level, f"clock {skew_s:+.1f} s against {source}",
                 "" if level == "ok" else "synchronise the clock (NTP): proposals and messages carry timestamps")


def checks_from_status(config: Config, status: dict[str, Any]) -> list[Check]:
    """The network verdicts of a running daemon, from its ``status``."""
    connected = {p["peer_id"] for p in status.get("connected_peers", [])}
    checks = [Check("daemon", "ok", f"running (pid {status.get('pid')}), {len(connected)} peers connected, "
                    f"DHT {status.get('dht_routing_table_size', 0)} entries")]
    for peer in bootstrap_peer_ids(config):
        if peer in connected:
            checks.append(Check("bootstrap", "ok", f"{peer} connected"))
        else:
            checks.append(Check("bootstrap", "warn", f"{peer} not connected",
                                "check that it runs and that its address and port are reachable from here"))
    cpm = config.consortium.cpm
    last = status.get("last_round") or {}
    if cpm:
        if cpm in connected or last.get("cpm") == cpm:
            checks.append(Check("cpm", "ok", f"{cpm} " + ("connected" if cpm in connected else "heard on gossip")))
        else:
            checks.append(Check("cpm", "warn", f"{cpm} neither connected nor heard yet",
                                "wait for a round, or stop the daemon and run doctor again to probe the CPM directly"))
    sent, received = last.get("sent_at"), last.get("received_at")
    skew = received - sent if isinstance(sent, (int, float)) and isinstance(received, (int, float)) else None
    checks.append(skew_check(skew, "the CPM's last round announcement" if skew is not None else "no round heard yet"))
    return checks


async def _probe_cpm(net: Network, signer: Signer, cpm: str) -> list[Check]:
    query = seal_envelope(signer, ProposalQuery(round=0)).to_bytes()
    started = time.time()
    try:
        raw = await net.request(cpm, CPM_PROTOCOL, query, timeout=DIAL_TIMEOUT_S)
        envelope, answer = open_envelope(raw, expect=(Ack, ProposalList))
    except WireError as exc:
        return [Check("cpm", "fail", f"{cpm} answered something that is not a knexa message: {exc}")]
    except Exception as exc:  # every transport failure is a verdict here, not a crash
        return [Check("cpm", "fail", f"{cpm} unreachable: {type(exc).__name__}: {exc}"[:300],
                      "check consortium.cpm, the CPM's address (DHT or bootstrap) and its port")]
    finished = time.time()
    if envelope.sender != cpm:
        return [Check("cpm", "fail", f"the answer was signed by {envelope.sender}, not {cpm}")]
    skew = (started + finished) / 2 - envelope.timestamp  # our clock minus the CPM's, at the answer
    if isinstance(answer, Ack) and not answer.ok:
        member = Check("cpm", "fail", f"{cpm} refused this node: {answer.code} ({answer.reason})",
                       "ask the consortium to add this node's peer ID to the CPM's members" if answer.code == "not-member" else "")
    else:
        member = Check("cpm", "ok", f"{cpm} answered in {finished - started:.2f} s and counts this node as a member")
    return [member, skew_check(skew, "the CPM")]


async def probe_network(config: Config, signer: Signer) -> list[Check]:
    """Dial the bootstrap peers and ask the CPM, from a short-lived host under this node's identity."""
    params = replace(NetParams.from_config(config), listen=("/ip4/127.0.0.1/tcp/0",), announce=())
    checks: list[Check] = []
    with trio.move_on_after(4 * DIAL_TIMEOUT_S + 10):
        async with open_network(signer, params) as net:
            for peer in bootstrap_peer_ids(config):
                try:
                    with trio.fail_after(DIAL_TIMEOUT_S):
                        await net.connect(peer)
                except Exception as exc:  # unreachable, refused, timed out: all verdicts
                    checks.append(Check("bootstrap", "fail", f"{peer} unreachable: {type(exc).__name__}: {exc}"[:300],
                                        "check the bootstrap address and that the port is open"))
                    continue
                checks.append(_bootstrap_verdict(peer, await _knexa_protocols(net, peer)))
            if config.consortium.cpm:
                checks += await _probe_cpm(net, signer, config.consortium.cpm)
            return checks
    checks.append(Check("network", "fail", "the network probe did not finish in time"))
    return checks


async def _knexa_protocols(net: Network, peer: str) -> list[str] | None:
    """The knexa stream protocols ``peer`` announced through identify (None: it announced none in time)."""
    store = net.host.get_peerstore()
    with trio.move_on_after(IDENTIFY_WAIT_S):
        while True:
            try:
                announced = store.get_protocols(ID.from_base58(peer))
            except Exception:  # py-libp2p raises when it knows nothing of the peer yet
                announced = []
            if announced:
                return [p for p in announced if p in STREAM_PROTOCOLS]
            await trio.sleep(0.1)
    return None


def _bootstrap_verdict(peer: str, knexa: list[str] | None) -> Check:
    if knexa is None:
        return Check("bootstrap", "ok", f"{peer} reachable (it announced no protocols in time)")
    if not knexa:
        return Check("bootstrap", "warn", f"{peer} reachable but announces no knexa protocol",
                     "a relay-only node is fine; otherwise check that it runs knexa-node with a model")
    return Check("bootstrap", "ok", f"{peer} reachable, speaks {', '.join(sorted(knexa))}")


def network_checks(home: NodeHome, config: Config, signer: Signer | None) -> list[Check]:
    """Ask the running daemon, or probe with a short-lived host when none runs."""
    try:
        status = call(home.control_socket, "status", timeout=10)
    except ControlError:
        status = None
    if status is not None:
        return checks_from_status(config, status)
    if signer is None:
        return []
    if not config.node.bootstrap and not config.consortium.cpm:
        return [Check("network", "ok", "no bootstrap peers and no CPM to probe")]
    return trio.run(probe_network, config, signer)
