"""Yamux receive credit returned in batches, as go-yamux does, instead of after every read.

py-libp2p 0.8.1's ``YamuxStream._auto_tune_and_send_window_update`` runs after
each read and, once the receive window has been auto-tuned above its initial
size, takes a "partial slack" branch that sends a WINDOW_UPDATE for every read
however small (its ``PY_YAMUX_RELEASE_ON_READ`` knob does not reach that
branch). A gossip message is one read, so every copy received cost a second
frame: encrypted and written by the receiver, read, decrypted and handled by
the sender. Measured on 3 in-process hosts: 100 publications, 921 frames
written, 431 of them window updates of one message's size.

go-yamux returns credit only once at least half of the target window has been
consumed (``sendWindowUpdate``: ``if delta < max/2 { return }``). The sender
can always send that half before it waits, so a reader that keeps reading
never stalls its sender; the window's auto-tuning (doubling the target when
updates follow each other within 4 RTTs) is py-libp2p's own and kept.
"""

from __future__ import annotations

from libp2p.stream_muxer.yamux.yamux import YamuxStream

_installed = False


async def _return_credit_when_half_consumed(self: YamuxStream, *, bytes_read: int = 0) -> None:
    """Replacement for ``YamuxStream._auto_tune_and_send_window_update`` (same signature)."""
    del bytes_read  # the credit owed is derived from the window itself, not counted per read
    async with self.window_lock:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        # Bytes the application has read and the sender has not been credited for yet.
        owed = self.target_recv_window - (self.recv_window + buffered)
        increment = 0
        if owed > 0 and owed >= self._grow_threshold():
            increment = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
            self._pending_recv_release = 0
    if increment == 0:
        return
    # Never under window_lock: handling an inbound WINDOW_UPDATE takes it too.
    await self.send_window_update(increment, skip_lock=True)


def batch_yamux_credit() -> None:
    """Install the batched credit on py-libp2p's Yamux streams (idempotent, whole process)."""
    global _installed
    if not _installed:
        YamuxStream._auto_tune_and_send_window_update = _return_credit_when_half_consumed  # type: ignore[method-assign]
        _installed = True
