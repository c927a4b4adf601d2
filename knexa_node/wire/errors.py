"""The one exception type that decoding untrusted bytes may raise."""


class WireError(Exception):
    """Bytes from the network are malformed, too large, of an unknown type, or badly signed.

    ``reason`` is a short stable tag (for counters and metrics); ``str()`` explains.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
