"""Config validation errors, identity persistence, and peer ID interop with libp2p."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from libp2p.crypto.ed25519 import Ed25519PublicKey
from libp2p.peer.id import ID

from knexa_node.config import Config, ConfigError, load_config, parse_config, render_config, render_reference
from knexa_node.crypto import CryptoError, Signer, public_key_from_peer_id, verify
from knexa_node.identity import IdentityError, NodeHome, create_identity, load_identity

PEER = Signer(bytes(32)).peer_id


def test_rendered_template_parses_back_to_defaults() -> None:
    assert parse_config(render_config(Config())) == Config()


def test_reference_lists_every_key() -> None:
    reference = render_reference()
    for key in ("listen", "bootstrap", "cpm", "dp_enabled", "lora_rank", "policy"):
        assert f"`{key}`" in reference


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("[node]\nlisten = ['/ip4/1.2.3.4/tcp/x']", "node.listen[0]", "malformed multiaddr"),
        ("[node]\nbootstrap = ['/ip4/1.2.3.4/tcp/1']", "node.bootstrap[0]", "/p2p/"),
        ("[consortium]\ncpm = 'QmNotAnEd25519Key'", "consortium.cpm", "malformed peer ID"),
        ("[node]\ncolour = 'red'", "node.colour", "unknown key"),
        ("[nodes]\nname = 'x'", "nodes", "unknown section"),
        ("[model]\nlora_rank = 'eight'", "model.lora_rank", "integer"),
        ("[model]\nlora_rank = 0", "model.lora_rank", "between"),
        ("[privacy]\ndp_enabled = 1", "privacy.dp_enabled", "true or false"),
        ("[cpm]\npolicy = 'best'", "cpm.policy", "one of"),
    ],
)
def test_invalid_values_name_file_and_key(text: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "/etc/knexa/config.toml")
    message = str(info.value)
    assert info.value.key == key
    assert message.startswith("/etc/knexa/config.toml: key " + key)
    assert fragment in message
    assert "\n" not in message


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        parse_config("[node\nname=", tmp_path / "c.toml")
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml")


def test_valid_bootstrap_and_members() -> None:
    config = parse_config(f"[node]\nbootstrap = ['/ip4/127.0.0.1/tcp/4001/p2p/{PEER}']\n[consortium]\nmembers = ['{PEER}']\ncpm = '{PEER}'")
    assert config.consortium.members == [PEER]


def test_identity_is_stable_private_and_not_overwritten(tmp_path: Path) -> None:
    home = NodeHome(tmp_path / "home")
    created = create_identity(home)
    assert created.peer_id.startswith("12D3KooW")
    assert stat.S_IMODE(home.key_file.stat().st_mode) == 0o600
    assert load_identity(home).peer_id == created.peer_id
    with pytest.raises(IdentityError, match="already exists"):
        create_identity(home)
    assert load_identity(home).peer_id == created.peer_id
    replaced = create_identity(home, force=True)
    assert replaced.peer_id != created.peer_id


def test_identity_errors(tmp_path: Path) -> None:
    home = NodeHome(tmp_path)
    with pytest.raises(IdentityError, match="no identity"):
        load_identity(home)
    create_identity(home)
    os.chmod(home.key_file, 0o644)
    with pytest.raises(IdentityError, match="readable by others"):
        load_identity(home)
    os.chmod(home.key_file, 0o600)
    home.key_file.write_bytes(b"garbage")
    with pytest.raises(IdentityError, match="not a libp2p Ed25519 private key"):
        load_identity(home)


def test_peer_id_matches_libp2p_and_signatures_verify() -> None:
    signer = Signer.generate()
    libp2p_id = ID.from_pubkey(Ed25519PublicKey.from_bytes(signer.public_key)).to_base58()
    assert signer.peer_id == libp2p_id
    assert public_key_from_peer_id(libp2p_id) == signer.public_key
    signature = signer.sign(b"hello")
    verify(signer.peer_id, b"hello", signature)
    with pytest.raises(CryptoError):
        verify(signer.peer_id, b"hellO", signature)
    with pytest.raises(CryptoError):
        verify(Signer.generate().peer_id, b"hello", signature)
    assert Signer.from_protobuf(signer.to_protobuf()).peer_id == signer.peer_id
