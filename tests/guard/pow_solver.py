"""Solve a proof-of-work challenge the way a browser would, from Python (tests and benchmarks import this).

The hashed bytes are those :mod:`tlsedge.guard.challenge.pow` defines: the token's ASCII text, then the nonce's
(decimal counting, as the page's script does). The token's prefix is hashed once and the hash state copied per try.
"""

from __future__ import annotations

import hashlib

MAX_TRIES = 1 << 34


def solve(challenge_token: str, difficulty: int) -> str:
    """The first decimal nonce whose ``SHA-256(token ‖ nonce)`` has ``difficulty`` leading zero bits."""
    if not 0 <= difficulty <= 32:
        raise ValueError(f"difficulty must be between 0 and 32 bits, not {difficulty}")
    prefix = hashlib.sha256(challenge_token.encode("ascii"))
    limit = 1 << (256 - difficulty)
    for nonce in range(MAX_TRIES):
        text = str(nonce)
        attempt = prefix.copy()
        attempt.update(text.encode())
        if int.from_bytes(attempt.digest(), "big") < limit:
            return text
    raise RuntimeError("no nonce found")
