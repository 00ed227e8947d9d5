"""The pages a challenged visitor sees: the proof-of-work page, the no-JavaScript wait page and the password form.

Every page is self-contained (inline style and script, no fonts, images or third-party anything), has a language,
a title and headings, reads in order without CSS, and escapes every value it shows. Challenge pages go out with
status 403 (:data:`CHALLENGE_STATUS`), like Cloudflare's challenges (``403`` + ``cf-mitigated: challenge``): the
visitor did not get what they asked for, so monitors, link checkers and search engines must not record a success
(Anubis' default of 200 is known to make uptime monitors report a challenged site as healthy), and 503 would tell
them the site is down and invite retry storms. The lead sends them with ``Cache-Control: no-store`` and may add
:data:`PAGE_CSP`, which allows exactly the inline script and style below and nothing else.

The script is plain ES5 with its own SHA-256: the Web Crypto API only exists in secure contexts (a plain-HTTP site
has none) and is asynchronous per hash, far too slow for a nonce search. It hashes the bytes
:mod:`tlsedge.guard.challenge.pow` defines, ``ASCII(token) ‖ ASCII(decimal nonce)``, compressing the token's whole
64-byte blocks once and only the last one or two blocks per nonce. It searches in slices of about 40 ms and yields
with ``setTimeout`` between them, so the page stays responsive; a ``<progress>`` bar shows the work and a polite
live region says when the check starts and ends (screen readers are not flooded with numbers). When a nonce is
found it goes (``location.replace``: the back button skips the challenge) to
``<submit_path>?token=…&return=…&nonce=…``; the edge checks it, sets the cookie and redirects (303) to the return
path, which :func:`safe_return_path` keeps on this site.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape
from urllib.parse import parse_qsl, quote

from tlsedge.guard.challenge.pow import Challenge, WaitTicket

CHALLENGE_STATUS = 403
MAX_RETURN_CHARS = 2048
MAX_QUERY_CHARS = 4096
_QUERY_FIELDS = 16

_STYLE = (
    "body{font:1.1rem/1.5 system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;"
    "color:#1b1b1b;background:#fff}a{color:#0645ad}progress{width:100%;height:1rem}"
    "@media (prefers-color-scheme:dark){body{color:#eee;background:#121212}a{color:#8ab4f8}}"
)

# The proof-of-work search. Runs in browsers and, for the tests, in node (no `document` there: it only defines
# `tlsedgePow` = {sha256, Search}). Kept ES5 so that old browsers and text-mode JS engines can pass too.
SCRIPT = r"""
var tlsedgePow = (function () {
  "use strict";
  var K = new Int32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2]);
  var IV = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
  var W = new Int32Array(64);

  // Compress the 64-byte blocks m[0 .. end) into the state s (eight 32-bit words).
  function blocks(s, m, end) {
    var a, b, c, d, e, f, g, h, i, j, x, y, t1, t2, off;
    for (off = 0; off < end; off += 64) {
      for (i = 0; i < 16; i++) {
        j = off + 4 * i;
        W[i] = (m[j] << 24) | (m[j + 1] << 16) | (m[j + 2] << 8) | m[j + 3];
      }
      for (i = 16; i < 64; i++) {
        x = W[i - 15];
        y = W[i - 2];
        W[i] = (W[i - 16] + (((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3)) + W[i - 7]
                + (((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10))) | 0;
      }
      a = s[0]; b = s[1]; c = s[2]; d = s[3]; e = s[4]; f = s[5]; g = s[6]; h = s[7];
      for (i = 0; i < 64; i++) {
        t1 = (h + (((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7)))
              + ((e & f) ^ (~e & g)) + K[i] + W[i]) | 0;
        t2 = ((((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10)))
              + ((a & b) ^ (a & c) ^ (b & c))) | 0;
        h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
      }
      s[0] = (s[0] + a) | 0; s[1] = (s[1] + b) | 0; s[2] = (s[2] + c) | 0; s[3] = (s[3] + d) | 0;
      s[4] = (s[4] + e) | 0; s[5] = (s[5] + f) | 0; s[6] = (s[6] + g) | 0; s[7] = (s[7] + h) | 0;
    }
  }

  // buf (128 bytes) starts with the message's last `tail` bytes; pad it for a `total`-byte message and compress.
  function finish(s, buf, tail, total) {
    var end = tail < 56 ? 64 : 128, i, hi = Math.floor(total / 0x20000000), lo = (total * 8) >>> 0;
    buf[tail] = 0x80;
    for (i = tail + 1; i < end - 8; i++) buf[i] = 0;
    buf[end - 8] = hi >>> 24; buf[end - 7] = hi >>> 16; buf[end - 6] = hi >>> 8; buf[end - 5] = hi;
    buf[end - 4] = lo >>> 24; buf[end - 3] = lo >>> 16; buf[end - 2] = lo >>> 8; buf[end - 1] = lo;
    blocks(s, buf, end);
  }

  function ascii(text) {
    var out = new Uint8Array(text.length), i;
    for (i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }

  // SHA-256 of a Uint8Array (or of an ASCII string), as a 32-byte Uint8Array.
  function sha256(msg) {
    if (typeof msg === "string") msg = ascii(msg);
    var s = new Int32Array(IV), full = msg.length - msg.length % 64, buf = new Uint8Array(128), out, i;
    blocks(s, msg, full);
    buf.set(msg.subarray(full));
    finish(s, buf, msg.length - full, msg.length);
    out = new Uint8Array(32);
    for (i = 0; i < 32; i++) out[i] = s[i >> 2] >>> (24 - 8 * (i & 3));
    return out;
  }

  function zeroBits(s, bits) {
    for (var i = 0; bits > 0; i++, bits -= 32) {
      if (bits >= 32 ? s[i] !== 0 : (s[i] >>> (32 - bits)) !== 0) return false;
    }
    return true;
  }

  // The search for a decimal nonce: SHA-256(token + nonce) with `difficulty` leading zero bits.
  function Search(token, difficulty) {
    var bytes = ascii(token);
    this.full = bytes.length - bytes.length % 64;
    this.mid = new Int32Array(IV);
    blocks(this.mid, bytes, this.full);
    this.rest = bytes.length - this.full;
    this.buf = new Uint8Array(128);
    this.buf.set(bytes.subarray(this.full));
    this.s = new Int32Array(8);
    this.difficulty = difficulty;
    this.next = 0;
  }

  // Try `count` nonces; the winning nonce (a string), or null.
  Search.prototype.run = function (count) {
    var buf = this.buf, s = this.s, r = this.rest, stop = this.next + count, text, i;
    for (; this.next < stop; this.next++) {
      text = String(this.next);
      for (i = 0; i < text.length; i++) buf[r + i] = text.charCodeAt(i);
      s.set(this.mid);
      finish(s, buf, r + text.length, this.full + r + text.length);
      if (zeroBits(s, this.difficulty)) {
        this.next++;
        return text;
      }
    }
    return null;
  };

  function start() {
    var box = document.getElementById("tlsedge-pow"), say = document.getElementById("tlsedge-status"),
        bar = document.getElementById("tlsedge-progress"), search, expected;
    if (navigator.cookieEnabled === false) {
      say.textContent = "Your browser refuses cookies from this site. The check needs one cookie from this " +
        "site (not from anyone else) to remember that you passed. Please allow it, then reload the page.";
      return;
    }
    search = new Search(box.getAttribute("data-token"), +box.getAttribute("data-difficulty"));
    expected = Math.pow(2, search.difficulty);
    say.textContent = "Checking your browser. This usually takes a few seconds.";
    function step() {
      var until = Date.now() + 40, found = null;
      while (found === null && Date.now() < until) found = search.run(1000);
      if (found === null) {
        bar.value = 1 - Math.exp(-search.next / expected);
        setTimeout(step, 0);
        return;
      }
      bar.value = 1;
      say.textContent = "Done. Taking you to the page.";
      location.replace(box.getAttribute("data-url") + found);
    }
    setTimeout(step, 0);
  }

  if (typeof document !== "undefined") start();
  return {sha256: sha256, Search: Search};
})();
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


PAGE_CSP = (
    f"default-src 'none'; script-src {_csp_hash(SCRIPT)}; style-src {_csp_hash(_STYLE)}; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
).encode()


def safe_return_path(value: str) -> str:
    """``value`` if it is a path on this site (``/`` then no ``/`` or ``\\``; printable ASCII, no spaces), else ``/``.

    Why so strict: the value comes from the visitor and ends up in a ``Location`` header. ``//evil.example`` and
    ``/\\evil.example`` are other sites to a browser, and browsers drop tabs and newlines from URLs, so
    ``/<TAB>/evil.example`` is one too; a control character could also split the header.
    """
    if (0 < len(value) <= MAX_RETURN_CHARS and value[0] == "/" and value[1:2] != "/" and value.isascii()
            and value.isprintable() and " " not in value and "\\" not in value):
        return value
    return "/"


def parse_query(query: str | bytes) -> dict[str, str]:
    """The fields of a query string (first value of each; at most 16 fields and 4096 characters, else none)."""
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    if len(text) > MAX_QUERY_CHARS:
        return {}
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=_QUERY_FIELDS, errors="strict")
    except ValueError:
        return {}
    fields: dict[str, str] = {}
    for name, value in pairs:
        fields.setdefault(name, value)
    return fields


