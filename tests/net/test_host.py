"""The host: identity-derived peer ID, Noise only, Yamux, real bound ports, clean close."""

import socket

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

from knexa_node.crypto import Signer
from knexa_node.net.host import MUXER, SECURITY, HostError, build_host
from knexa_node.net import network as network_module
from knexa_node.net.network import Network, open_network
from knexa_node.net.params import NetParams
from knexa_node.testing import swarm, loopback_params


def test_peer_id_comes_from_the_identity():
    signer = Signer.generate()
    host = build_host(signer, loopback_params())
    assert host.get_id().to_base58() == signer.peer_id


def test_malformed_listen_address_is_a_typed_error():
    with pytest.raises(HostError, match="listen"):
        build_host(Signer.generate(), NetParams(listen=("/ip4/1.2.3/tcp/x",)))


async def test_listens_on_a_real_port_and_closes_it():
    async with open_network(Signer.generate(), loopback_params()) as net:
        (addr,) = net.listen_addrs()
        port = int(multiaddr.Multiaddr(addr).value_for_protocol("tcp"))
        assert port > 0
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


async def test_connection_uses_noise_and_yamux():
    async with swarm(2) as (a, b):
        (conn,) = b.host.get_network().connections[a.host.get_id()]
        muxed = conn.muxed_conn
        assert type(muxed).__name__ == "Yamux" and MUXER == "/yamux/1.0.0"
        assert str(muxed.negotiated_security_protocol) == SECURITY == "/noise"


async def test_a_plaintext_only_dialer_is_refused():
    async with swarm(1, connect="none") as (target,):
        key_pair = create_new_key_pair()
        plain = new_host(key_pair=key_pair, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)},
                         listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")])
        async with plain.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            try:
                with pytest.raises(Exception), trio.fail_after(10):
                    await plain.connect(info_from_p2p_addr(target.host.get_addrs()[0]))
                assert target.host.get_connected_peers() == []
            finally:
                await plain.close()


async def test_a_stopping_network_closes_its_listeners_while_its_services_still_run(monkeypatch):
    """Peers redial a node as soon as it drops them: if its listener outlived the swarm's service, each such
    dial became a py-libp2p traceback in the stopping daemon's log (the re-addressing scenario saw it)."""
    net = Network(Signer.generate(), loopback_params())
    seen = []
    real = network_module._stop_listening

    async def spy(host):
        running = net.dht.manager.is_running
        await real(host)
        seen.append((running, port_open(port)))

    monkeypatch.setattr(network_module, "_stop_listening", spy)
    async with trio.open_nursery() as nursery:
        await nursery.start(net.serve)
        (addr,) = net.listen_addrs()
        port = int(multiaddr.Multiaddr(addr).value_for_protocol("tcp"))
        assert port_open(port)
        nursery.cancel_scope.cancel()
    assert seen == [(True, False)]  # begun while the services still ran, and closed


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True
