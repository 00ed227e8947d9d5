"""Proof-of-work tokens and no-JavaScript wait tickets: a solved challenge passes exactly once; insufficient work,
other networks, other sites, expired, tampered and malformed tokens are refused, each with its own reason."""

from __future__ import annotations

import base64
import hashlib

import pytest
from pow_solver import solve

from tlsedge.guard.challenge.pow import (
    MAX_NONCE_CHARS,
    MAX_TOKEN_CHARS,
    SolutionCheck,
    issue_challenge,
    issue_wait_ticket,
    leading_zero_bits,
    ticket_not_before,
    verify_solution,
    verify_wait_ticket,
    work_digest,
)
from tlsedge.guard.signing import SigningKeys

NOW = 1_800_000_000.0
IP = "198.51.100.20"
KEYS = SigningKeys.generate()
DIFFICULTY = 10


class SeenTable:
    """What the lead backs with a table shared by the workers: True the first time an id is offered."""

    def __init__(self) -> None:
        self.seen: dict[bytes, float] = {}

    def __call__(self, challenge_id: bytes, expires_at: float) -> bool:
        if challenge_id in self.seen:
            return False
        self.seen[challenge_id] = expires_at
        return True


def _verify(token: str, nonce: str, table: SeenTable | None = None, **overrides: object) -> SolutionCheck:
    args: dict = {"keys": KEYS, "site": "blog", "client_ip": IP, "token": token, "nonce": nonce, "now": NOW + 5,
                  "first_use": table if table is not None else SeenTable()}
    args.update(overrides)
    return verify_solution(**args)


def _solved(difficulty: int = DIFFICULTY, **overrides: object) -> tuple[str, str]:
    args: dict = {"keys": KEYS, "site": "blog", "client_ip": IP, "difficulty": difficulty, "ttl": 120, "now": NOW}
    args.update(overrides)
    challenge = issue_challenge(**args)
    return challenge.token, solve(challenge.token, challenge.difficulty)


def _unsolved_nonce(token: str, difficulty: int) -> str:
    """A nonce that does not do the work (most don't)."""
    return next(nonce for nonce in map(str, range(1000))
                if leading_zero_bits(work_digest(token, nonce)) < difficulty)


def test_solved_challenge_passes_exactly_once() -> None:
    token, nonce = _solved()
    table = SeenTable()
    assert _verify(token, nonce, table) == SolutionCheck(True, "ok")
    assert len(table.seen) == 1 and next(iter(table.seen.values())) == NOW + 120
    assert _verify(token, nonce, table).reason == "replayed"
    assert _verify(token, nonce, table, client_ip="198.51.100.99").reason == "replayed"  # same /24, same token


def test_the_hashed_bytes_are_token_then_nonce() -> None:
    token, nonce = _solved()
    digest = hashlib.sha256(token.encode() + nonce.encode()).digest()
    assert digest == work_digest(token, nonce) and leading_zero_bits(digest) >= DIFFICULTY


def test_challenge_shape() -> None:
    challenge = issue_challenge(KEYS, "blog", IP, 16, 60, NOW)
    assert challenge.difficulty == 16 and challenge.expires == int(NOW) + 60
    assert len(challenge.token) == 66 and challenge.token.startswith(KEYS.current + ".")
    assert challenge.token != issue_challenge(KEYS, "blog", IP, 16, 60, NOW).token  # a random id in each


def test_insufficient_work_is_refused_and_not_recorded() -> None:
    token, _ = _solved()
    table = SeenTable()
    assert _verify(token, _unsolved_nonce(token, DIFFICULTY), table).reason == "insufficient work"
    assert table.seen == {}


def test_a_token_issued_below_the_sites_difficulty_is_refused() -> None:
    token, nonce = _solved(difficulty=4)
    assert _verify(token, nonce, min_difficulty=8).reason == "insufficient work"
    assert _verify(token, nonce, min_difficulty=4).ok


def test_other_network_other_site_and_unknown_key_are_refused() -> None:
    token, nonce = _solved()
    table = SeenTable()
    assert _verify(token, nonce, table, client_ip="198.51.101.20").reason == "other network"
    assert _verify(token, nonce, table, client_ip="2001:db8::1").reason == "other network"
    assert _verify(token, nonce, table, site="shop").reason == "bad mac"
    assert _verify(token, nonce, table, keys=SigningKeys.generate()).reason == "unknown key"
    assert table.seen == {}
    assert _verify(token, nonce, table).ok  # none of the refusals spent it


