"""The ctypes binding over the real libmodsecurity3: calls, errors, the log callback, and no leak of what the library
hands back (intervention url/log, rule parser errors)."""

from __future__ import annotations

import os
import threading

import pytest

from tlsedge.guard import modsecurity
from tlsedge.guard.modsecurity import ModSecurity, ModSecurityError, RulesSet, Transaction, available

pytestmark = pytest.mark.skipif(available() is not None, reason=f"{available()}")

RULES = """
SecRuleEngine On
SecRule REQUEST_HEADERS:X-Mode "@streq warn" "id:101,phase:1,pass,log,msg:'warned %{REQUEST_HEADERS.x-mode}'"
SecRule REQUEST_HEADERS:X-Mode "@streq deny" "id:102,phase:1,deny,status:406,log,msg:'denied %{REQUEST_HEADERS.x-pad}'"
SecRule REQUEST_HEADERS:X-Mode "@streq redirect" \
    "id:103,phase:1,redirect:https://example.com/%{REQUEST_HEADERS.x-pad},log,msg:'redirected'"
"""


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def engine():
    logs: list[tuple[int | None, bytes]] = []
    ms = ModSecurity(lambda key, text: logs.append((key, text)))
    rules = RulesSet()
    assert rules.add(RULES) == 3
    yield ms, rules, logs
    rules.close()
    ms.close()


def transaction(ms: ModSecurity, rules: RulesSet, mode: bytes, key: int = 7, pad: bytes = b"p") -> Transaction:
    t = Transaction(ms, rules, b"event-%d" % key, key)
    t.process_connection(b"192.0.2.1", 50000, b"192.0.2.2", 443)
    t.process_uri(b"/index.html?a=1", b"GET", b"1.1")
    t.add_request_header(b"Host", b"example.com")
    t.add_request_header(b"X-Mode", mode)
    t.add_request_header(b"X-Pad", pad)
    t.process_request_headers()
    return t


def test_library_is_available_and_identifies_itself(engine) -> None:
    ms, _, _ = engine
    assert available() is None
    assert ms.who_am_i().startswith("ModSecurity v3.0")


def test_log_callback_gets_the_transaction_key_and_the_message(engine) -> None:
    ms, rules, logs = engine
    t = transaction(ms, rules, b"warn", key=41)
    assert t.intervention() is None
    t.process_logging()
    t.cleanup()
    t.cleanup()  # idempotent
    assert len(logs) == 1
    key, text = logs[0]
    assert key == 41
    assert b'[id "101"]' in text and b'[msg "warned warn"]' in text and b'[unique_id "event-41"]' in text


def test_intervention_reports_status_and_log_once(engine) -> None:
    ms, rules, logs = engine
    t = transaction(ms, rules, b"deny")
    status, log = t.intervention()
    assert status == 406
    assert "Access denied with code 406 (phase 1)" in log and '[id "102"]' in log
    assert t.intervention() is None  # the library forgets an intervention once read
    t.process_logging()
    t.cleanup()
    assert logs == []  # the disruptive rule's message comes only with the intervention
    t = transaction(ms, rules, b"redirect")
    assert t.intervention()[0] == 302
    t.cleanup()


def test_rule_errors_carry_the_library_message_and_only_the_new_one(tmp_path) -> None:
    rules = RulesSet()
    try:
        with pytest.raises(ModSecurityError, match="Line: 2") as first:
            rules.add('SecRule ARGS "@rx a" "id:1,phase:2,pass"\nSecRuleEngine Sometimes\n')
        assert "Sometimes" in str(first.value)
        bad = tmp_path / "bad.conf"
        bad.write_text('\n\nSecRule ARGS "@rx a" "id:2,phase:7,pass"\n')
        with pytest.raises(ModSecurityError) as second:
            rules.add_file(bad)
        message = str(second.value)
        assert str(bad) in message and "Line: 3" in message and "Sometimes" not in message
        with pytest.raises(ModSecurityError, match="Failed to open"):
            rules.add_file(tmp_path / "missing.conf")
    finally:
        rules.close()


def test_missing_library_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modsecurity, "_lib", None)
    monkeypatch.setattr(modsecurity, "_load_error", None)
    monkeypatch.setattr(modsecurity, "_LIBRARY_NAMES", ("libmodsecurity-absent.so.9",))
    monkeypatch.setattr(modsecurity.ctypes.util, "find_library", lambda name: None)
    reason = available()
    assert reason is not None and "libmodsecurity3" in reason and "apt-get install" in reason
    with pytest.raises(ModSecurityError, match="libmodsecurity3"):
        RulesSet()


def test_no_leak_over_20000_blocking_transactions(engine) -> None:
    """Each intervention hands back a ~1 kB log (and, for redirects, a url): unfreed, 20,000 of them grow RSS by
    about 30 MB; freed, RSS stays flat."""
    ms, rules, _ = engine
    pad = b"p" * 1000

    def blocking(i: int) -> None:
        t = transaction(ms, rules, b"deny" if i % 2 else b"redirect", key=i + 1, pad=pad)
        assert t.intervention() is not None
        t.process_logging()
        t.cleanup()

    for i in range(2000):
        blocking(i)
    before = rss()
    for i in range(20_000):
        blocking(i)
    growth = rss() - before
    assert growth < 3_000_000, f"RSS grew by {growth} bytes"


def test_no_leak_of_rule_parser_errors() -> None:
    """Each parser error is a strdup'ed copy of ~5 kB here: unfreed, 2,000 grow RSS by about 12 MB."""
    for _ in range(200):
        _broken_rules_set()
    before = rss()
    for _ in range(2000):
        _broken_rules_set()
    growth = rss() - before
    assert growth < 3_000_000, f"RSS grew by {growth} bytes"


def _broken_rules_set() -> None:
    rules = RulesSet()
    try:
        with pytest.raises(ModSecurityError):
            rules.add("SecRuleEngine " + "x" * 5000)
    finally:
        rules.close()


def test_transactions_run_in_parallel_threads(engine) -> None:
    """The GIL is released during library calls, so threads evaluate rules side by side without mixing results."""
    ms, rules, logs = engine
    errors: list[str] = []

    def worker(base: int) -> None:
        for i in range(300):
            key = base + i
            t = transaction(ms, rules, b"warn" if i % 2 else b"deny", key=key)
            got = t.intervention()
            if (got is None) != bool(i % 2):
                errors.append(f"{key}: {got}")
            t.cleanup()

    threads = [threading.Thread(target=worker, args=(n * 10_000,)) for n in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(logs) == 4 * 150
    assert all(b'[unique_id "event-%d"]' % key in text for key, text in logs)
