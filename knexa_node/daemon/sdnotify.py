"""systemd's readiness protocol (``Type=notify``) without a dependency: datagrams to ``$NOTIFY_SOCKET``.

The protocol (sd_notify(3)) is one ``KEY=VALUE`` per line in a single
datagram on a Unix socket whose path systemd passes in ``NOTIFY_SOCKET``
(a leading ``@`` names an abstract socket). Where the variable is unset
(not under systemd) every call does nothing. A failed send is logged once
and never stops the daemon: readiness reporting must not become a way to
crash it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

logger = logging.getLogger(__name__)

# sd_notify values are single lines; systemd shows STATUS in `systemctl status`.
_MAX_STATUS = 200


def notify_message(fields: Mapping[str, str]) -> bytes:
    """The datagram for ``fields`` (``{"READY": "1", "STATUS": "..."}``): one ``KEY=VALUE`` line each."""
    lines = []
    for key, value in fields.items():
        if not key or not key.isupper() or "=" in key:
            raise ValueError(f"not an sd_notify key: {key!r}")
        text = " ".join(str(value).split())[:_MAX_STATUS]  # one line, bounded
        lines.append(f"{key}={text}")
    return ("\n".join(lines) + "\n").encode()


def socket_address(value: str) -> str | bytes:
    """``NOTIFY_SOCKET`` as an address for ``sendto``: a path, or an abstract name (``@name``)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if not value.startswith("/"):
        raise ValueError(f"NOTIFY_SOCKET must be an absolute path or @abstract, got {value!r}")
    return value


class SystemdNotifier:
    """Sends readiness, status and stopping notices when the daemon runs under ``Type=notify``."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self._failed = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        value = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
        if not value:
            return cls(None)
        try:
            return cls(socket_address(value))
        except ValueError as exc:
            logger.warning("systemd notification off: %s", exc)
            return cls(None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str) -> bool:
        """Send one notice (e.g. ``READY="1", STATUS="..."``); True when it was sent."""
        if self.address is None:
            return False
        message = notify_message(fields)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)  # a datagram to a local socket: never blocks the trio thread for long
                sock.sendto(message, self.address)
        except OSError as exc:
            if not self._failed:
                logger.warning("systemd notification failed: %s", exc)
                self._failed = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify(READY="1", STATUS=status, MAINPID=str(os.getpid()))

    def status(self, status: str) -> bool:
        return self.notify(STATUS=status)

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify(STOPPING="1", STATUS=status)
