"""When the certificate manager orders: renewal times (lifetime, ARI, explicit requests) and backoff after failures."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from tlsedge.acme.schedule import ari_choice, backoff, order_due, scheduled_renewal
from tlsedge.config.schema import AcmeSettings
from tlsedge.pki.local_ca import LocalCA
from tlsedge.pki.site_certs import CertificateStatus, StoredCertificate, leaf_facts

NAMES = ("shop.example", "www.shop.example")
START = datetime(2030, 1, 1, tzinfo=UTC)
DAY = 86400.0
SETTINGS = AcmeSettings()  # renew with a third left, retry from 60 s up to 6 h


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create("tlsedge test CA for schedules")


def stored(
    ca: LocalCA,
    source: str = "acme",
    names: tuple[str, ...] = NAMES,
    days: float = 90,
    renew_at: datetime | None = None,
) -> StoredCertificate:
    """A stored certificate with a real leaf valid from START for ``days``."""
    issued = ca.issue(list(names), not_before=START, not_after=START + timedelta(days=days))
    facts = leaf_facts(issued.cert_pem)
    return StoredCertificate("shop", source, issued.cert_pem, issued.key_pem, *facts, renew_at=renew_at)


def at(days: float) -> float:
    return (START + timedelta(days=days)).timestamp()


# --- order_due --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["temporary", "import"])
def test_orders_at_once_when_the_certificate_is_not_from_acme(ca, source):
    now = at(1)
    assert order_due(None, NAMES, SETTINGS, CertificateStatus(), now) == now
    assert order_due(stored(ca, source), NAMES, SETTINGS, CertificateStatus(), now) == now


@pytest.mark.parametrize("wanted", [NAMES[:1], (*NAMES, "api.shop.example"), ("other.example", NAMES[1])])
def test_orders_at_once_when_the_names_changed(ca, wanted):
    now = at(1)
    assert order_due(stored(ca), wanted, SETTINGS, CertificateStatus(), now) == now


def test_the_order_of_names_does_not_matter(ca):
    assert order_due(stored(ca), tuple(reversed(NAMES)), SETTINGS, CertificateStatus(), at(1)) == at(60)


def test_orders_at_once_when_a_renewal_is_requested(ca):
    now = at(1)
    assert order_due(stored(ca), NAMES, SETTINGS, CertificateStatus(renew_requested=True), now) == now


def test_renews_with_a_third_of_the_lifetime_left(ca):
    cert = stored(ca, days=90)
    assert order_due(cert, NAMES, SETTINGS, CertificateStatus(), at(1)) == pytest.approx(at(60))
    assert scheduled_renewal(cert, SETTINGS) == START + timedelta(days=60)
    half = replace(SETTINGS, renew_remaining=0.5)
    assert order_due(cert, NAMES, half, CertificateStatus(), at(1)) == pytest.approx(at(45))


def test_short_certificates_renew_in_proportion(ca):
    cert = stored(ca, days=6)
    assert order_due(cert, NAMES, SETTINGS, CertificateStatus(), at(0)) == pytest.approx(at(4))


def test_a_stored_renew_at_wins_over_the_lifetime_rule(ca):
    cert = stored(ca, renew_at=START + timedelta(days=70))
    assert order_due(cert, NAMES, SETTINGS, CertificateStatus(), at(1)) == pytest.approx(at(70))


def test_ari_time_overrides_the_schedule(ca):
    status = CertificateStatus(ari_renew_at=at(30))
    assert order_due(stored(ca), NAMES, SETTINGS, status, at(1)) == at(30)
    late = CertificateStatus(ari_renew_at=at(75))  # later than the lifetime rule, still before not-after
    assert order_due(stored(ca), NAMES, SETTINGS, late, at(1)) == at(75)


def test_ari_time_is_capped_at_not_after(ca):
    status = CertificateStatus(ari_renew_at=at(200))
    assert order_due(stored(ca, days=90), NAMES, SETTINGS, status, at(1)) == at(90)


def test_backoff_postpones_the_order(ca):
    now = at(61)  # renewal due since day 60
    waiting = CertificateStatus(failures=2, next_attempt=now + 600)
    assert order_due(stored(ca), NAMES, SETTINGS, waiting, now) == now + 600
    assert order_due(None, NAMES, SETTINGS, waiting, now) == now + 600
    asked = CertificateStatus(renew_requested=True, next_attempt=now + 600)
    assert order_due(stored(ca), NAMES, SETTINGS, asked, now) == now + 600


def test_a_past_next_attempt_does_not_move_the_schedule_earlier(ca):
    status = CertificateStatus(next_attempt=at(2))
    assert order_due(stored(ca), NAMES, SETTINGS, status, at(3)) == pytest.approx(at(60))


# --- backoff ----------------------------------------------------------------------------------------------------------


def draws(failures: int, settings: AcmeSettings = SETTINGS, n: int = 500, **kwargs) -> list[float]:
    rng = random.Random(failures * 7919 + n)
    options = {"retry_after": None, "rate_limited": False, "lifetime": None, **kwargs}
    return [backoff(failures, settings, rng=rng, **options) for _ in range(n)]


def assert_jittered(values: list[float], nominal: float) -> None:
    """Every value within [nominal/2, nominal], and the draws actually spread over that range."""
    assert all(nominal / 2 <= v <= nominal for v in values), (min(values), max(values), nominal)
    assert min(values) < 0.55 * nominal
    assert max(values) > 0.95 * nominal


@pytest.mark.parametrize(("failures", "nominal"), [(1, 60), (2, 120), (3, 240), (6, 1920)])
def test_backoff_doubles_from_retry_min(failures, nominal):
    assert_jittered(draws(failures), nominal)


@pytest.mark.parametrize("failures", [10, 40, 10_000])
def test_backoff_is_capped_by_retry_max(failures):
    assert_jittered(draws(failures), SETTINGS.retry_max)


def test_backoff_follows_the_settings():
    settings = replace(SETTINGS, retry_min=10, retry_max=100)
    assert_jittered(draws(1, settings), 10)
    assert_jittered(draws(3, settings), 40)
    assert_jittered(draws(5, settings), 100)


def test_short_certificates_back_off_at_most_a_tenth_of_their_lifetime():
    assert_jittered(draws(20, lifetime=2 * DAY), 0.2 * DAY)  # under retry_max (0.25 days)
    assert_jittered(draws(20, lifetime=3600), 360)
    assert_jittered(draws(1, lifetime=90 * DAY), 60)  # a long lifetime does not raise the delay


def test_backoff_never_goes_below_a_second():
    assert all(v == 1.0 for v in draws(1, lifetime=5))


def test_retry_after_is_respected():
    assert all(v == 5000 for v in draws(1, retry_after=5000))
    assert_jittered(draws(3, retry_after=10), 240)  # a shorter Retry-After does not shorten our own backoff
    assert all(v >= 50_000 for v in draws(40, retry_after=50_000))  # even past retry_max


def test_rate_limited_without_retry_after_waits_an_hour():
    assert all(v == 3600 for v in draws(1, rate_limited=True))
    assert_jittered(draws(40, rate_limited=True), SETTINGS.retry_max)
    small = replace(SETTINGS, retry_min=10, retry_max=600)
    assert all(v == 600 for v in draws(1, small, rate_limited=True))


def test_rate_limited_with_retry_after_uses_it():
    assert all(v == 120 for v in draws(1, rate_limited=True, retry_after=120))


def test_backoff_without_an_rng_uses_the_module_random():
    assert 30 <= backoff(1, SETTINGS, retry_after=None, rate_limited=False, lifetime=None) <= 60


# --- ARI --------------------------------------------------------------------------------------------------------------


def test_ari_choice_is_within_the_window():
    rng = random.Random(4)
    now = at(0)
    picks = [ari_choice(now + 100, now + 200, now, rng) for _ in range(500)]
    assert all(now + 100 <= p <= now + 200 for p in picks)
    assert max(picks) - min(picks) > 80  # spread over the window, not a fixed point


def test_ari_choice_in_an_open_window_is_not_in_the_past():
    rng = random.Random(5)
    now = at(0)
    picks = [ari_choice(now - 100, now + 100, now, rng) for _ in range(500)]
    assert all(now <= p <= now + 100 for p in picks)
    assert any(p > now for p in picks)


def test_ari_choice_after_the_window_is_now():
    now = at(0)
    assert ari_choice(now - 200, now - 100, now) == now
    assert ari_choice(now - 200, now, now) == now