def challenge_page(challenge: Challenge, return_to: str, submit_path: str, noscript_path: str) -> bytes:
    """The proof-of-work page (send with :data:`CHALLENGE_STATUS`, ``Cache-Control: no-store``)."""
    back = safe_return_path(return_to)
    url = f"{submit_path}?token={quote(challenge.token, safe='')}&return={quote(back, safe='/')}&nonce="
    without_js = f"{noscript_path}?return={quote(back, safe='/')}"
    body = (
        "<h1>Checking that you are a visitor, not a robot</h1>"
        "<p>This site is receiving a lot of automated traffic. Before showing the page, it asks your browser to do "
        "a short calculation that costs a person almost nothing and an attack a lot. No personal data is "
        "collected, and no images or puzzles are involved.</p>"
        '<p id="tlsedge-status" role="status" aria-live="polite">The check starts as soon as your browser runs '
        "the script of this page.</p>"
        '<progress id="tlsedge-progress" max="1" value="0" aria-label="Progress of the check"></progress>'
        f'<div id="tlsedge-pow" data-token="{escape(challenge.token)}" data-difficulty="{challenge.difficulty}" '
        f'data-url="{escape(url)}"></div>'
        "<noscript><p><strong>JavaScript is turned off in your browser</strong>, so the calculation cannot run. "
        f'You can still continue: <a href="{escape(without_js)}">continue without JavaScript</a>. '
        "You will be asked to wait a few seconds instead; nothing else is needed.</p></noscript>"
        "<p>If this page has not moved on after a minute, "
        f'<a href="{escape(without_js)}">continue without the calculation</a> (a short wait instead).</p>'
        f"<script>{SCRIPT}</script>"
    )
    return _document("Checking your browser", body)


