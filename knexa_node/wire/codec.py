"""msgpack encoding with hard limits, for bytes that come from strangers."""

from __future__ import annotations

from typing import Any

import msgpack

from knexa_node.wire.errors import WireError

MAX_DEPTH = 8
# A knowledge package payload travels in chunks; a single message is capped well below that.
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _depth_ok(value: Any, depth: int) -> bool:
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, list):
        return all(_depth_ok(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(_depth_ok(v, depth + 1) for v in value.values())
    return True


def unpack(data: bytes, *, max_size: int = DEFAULT_MAX_MESSAGE) -> Any:
    """Decode one msgpack value; any problem raises :class:`WireError`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError("not-bytes", type(data).__name__)
    if len(data) > max_size:
        raise WireError("too-large", f"{len(data)} bytes > limit {max_size}")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=1 << 20,
            max_map_len=1024,
            max_ext_len=0,
        )
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise WireError("malformed", type(exc).__name__) from None
    except (ValueError, TypeError, UnicodeDecodeError, OverflowError, RecursionError) as exc:
        raise WireError("malformed", f"{type(exc).__name__}: {exc}"[:200]) from None
    if not _depth_ok(value, 0):
        raise WireError("too-deep", f"nesting deeper than {MAX_DEPTH}")
    return value
