"""Responses the edge writes itself: short error pages with a request id, and redirects.

Pages are tiny, self-contained and never include anything from the request except the request id we made, so they
cannot carry a traceback or reflect attacker input.
"""

from __future__ import annotations

from http import HTTPStatus

from tlsedge.edge.headers import status_line

_PAGE = (
    "<!doctype html><html><head><meta charset=utf-8><title>{code} {phrase}</title></head>"
    "<body><h1>{code} {phrase}</h1><p>{text}</p><p><small>request id: {rid}</small></p></body></html>\n"
)

# What the client is told; the operator gets the precise reason in the error log.
_TEXT: dict[int, str] = {
    400: "The request could not be understood.",
    403: "The request was blocked by this site's security rules. If you think this is a mistake, give the "
    "site's operator the request id below.",
    404: "Not found.",
    405: "This method is not allowed here.",
    408: "The request took too long to arrive.",
    413: "The request body is too large.",
    414: "The request URI is too long.",
    421: "This server does not serve that host on this connection.",
    429: "Too many requests; wait a little and try again.",
    431: "The request headers are too large.",
    499: "Client closed the request.",
    500: "The edge hit an internal error.",
    502: "The origin server could not be reached or sent an invalid response.",
    503: "The origin is busy; try again shortly.",
    504: "The origin server did not answer in time.",
}


# Every server of the pool is down (health checks or ejections), as opposed to busy.
NO_ORIGIN_TEXT = "No origin server is available right now; try again in a few seconds."

# Flexible mode against an origin that insists on https: the browser would loop until it gives up.
REDIRECT_LOOP_TEXT = (
    "The origin server redirects this page to itself: the edge reaches it over plain HTTP while the origin "
    "insists on HTTPS, so following the redirect would loop forever. The site's operator must set origin_tls to "
    "&quot;full&quot; or &quot;strict&quot; for this origin."
)


def error_response(status: int, request_id: str, *, close: bool, head_only: bool = False,
                   extra: bytes = b"", text: str | None = None) -> bytes:
    """A complete HTTP/1.1 error response (head and body) ready to write in one call; `text` replaces the
    status's standard explanation (it is a fixed string of ours, never request data)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = _PAGE.format(code=status, phrase=phrase, text=text or _TEXT.get(status, phrase), rid=request_id).encode()
    head = b"".join(
        (
            status_line(status),
            b"Server: tlsedge\r\nContent-Type: text/html; charset=utf-8\r\nCache-Control: no-store\r\n",
            b"Content-Length: %d\r\n" % len(body),
            b"X-Request-Id: %s\r\n" % request_id.encode(),
            extra,
            b"Connection: close\r\n\r\n" if close else b"\r\n",
        )
    )
    return head if head_only else head + body


def text_response(status: int, body: bytes, *, close: bool, head_only: bool = False) -> bytes:
    """A small text/plain answer of the edge's own (an ACME HTTP-01 key authorization, for one)."""
    head = b"".join(
        (
            status_line(status),
            b"Server: tlsedge\r\nContent-Type: text/plain\r\nCache-Control: no-store\r\n",
            b"Content-Length: %d\r\n" % len(body),
            b"Connection: close\r\n\r\n" if close else b"\r\n",
        )
    )
    return head if head_only else head + body


def redirect_response(location: bytes, *, close: bool, head_only: bool = False) -> bytes:
    """A 308 to the https URL: 308 keeps the method and body, unlike 301/302 (RFC 9110 section 15.4.9)."""
    body = b"Redirecting to https.\n"
    head = b"".join(
        (
            status_line(308),
            b"Server: tlsedge\r\nContent-Type: text/plain\r\nLocation: ",
            location,
            b"\r\nContent-Length: %d\r\n" % len(body),
            b"Connection: close\r\n\r\n" if close else b"\r\n",
        )
    )
    return head if head_only else head + body