def wait_page(ticket: WaitTicket | str, delay: int, verify_path: str, return_to: str) -> bytes:
    """The no-JavaScript page: it reloads itself into ``verify_path`` after ``delay`` seconds; a link does the same.

    Send with :data:`CHALLENGE_STATUS` and ``Cache-Control: no-store``. When the visitor follows the link too early,
    answer with this page again and the remaining delay (see :func:`tlsedge.guard.challenge.pow.ticket_not_before`).
    """
    wait = max(0, int(delay))
    token = ticket.token if isinstance(ticket, WaitTicket) else ticket
    url = f"{verify_path}?ticket={quote(token, safe='')}&return={quote(safe_return_path(return_to), safe='/')}"
    seconds = "1 second" if wait == 1 else f"{wait} seconds"
    body = (
        f"<h1>Please wait {seconds}</h1>"
        "<p>This site is receiving a lot of automated traffic, so it asks visitors whose browser does not run "
        "JavaScript to wait a moment before continuing. Waiting costs a person little and slows down robots.</p>"
        f"<p>This page continues by itself after {seconds}. If it does not, follow the link below once that time "
        "has passed.</p>"
        f'<p><a href="{escape(url)}">Continue to the site</a></p>'
    )
    refresh = f'<meta http-equiv="refresh" content="{wait};url={escape(url)}">'
    return _document("Please wait", body, refresh)


def password_page(path: str, error: str | None, action: str, return_to: str | None = None) -> bytes:
    """The password form for a protected ``path``: POST ``password`` and ``return`` (default: ``path``) to ``action``.

    Send with status 403 (401 would require a ``WWW-Authenticate`` challenge that browsers would answer with their
    own dialog) and ``Cache-Control: no-store``.
    """
    back = safe_return_path(path if return_to is None else return_to)
    described = ' aria-describedby="tlsedge-error" aria-invalid="true"' if error else ""
    problem = f'<p id="tlsedge-error" role="alert"><strong>{escape(error)}</strong></p>' if error else ""
    body = (
        "<h1>This page needs a password</h1>"
        f"<p>The address <code>{escape(path)}</code> on this site is protected. Enter the password you were given "
        "to continue.</p>"
        f"{problem}"
        f'<form method="post" action="{escape(action)}">'
        f'<input type="hidden" name="return" value="{escape(back)}">'
        '<p><label for="tlsedge-password">Password</label><br>'
        f'<input id="tlsedge-password" name="password" type="password" autocomplete="current-password" required '
        f"autofocus{described}></p>"
        '<p><button type="submit">Continue</button></p></form>'
    )
    return _document("Password required", body)


def _document(title: str, body: str, head: str = "") -> bytes:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="robots" content="noindex, nofollow">{head}<title>{escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><main>{body}</main></body></html>"
    ).encode()
