"""Listening sockets, opened once by the control process and inherited by every worker generation.

Keeping the sockets in the parent means a reload never closes a listener that stays in the configuration, so no
connection attempt is refused while workers are replaced.
"""

from __future__ import annotations

import socket

from tlsedge.config.schema import Listener

_BACKLOG = 1024


def open_listener(listener: Listener) -> socket.socket:
    """Bind and listen; the error names the address so the operator knows which listener failed."""
    host = listener.host
    if host in ("*", ""):
        host = "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, listener.port))
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {listener}: {exc.strerror}") from exc
    return sock


class ListenerSet:
    """The open listening sockets, keyed by (address, is_tls)."""

    def __init__(self) -> None:
        self.sockets: dict[tuple[Listener, bool], socket.socket] = {}

    def update(self, https: tuple[Listener, ...], http: tuple[Listener, ...]) -> list[tuple[socket.socket, bool]]:
        """Open what is new, keep what stays; returns the sockets the new configuration uses. Closes nothing."""
        wanted = [(listener, True) for listener in https] + [(listener, False) for listener in http]
        opened: list[tuple[Listener, bool]] = []
        try:
            for key in wanted:
                if key not in self.sockets:
                    self.sockets[key] = open_listener(key[0])
                    opened.append(key)
        except OSError:
            for key in opened:
                self.sockets.pop(key).close()
            raise
        return [(self.sockets[key], key[1]) for key in wanted]

    def retain_only(self, https: tuple[Listener, ...], http: tuple[Listener, ...]) -> None:
        """Close the sockets a new configuration no longer names (after its workers have started)."""
        keep = {(listener, True) for listener in https} | {(listener, False) for listener in http}
        for key in [k for k in self.sockets if k not in keep]:
            self.sockets.pop(key).close()

    def close_all(self) -> None:
        """Close every socket: in a forked child that serves no clients (the health monitor)."""
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
