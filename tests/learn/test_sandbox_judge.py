"""The judge's own guarantees, below the audit hook: the codec admits plain data only; a non-dumpable
process cannot be read or robbed of an fd by another process of its user."""

from __future__ import annotations

import ctypes
import json
import math
import os

import pytest

from knexa_node.learn import sandbox_runner
from knexa_node.learn.sandbox_runner import Unsupported, decode, encode

NOBODY = 65534
_PIDFD_GETFD = 438  # x86-64 and arm64 syscall number


@pytest.mark.parametrize("value", [None, True, 0, -7, 2 ** 80, 1.5, -0.0, math.inf, "é", b"\x00\xff", 2 + 3j,
                                   [1, [2, (3,)]], (1, "a"), {"k": [1], 2: None, (1, 2): {3}}, {1, 2}, frozenset({"a"}),
                                   [], (), {}])
def test_plain_values_round_trip_with_their_exact_type(value: object) -> None:
    back = decode(json.loads(json.dumps(encode(value))))
    assert back == value and type(back) is type(value)
    if isinstance(value, float) and value == 0:
        assert math.copysign(1, back) == math.copysign(1, value)


def test_nan_round_trips() -> None:
    assert math.isnan(decode(json.loads(json.dumps(encode(math.nan)))))


class Sly(int):
    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = int.__hash__


@pytest.mark.parametrize("value", [Sly(1), [Sly(1)], {"k": object()}, type("Anything", (), {})(), print, range(3),
                                   iter([1])])
def test_anything_but_plain_data_is_refused(value: object) -> None:
    with pytest.raises(Unsupported):
        encode(value)


@pytest.mark.parametrize("tree", [[1, 2], {"l": [1], "t": [2]}, {"x": []}, {"d": [[[1], 2]]}, {"s": [{"l": []}]},
                                  {"b": "zz"}, {"c": ["1", 2]}, {"d": [[1]]}, {"l": 5}])
def test_decoding_refuses_what_encode_never_makes(tree: object) -> None:
    with pytest.raises(Unsupported):
        decode(tree)


def test_decoding_bounds_nesting() -> None:
    tree: object = 1
    for _ in range(sandbox_runner.MAX_DEPTH + 5):
        tree = {"l": [tree]}
    with pytest.raises(Unsupported):
        decode(tree)


def _drop() -> None:
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)


def _what_a_neighbour_can_take(harden: bool) -> set[str]:
    """Fork a target (nobody, hardened or not) and a second nobody process that tries to reach into it."""
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    target = os.fork()
    if target == 0:
        try:
            os.close(ready_r)
            os.close(hold_w)
            _drop()
            # Changing user made it non-dumpable already; like a process started as nobody (the judge in nsjail)
            # it is dumpable again until it hardens itself.
            ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)
            if harden:
                sandbox_runner._harden(False)
            own_r, own_w = os.pipe()  # made as nobody: only the ptrace rule stands between it and a neighbour
            os.write(ready_w, str(own_w).encode())
            os.read(hold_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(hold_r)
    result_r, result_w = os.pipe()
    try:
        own_w = int(os.read(ready_r, 16))
        attacker = os.fork()
        if attacker == 0:
            try:
                os.close(result_r)
                _drop()
                taken = []
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.syscall(_PIDFD_GETFD, os.pidfd_open(target), own_w, 0) >= 0:
                    taken.append("pidfd_getfd")
                for what, flags in (("mem", os.O_RDONLY), (f"fd/{own_w}", os.O_WRONLY)):
                    try:
                        os.close(os.open(f"/proc/{target}/{what}", flags))
                        taken.append(what)
                    except OSError:
                        pass
                os.write(result_w, ",".join(taken).encode())
            finally:
                os._exit(0)
        os.close(result_w)
        os.waitpid(attacker, 0)
        taken = os.read(result_r, 1024).decode()
    finally:
        os.close(hold_w)
        os.waitpid(target, 0)
        os.close(ready_r)
        os.close(result_r)
    return {t for t in taken.split(",") if t}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the two processes as nobody")
def test_a_non_dumpable_judge_is_out_of_a_neighbours_reach() -> None:
    exposed = _what_a_neighbour_can_take(harden=False)
    if not exposed:
        pytest.skip("this kernel already keeps same-user processes apart (e.g. Yama ptrace_scope >= 1)")
    assert "pidfd_getfd" in exposed and "mem" in exposed  # the attack works on an ordinary process
    assert _what_a_neighbour_can_take(harden=True) == set()


def test_decoding_bounds_set_and_dict_sizes() -> None:
    with pytest.raises(Unsupported):
        decode({"s": list(range(sandbox_runner.MAX_MEMBERS + 1))})
    assert len(decode({"s": list(range(sandbox_runner.MAX_MEMBERS))})) == sandbox_runner.MAX_MEMBERS


def test_decoding_stops_at_its_deadline() -> None:
    colliding = {"s": [k * (2 ** 61 - 1) for k in range(sandbox_runner.MAX_MEMBERS)]}
    with pytest.raises(Unsupported, match="too slow"):
        decode({"l": [colliding] * 5}, deadline=0.0)
