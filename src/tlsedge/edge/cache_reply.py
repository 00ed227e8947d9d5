"""Writing a stored response to a client: full, 304, 206 or 416, from a complete body or from a fill in progress.

A reply is a list of pieces (the head, then slices of the body and multipart delimiters) written in order; it stops
while the client's transport is above its high-water mark and resumes from `ClientConnection.resume_writing`, so a
slow client never makes the edge copy a large body into a growing buffer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tlsedge.cache.fill import DONE

if TYPE_CHECKING:
    from tlsedge.cache.fill import Fill
    from tlsedge.edge.exchange import Exchange
    from tlsedge.edge.http1 import ClientConnection

_PIECE = 256 * 1024  # the most one write hands to the transport


class CacheReply:
    """The body side of a response the cache serves; `pieces` are written in order, respecting backpressure."""

    __slots__ = ("conn", "ex", "fill", "index", "pieces", "released")

    def __init__(self, conn: ClientConnection, ex: Exchange) -> None:
        self.conn = conn
        self.ex = ex
        self.pieces: list[bytes | memoryview] = []
        self.fill: Fill | None = None  # streaming from a fill: the next chunk to copy is fill.chunks[index]
        self.index = 0
        self.released = False

    def send(self, pieces: list[bytes | memoryview]) -> None:
        self.pieces = pieces
        self.pump()

    def pump(self) -> None:
        """Write pieces until done or until the client stops reading; end the exchange when all is out."""
        conn = self.conn
        if conn.closed or self.ex.finished:
            return
        pieces = self.pieces
        out = conn.out
        while pieces and not conn.write_paused:
            piece = pieces[0]
            if len(piece) > _PIECE:
                view = memoryview(piece)
                out.append(view[:_PIECE])
                pieces[0] = view[_PIECE:]
            else:
                out.append(piece)
                del pieces[0]
            self.ex.bytes_out += len(out[-1])
            conn.flush()
        if not pieces and (self.fill is None or (self.fill.state == DONE and self.index >= len(self.fill.chunks))):
            conn.cache_reply_done(self.ex)

    # --- reading a fill in progress (a collapsed request) ----------------------------------------------------

    def fill_progress(self, fill: Fill) -> None:
        chunks = fill.chunks
        while self.index < len(chunks):
            self.pieces.append(chunks[self.index])
            self.index += 1
        self.pump()
        self.conn.flush()

    def fill_released(self, fill: Fill, reason: str) -> None:
        """The fill failed after this reply started: the client cannot get a whole response, so it is cut off."""
        self.released = True
        self.ex.error = f"the response this request shared failed: {reason}"
        self.ex.keep_alive = False
        self.conn.cache_reply_done(self.ex)
