"""A node's home directory and its persistent Ed25519 identity.

Home layout (``$KNEXA_HOME`` or ``~/.knexa`` by default)::

    identity.key     libp2p-serialized Ed25519 private key, mode 0600
    config.toml      the node's configuration (see :mod:`knexa_node.config`)
    control.sock     the daemon's local control endpoint (while running)
    daemon.lock      held by the running daemon
    state/           adapter, optimizer, replay cache, CPM state
    audit/           the signed hash-chained exchange log
    logs/
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from knexa_node.crypto import CryptoError, Signer
from knexa_node.fsutil import atomic_write_bytes, private_dir

KEY_FILE = "identity.key"
CONFIG_FILE = "config.toml"


class IdentityError(Exception):
    """The identity key file is missing, unreadable, malformed or unsafe."""


def default_home() -> Path:
    env = os.environ.get("KNEXA_HOME")
    return Path(env).expanduser() if env else Path.home() / ".knexa"


@dataclass(frozen=True)
class NodeHome:
    """Paths inside one node's home directory."""

    root: Path

    @property
    def key_file(self) -> Path:
        return self.root / KEY_FILE

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def control_socket(self) -> Path:
        return self.root / "control.sock"

    @property
    def lock_file(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def audit_dir(self) -> Path:
        return self.root / "audit"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def create_dirs(self) -> None:
        """The home and its subdirectories, all 0700 (also those that existed with a looser mode)."""
        for directory in (self.root, self.state_dir, self.audit_dir, self.logs_dir):
            private_dir(directory)


def create_identity(home: NodeHome, *, force: bool = False) -> Signer:
    """Create a new key in ``home``; refuse to overwrite an existing one unless ``force``."""
    if home.key_file.exists() and not force:
        raise IdentityError(f"{home.key_file}: an identity already exists (use --force to replace it)")
    home.create_dirs()
    signer = Signer.generate()
    atomic_write_bytes(home.key_file, signer.to_protobuf(), mode=0o600)
    return signer


def load_identity(home: NodeHome) -> Signer:
    """Load the identity of ``home``; errors name the file and the problem."""
    path = home.key_file
    try:
        info = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(f"{path}: no identity (run `knexa-node init --home {home.root}` first)") from None
    except OSError as exc:
        raise IdentityError(f"{path}: cannot read identity: {exc.strerror}") from None
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise IdentityError(f"{path}: key file is readable by others (mode {stat.S_IMODE(info.st_mode):o}); run chmod 600")
    try:
        return Signer.from_protobuf(data)
    except CryptoError as exc:
        raise IdentityError(f"{path}: {exc}") from None
