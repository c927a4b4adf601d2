"""Build the py-libp2p host of a node or CPM from its persisted identity.

Noise is the only security protocol offered (py-libp2p's ``new_host`` also
offers plaintext, TLS and SECIO unless told otherwise), Yamux the only muxer
(mplex moved ~25 MiB/s against Yamux's ~111 MiB/s here), and at most one
connection per peer (more makes ``connect()`` wait a fixed happy-eyeballs
delay of ~250 ms).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

import multiaddr
from libp2p import create_yamux_muxer_option, new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.network.config import ConnectionConfig
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from knexa_node.crypto import Signer
from knexa_node.net.inbound import fix_inbound_leak
from knexa_node.net.params import NetParams
from knexa_node.net.yamux_credit import batch_yamux_credit

MUXER = "/yamux/1.0.0"
SECURITY = str(NOISE_PROTOCOL_ID)


class HostError(Exception):
    """The host cannot be built or cannot listen (bad address, port in use)."""


def libp2p_key_pair(signer: Signer) -> KeyPair:
    """The libp2p key pair of ``signer``, checked to give the same peer ID."""
    # py-libp2p 0.8.1's Ed25519PrivateKey.from_bytes takes the 32-byte seed, not seed||public.
    private = Ed25519PrivateKey.from_bytes(signer.libp2p_private_key_bytes()[:32])
    pair = KeyPair(private, private.get_public_key())
    if private.get_public_key().to_bytes() != signer.public_key:
        raise HostError("libp2p derived a different public key from the identity")
    return pair


def parse_addrs(addrs: Sequence[str], what: str) -> list[multiaddr.Multiaddr]:
    out = []
    for addr in addrs:
        try:
            out.append(multiaddr.Multiaddr(addr))
        except Exception as exc:  # multiaddr raises several unrelated types
            raise HostError(f"{what}: malformed multiaddr {addr!r}: {exc}") from None
    return out


def build_host(signer: Signer, params: NetParams) -> IHost:
    """A host that is not yet listening; run it with ``host.run(listen_addrs)``."""
    batch_yamux_credit()
    key_pair = libp2p_key_pair(signer)
    listen = parse_addrs(params.listen, "listen")
    announce = parse_addrs(params.announce, "announce") or None
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)},
        muxer_opt=create_yamux_muxer_option(),
        listen_addrs=listen,
        announce_addrs=announce,
        connection_config=ConnectionConfig(
            max_connections_per_peer=1,
            max_connections=params.max_connections,
            min_connections=params.min_connections,
            low_watermark=params.min_connections,
            high_watermark=params.max_connections,
        ),
    )
    if host.get_id().to_base58() != signer.peer_id:
        raise HostError("host peer ID differs from the identity's peer ID")
    swarm = host.get_network()
    fix_inbound_leak(swarm)  # type: ignore[arg-type]
    # py-libp2p's AutoConnector dials every peerstore entry while below (low+high)/2
    # connections (175 dials by default): a consortium node connects only to the
    # peers that discovery chooses (knexa_node.net.discovery).
    swarm.auto_connector.maybe_connect = _no_auto_connect  # type: ignore[attr-defined]
    return host


async def _no_auto_connect() -> None:
    return None


def bound_addrs(host: IHost) -> list[str]:
    """The addresses the host really listens on (port 0 resolved), without /p2p."""
    return [str(addr) for addr in host.get_transport_addrs()]


def dialable_addrs(host: IHost) -> list[str]:
    """Addresses others can dial, with /p2p/<id>: announce addresses, else the bound ones
    with an unspecified IP (0.0.0.0) replaced by this machine's addresses."""
    peer_id = host.get_id().to_base58()
    announced = [str(a) for a in host.get_addrs()]
    raw = [a.split("/p2p/")[0] for a in announced] or bound_addrs(host)
    out: list[str] = []
    for addr in raw:
        if addr.startswith("/ip4/0.0.0.0/"):
            rest = addr[len("/ip4/0.0.0.0/"):]
            out += [f"/ip4/{ip}/{rest}" for ip in local_ipv4_addresses()]
        else:
            out.append(addr)
    return [f"{a}/p2p/{peer_id}" for a in dict.fromkeys(out)]


def local_ipv4_addresses() -> list[str]:
    ips = {"127.0.0.1"}
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            ips.add(str(info[4][0]))
    except OSError:
        pass
    return sorted(ips, key=lambda ip: (ip.startswith("127."), ip))
