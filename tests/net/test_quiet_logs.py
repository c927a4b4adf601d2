"""py-libp2p's log of a cancelled connection upgrade keeps its line and loses its crash-like traceback; others keep it."""

from __future__ import annotations

import logging
import traceback

import pytest
import trio
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.network.stream.exceptions import StreamError

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


def log_as_identify_does(exc: BaseException) -> None:
    # The record py-libp2p 0.8.1's identify handler writes when its answer cannot be written.
    try:
        raise exc
    except BaseException as raised:
        logging.getLogger(quiet_logs.IDENTIFY_LOGGER).error(
            "Error sending identify response to %s: %s (type: %s)\n%s", "12D3KooWPeer", raised, type(raised),
            traceback.format_exc())


def a_write_on_a_closed_connection() -> BaseException:
    # The chain seen in the 20-daemon lab: BrokenPipe -> ConnectionClosedError -> StreamError.
    try:
        try:
            raise ConnectionClosedError("TCP connection reset by remote peer: [Errno 32] Broken pipe")
        except ConnectionClosedError as closed:
            raise StreamError(f"Write operation failed: {closed}") from closed
    except StreamError as exc:
        return exc


@pytest.fixture
def identify_installed():
    identify_logger = logging.getLogger(quiet_logs.IDENTIFY_LOGGER)
    before = list(identify_logger.filters)
    quiet_logs.install()
    quiet_logs.install()  # idempotent
    yield identify_logger
    identify_logger.filters[:] = before


def test_an_identify_answer_on_a_closed_connection_is_one_line(identify_installed, caplog):
    assert sum(isinstance(f, quiet_logs.ClosedIdentifyReplyFilter) for f in identify_installed.filters) == 1
    with caplog.at_level(logging.WARNING, logger=quiet_logs.IDENTIFY_LOGGER):
        log_as_identify_does(a_write_on_a_closed_connection())
    (record,) = caplog.records
    text = record.getMessage()
    assert "Traceback" not in text and "\n" not in text
    assert "12D3KooWPeer" in text and "closed under it" in text and "Broken pipe" in text


def test_an_identify_answer_that_failed_otherwise_keeps_its_traceback(identify_installed, caplog):
    with caplog.at_level(logging.WARNING, logger=quiet_logs.IDENTIFY_LOGGER):
        log_as_identify_does(ValueError("a bad protobuf"))
    (record,) = caplog.records
    assert "Traceback" in record.getMessage() and "a bad protobuf" in record.getMessage()
