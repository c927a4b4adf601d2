"""py-libp2p's log of a cancelled connection upgrade keeps its line and loses its crash-like traceback; others keep it."""

from __future__ import annotations

import logging
import traceback

import pytest
import trio

from knexa_node.net import quiet_logs


def a_real_cancellation() -> trio.Cancelled:
    caught: list[trio.Cancelled] = []

    async def cancelled_sleep() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await trio.sleep(1)
            except trio.Cancelled as exc:
                caught.append(exc)
                raise

    trio.run(cancelled_sleep)
    return caught[0]


def log_as_the_swarm_does(exc: BaseException) -> None:
    # The record py-libp2p 0.8.1's Swarm.add_conn writes when an upgrade fails (libp2p is pinned to 0.8.1).
    tb_str = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    logging.getLogger(quiet_logs.SWARM_LOGGER).warning("[ADDCONN_FAIL] add_conn failed for peer %s: %r\n%s",
                                                       "12D3KooWPeer", exc, tb_str[-2000:])


@pytest.fixture
def installed():
    swarm_logger = logging.getLogger(quiet_logs.SWARM_LOGGER)
    before = list(swarm_logger.filters)
    quiet_logs.install()
    quiet_logs.install()  # idempotent
    yield swarm_logger
    swarm_logger.filters[:] = before


def test_a_cancelled_upgrade_is_one_line_without_a_traceback(installed, caplog):
    assert sum(isinstance(f, quiet_logs.CancelledUpgradeFilter) for f in installed.filters) == 1
    with caplog.at_level(logging.WARNING, logger=quiet_logs.SWARM_LOGGER):
        log_as_the_swarm_does(a_real_cancellation())
    (record,) = caplog.records
    text = record.getMessage()
    assert "Traceback" not in text and "\n" not in text
    assert text.startswith("[ADDCONN_FAIL]") and "12D3KooWPeer" in text and "Cancelled" in text


def test_any_other_failure_keeps_its_traceback(installed, caplog):
    try:
        raise OSError("connection reset")
    except OSError as exc:
        failure = exc
    with caplog.at_level(logging.WARNING, logger=quiet_logs.SWARM_LOGGER):
        log_as_the_swarm_does(failure)
    (record,) = caplog.records
    assert "Traceback" in record.getMessage() and "connection reset" in record.getMessage()