def test_expired_challenge_is_refused() -> None:
    token, nonce = _solved()
    assert _verify(token, nonce, now=NOW + 119).ok
    assert _verify(token, nonce, now=NOW + 120).reason == "expired"


def test_tampered_tokens_are_refused() -> None:
    token, nonce = _solved()
    kid, body = token.split(".")
    for position in range(len(body)):
        changed = body[:position] + ("A" if body[position] != "A" else "B") + body[position + 1:]
        assert _verify(f"{kid}.{changed}", nonce).reason in ("bad mac", "other network", "malformed"), position
    # The difficulty byte (offset 25 of the body) is under the MAC: lowering it does not make the work easier.
    raw = bytearray(base64.urlsafe_b64decode(body + "=="))
    raw[25] = 0
    easier = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert _verify(f"{kid}.{easier}", "0").reason == "bad mac"


def test_malformed_tokens_and_nonces_are_refused() -> None:
    token, nonce = _solved()
    for end in range(len(token)):
        assert not _verify(token[:end], nonce).ok, end
    for bad_token in ("", ".", "abc", token + "A", token + "=", token.replace(".", ""), token + "é",
                      "x" * (MAX_TOKEN_CHARS + 1), "k." + "A" * 80, "k" * 17 + "." + token.split(".")[1]):
        assert _verify(bad_token, nonce).reason == "malformed", bad_token
    for bad_nonce in ("", "1" * (MAX_NONCE_CHARS + 1), "12 3", "١٢", "1/2", "a.b", "x" * 10_000):
        assert _verify(token, bad_nonce).reason == "malformed", bad_nonce
    assert _verify(token, "0" * (MAX_NONCE_CHARS - len(nonce)) + nonce).reason in ("ok", "insufficient work")


def test_issue_refuses_bad_parameters() -> None:
    with pytest.raises(ValueError, match="difficulty"):
        issue_challenge(KEYS, "blog", IP, 33, 60, NOW)
    with pytest.raises(ValueError, match="difficulty"):
        issue_challenge(KEYS, "blog", IP, -1, 60, NOW)
    with pytest.raises(ValueError, match="lifetime"):
        issue_challenge(KEYS, "blog", IP, 8, 0, NOW)
    with pytest.raises(ValueError, match="line breaks"):
        issue_challenge(KEYS, "a\nb", IP, 8, 60, NOW)


def test_leading_zero_bits() -> None:
    assert leading_zero_bits(b"\x80" + bytes(31)) == 0
    assert leading_zero_bits(b"\x01" + bytes(31)) == 7
    assert leading_zero_bits(bytes(2) + b"\x10" + bytes(29)) == 19
    assert leading_zero_bits(bytes(32)) == 256


def test_wait_ticket_opens_only_after_the_delay_and_once() -> None:
    ticket = issue_wait_ticket(KEYS, "blog", IP, 15, NOW)
    assert ticket.not_before == int(NOW) + 15 and ticket.expires == ticket.not_before + 600
    assert ticket_not_before(ticket.token) == ticket.not_before
    table = SeenTable()

    def check(**overrides: object) -> str:
        args: dict = {"keys": KEYS, "site": "blog", "client_ip": IP, "ticket": ticket.token, "now": NOW + 16,
                      "first_use": table}
        args.update(overrides)
        return verify_wait_ticket(**args).reason

    assert check(now=NOW + 14) == "too early"
    assert table.seen == {}  # an early click does not spend the ticket
    assert check(client_ip="192.0.2.1") == "other network"
    assert check(site="shop") == "bad mac"
    assert check(now=ticket.expires) == "expired"
    assert check() == "ok"
    assert check() == "replayed"


def test_tickets_and_challenges_are_not_interchangeable() -> None:
    ticket = issue_wait_ticket(KEYS, "blog", IP, 0, NOW)
    token, nonce = _solved(difficulty=0)
    assert _verify(ticket.token, "0").reason == "malformed"
    assert verify_wait_ticket(KEYS, "blog", IP, token, NOW + 1, SeenTable()).reason == "malformed"
    assert ticket_not_before(token) is None and ticket_not_before("junk") is None
    assert _verify(token, nonce).ok


def test_solver_solves_a_realistic_difficulty_quickly() -> None:
    token, nonce = _solved(difficulty=16)
    assert leading_zero_bits(work_digest(token, nonce)) >= 16
    assert _verify(token, nonce).ok
