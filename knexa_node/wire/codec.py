"""msgpack encoding, and a decoder for bytes from strangers that spends budgets while it decodes.

Encoding is msgpack's own. Decoding is :class:`Reader`, a pull reader over
one buffer: it looks at the next value's type and length *before* building
anything, so a container that would exceed the object budget, a string over
its length limit or a nesting over :data:`MAX_DEPTH` is refused at its
header, not after a few hundred MiB of Python objects exist (msgpack's own
``unpackb`` builds the whole value first; 4 MiB of one-byte empty maps
become ~290 MiB). :func:`unpack` decodes any value under an object budget;
schema-driven decoders (the knowledge package) pull exactly the fields they
expect. Duplicate map keys and extension types are refused.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from knexa_node.wire.errors import WireError

MAX_DEPTH = 8
# A knowledge package payload travels in chunks; a single message is capped well below that.
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024
# Values (scalars and containers) one message may hold: a ProposalList of 4096 proposals, with room.
DEFAULT_MAX_OBJECTS = 16 * 1024
# The largest integer a counter, size or round number may hold on the wire: exact as a float (JSON, JavaScript).
MAX_INT = 2**53 - 1

NIL, BOOL, INT, FLOAT, STR, BIN, ARRAY, MAP, EXT = "nil", "bool", "int", "float", "str", "bin", "array", "map", "ext"


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _kind(first: int) -> str:
    if first <= 0x7F or first >= 0xE0 or 0xCC <= first <= 0xD3:
        return INT
    if first <= 0x8F or first in (0xDE, 0xDF):
        return MAP
    if first <= 0x9F or first in (0xDC, 0xDD):
        return ARRAY
    if first <= 0xBF or first in (0xD9, 0xDA, 0xDB):
        return STR
    if first == 0xC0:
        return NIL
    if first in (0xC2, 0xC3):
        return BOOL
    if first in (0xC4, 0xC5, 0xC6):
        return BIN
    if first in (0xCA, 0xCB):
        return FLOAT
    if first == 0xC1:
        raise WireError("malformed", "byte 0xc1 is never used by msgpack")
    return EXT


# first byte -> (struct of the length or value that follows, or None for a length held in the first byte)
_FOLLOW = {
    0xCC: struct.Struct(">B"), 0xCD: struct.Struct(">H"), 0xCE: struct.Struct(">I"), 0xCF: struct.Struct(">Q"),
    0xD0: struct.Struct(">b"), 0xD1: struct.Struct(">h"), 0xD2: struct.Struct(">i"), 0xD3: struct.Struct(">q"),
    0xCA: struct.Struct(">f"), 0xCB: struct.Struct(">d"),
    0xD9: struct.Struct(">B"), 0xDA: struct.Struct(">H"), 0xDB: struct.Struct(">I"),
    0xC4: struct.Struct(">B"), 0xC5: struct.Struct(">H"), 0xC6: struct.Struct(">I"),
    0xDC: struct.Struct(">H"), 0xDD: struct.Struct(">I"), 0xDE: struct.Struct(">H"), 0xDF: struct.Struct(">I"),
}


class Reader:
    """Pulls msgpack values out of one buffer, checking every length against what is left before using it.

    ``max_objects`` is the number of values (scalars and containers) the
    reader will produce in all; every method raises :class:`WireError` and
    nothing else.
    """

    def __init__(self, data: bytes | bytearray | memoryview, *, max_objects: int = DEFAULT_MAX_OBJECTS) -> None:
        self._view = memoryview(data).cast("B")
        self._pos = 0
        self.objects_left = max_objects

    @property
    def position(self) -> int:
        return self._pos

    def at_end(self) -> bool:
        return self._pos == len(self._view)

    def end(self) -> None:
        """Refuse trailing bytes after the value(s) read."""
        if not self.at_end():
            raise WireError("malformed", f"{len(self._view) - self._pos} trailing bytes")

    def spend(self, objects: int) -> None:
        """Take ``objects`` values from the budget, or refuse before any of them is built."""
        if objects > self.objects_left:
            raise WireError("too-many-objects", f"{objects} more values, {self.objects_left} left of the budget")
        self.objects_left -= objects

    def peek(self) -> str:
        """The type of the next value (``int``, ``str``, ``map``, ...), without consuming it."""
        if self._pos >= len(self._view):
            raise WireError("malformed", "truncated: a value was expected")
        return _kind(self._view[self._pos])

    def _take(self, size: int) -> memoryview:
        end = self._pos + size
        if size < 0 or end > len(self._view):
            raise WireError("malformed", f"truncated: {size} bytes announced, {len(self._view) - self._pos} left")
        chunk = self._view[self._pos:end]
        self._pos = end
        return chunk

    def _head(self) -> tuple[int, int | float | None]:
        """Consume the first byte and what follows it (a length or a fixed-size value)."""
        first = self._take(1)[0]
        follow = _FOLLOW.get(first)
        return first, (follow.unpack(self._take(follow.size))[0] if follow else None)

    def _expect(self, kind: str, what: str) -> None:
        if self.peek() != kind:
            raise WireError("bad-type", f"{what}: expected {kind}, found {self.peek()}")

    def array_header(self, max_len: int, what: str = "array") -> int:
        """Consume an array header; its length is checked against ``max_len`` and spent from the budget."""
        self._expect(ARRAY, what)
        first, length = self._head()
        n = int(length) if length is not None else first & 0x0F
        if n > max_len:
            raise WireError("too-long", f"{what}: {n} entries > limit {max_len}")
        self.spend(n)
        return n

    def map_header(self, max_len: int, what: str = "map") -> int:
        """Consume a map header; its 2n keys and values are spent from the budget."""
        self._expect(MAP, what)
        first, length = self._head()
        n = int(length) if length is not None else first & 0x0F
        if n > max_len:
            raise WireError("too-long", f"{what}: {n} entries > limit {max_len}")
        self.spend(2 * n)
        return n

    def _raw(self, kind: str, max_len: int, what: str) -> memoryview:
        self._expect(kind, what)
        first, length = self._head()
        n = int(length) if length is not None else first & 0x1F
        if n > max_len:
            raise WireError("too-long", f"{what}: {n} bytes > limit {max_len}")
        return self._take(n)

    def text(self, max_len: int, what: str = "string") -> str:
        """A UTF-8 string of at most ``max_len`` encoded bytes."""
        try:
            return str(self._raw(STR, max_len, what), "utf-8")
        except UnicodeDecodeError:
            raise WireError("malformed", f"{what}: invalid UTF-8") from None

    def blob(self, max_len: int, what: str = "bytes") -> bytes:
        return bytes(self._raw(BIN, max_len, what))

    def integer(self, what: str = "integer") -> int:
        self._expect(INT, what)
        first, value = self._head()
        if value is None:
            return first if first <= 0x7F else first - 0x100
        return int(value)

    def scalar(self, max_len: int) -> Any:
        """The next value, which must not be a container (nil, bool, int, float, str or bin)."""
        kind = self.peek()
        if kind == INT:
            return self.integer()
        if kind == STR:
            return self.text(max_len)
        if kind == BIN:
            return self.blob(max_len)
        if kind in (NIL, BOOL, FLOAT):
            first, value = self._head()
            return None if kind == NIL else (first == 0xC3 if kind == BOOL else value)
        raise WireError("bad-type", f"expected a scalar, found {kind}")

    def value(self, *, max_len: int, depth: int = 0) -> Any:
        """Any value, built under the budget; maps refuse duplicate keys and keys that are not str or bin."""
        if depth > MAX_DEPTH:
            raise WireError("too-deep", f"nesting deeper than {MAX_DEPTH}")
        kind = self.peek()
        if kind == ARRAY:
            return [self.value(max_len=max_len, depth=depth + 1) for _ in range(self.array_header(max_len))]
        if kind == MAP:
            result: dict[Any, Any] = {}
            for _ in range(self.map_header(max_len)):
                if self.peek() not in (STR, BIN):
                    raise WireError("malformed", f"map key of type {self.peek()}")
                key = self.scalar(max_len)
                if key in result:
                    raise WireError("duplicate-key", f"map key {key!r:.64} appears twice")
                result[key] = self.value(max_len=max_len, depth=depth + 1)
            return result
        if kind == EXT:
            raise WireError("malformed", "msgpack extension types are not accepted")
        return self.scalar(max_len)


def check_size(data: Any, max_size: int) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError("not-bytes", type(data).__name__)
    if len(data) > max_size:
        raise WireError("too-large", f"{len(data)} bytes > limit {max_size}")


def unpack(data: bytes, *, max_size: int = DEFAULT_MAX_MESSAGE, max_objects: int = DEFAULT_MAX_OBJECTS) -> Any:
    """Decode exactly one msgpack value of at most ``max_objects`` values; any problem raises :class:`WireError`."""
    check_size(data, max_size)
    reader = Reader(data, max_objects=max_objects)
    reader.spend(1)
    value = reader.value(max_len=max_size)
    reader.end()
    return value
