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
    """The filters installed (twice: idempotent); the loggers' filters restored after the test."""
    loggers = {name: logging.getLogger(name) for name in (quiet_logs.SWARM_LOGGER, quiet_logs.IDENTIFY_LOGGER)}
    before = {name: list(logger.filters) for name, logger in loggers.items()}
    quiet_logs.install()
    quiet_logs.install()
    yield loggers
    for name, logger in loggers.items():
        logger.filters[:] = before[name]


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


@pytest.mark.parametrize("logger_name, kind, log, cause, expected", [
    (quiet_logs.SWARM_LOGGER, quiet_logs.CancelledUpgradeFilter, log_as_the_swarm_does,
     a_real_cancellation, ("[ADDCONN_FAIL]", "12D3KooWPeer", "Cancelled")),
    (quiet_logs.IDENTIFY_LOGGER, quiet_logs.ClosedIdentifyReplyFilter, log_as_identify_does,
     a_write_on_a_closed_connection, ("Error sending identify response", "12D3KooWPeer", "closed under it", "Broken pipe")),
], ids=["cancelled upgrade", "identify answer on a closed connection"])
def test_an_expected_event_is_one_line_without_a_traceback(installed, caplog, logger_name, kind, log, cause, expected):
    assert sum(isinstance(f, kind) for f in installed[logger_name].filters) == 1
    with caplog.at_level(logging.WARNING, logger=logger_name):
        log(cause())
    (record,) = caplog.records
    text = record.getMessage()
    assert "Traceback" not in text and "\n" not in text
    assert text.startswith(expected[0]) and all(part in text for part in expected[1:])


def test_an_identify_answer_that_failed_otherwise_keeps_its_traceback(installed, caplog):
    with caplog.at_level(logging.WARNING, logger=quiet_logs.IDENTIFY_LOGGER):
        log_as_identify_does(ValueError("a bad protobuf"))
    (record,) = caplog.records
    assert "Traceback" in record.getMessage() and "a bad protobuf" in record.getMessage()
