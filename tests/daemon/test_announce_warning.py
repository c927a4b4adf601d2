"""The startup warning for a node that announces only loopback while its bootstrap peers are remote.

Config values only: the daemon is built, not run, so nothing dials the
remote (documentation-range) bootstrap address.
"""

import io
import json

from knexa_node.config import Config
from knexa_node.crypto import Signer
from knexa_node.daemon.daemon import Daemon, unreachable_announce
from knexa_node.daemon.logs import EventLog
from knexa_node.identity import NodeHome

REMOTE_BOOT = f"/ip4/203.0.113.7/tcp/4001/p2p/{Signer.generate().peer_id}"
LOOPBACK_BOOT = f"/ip4/127.0.0.1/tcp/4001/p2p/{Signer.generate().peer_id}"


def warnings_at_start(tmp_path, *, listen, announce, bootstrap):
    config = Config()
    config.node.listen, config.node.announce, config.node.bootstrap = listen, announce, bootstrap
    err = io.StringIO()
    daemon = Daemon(NodeHome(tmp_path), config, Signer.generate(), log=EventLog("json", out=io.StringIO(), err=err))
    daemon._warn_unreachable_announce()  # what run() calls once the listeners are up
    return [json.loads(line) for line in err.getvalue().splitlines() if json.loads(line)["event"] == "warning"]


def test_loopback_announce_with_a_remote_bootstrap_warns(tmp_path):
    (warning,) = warnings_at_start(tmp_path, listen=["/ip4/127.0.0.1/tcp/4001"], announce=["/ip4/127.0.0.1/tcp/4001"],
                                   bootstrap=[REMOTE_BOOT])
    assert "cannot dial back" in warning["problem"] and "node.announce" in warning["problem"]
    assert all("/ip4/127.0.0.1/" in a for a in warning["announce"])


def test_reachable_announce_or_local_bootstrap_does_not_warn(tmp_path):
    assert warnings_at_start(tmp_path, listen=["/ip4/127.0.0.1/tcp/4001"], announce=["/ip4/198.51.100.4/tcp/4001"],
                             bootstrap=[REMOTE_BOOT]) == []
    assert warnings_at_start(tmp_path, listen=["/ip4/127.0.0.1/tcp/4001"], announce=["/ip4/127.0.0.1/tcp/4001"],
                             bootstrap=[LOOPBACK_BOOT]) == []


def test_the_rule_itself():
    me = "/ip4/127.0.0.1/tcp/1/p2p/x"
    assert unreachable_announce([me], [REMOTE_BOOT]) is not None
    assert unreachable_announce([me, "/ip4/10.1.2.3/tcp/1/p2p/x"], [REMOTE_BOOT]) is None  # one reachable address suffices
    assert unreachable_announce([me], [LOOPBACK_BOOT, REMOTE_BOOT]) is not None  # one remote bootstrap is enough to warn
    assert unreachable_announce(["/ip6/::1/tcp/1/p2p/x"], [REMOTE_BOOT]) is not None
    assert unreachable_announce([me], []) is None  # a bootstrap node itself
