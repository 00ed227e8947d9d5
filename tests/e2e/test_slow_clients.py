"""A client that stops reading is timed by send_timeout and blamed as the client, never as the origin; header names
that CGI-style origins read as forwarding headers are not passed from clients."""

from __future__ import annotations

import json
import time

from e2e_support import BLOG_HOSTS, build_request, site, wait_for


def test_client_that_stops_reading_is_closed_after_send_timeout(make_edge, py_origin, site_certs, origin):
    edge = make_edge(
        [site("blog", BLOG_HOSTS, [py_origin.url], site_certs["blog"], origin={"read_timeout": "1s"})],
        limits={"send_timeout": "2s"},
    )
    with edge.conn() as c:
        c.send(build_request(target="/bytes?size=200000000"))
        # never read: the edge's buffers and the socket fill, then it must give up on us, not on the origin
        time.sleep(0.5)
        t0 = time.monotonic()
        wait_for(lambda: any(e.get("path", "").startswith("/bytes") for e in edge.access_entries()), 8,
                 what="access log line of the abandoned response")
        assert time.monotonic() - t0 < 6
    entry = next(e for e in edge.access_entries() if e["path"].startswith("/bytes"))
    assert "send_timeout" in entry.get("error", ""), json.dumps(entry)
    assert "stopped sending" not in edge.error_text()  # the origin kept sending; it is not to blame
    assert edge.curl("blog.example", "/after").status == 200


def test_underscore_variants_of_forwarding_headers_are_dropped(make_edge, py_origin, site_certs, origin):
    edge = make_edge([site("blog", BLOG_HOSTS, [py_origin.url], site_certs["blog"])])
    with edge.conn() as c:
        resp = c.request(target="/u", headers=[("X_Forwarded_For", "7.7.7.7"), ("X_Real_Thing", "kept")])
    names = {name.lower() for name, _ in resp.json()["headers"]}
    assert "x_forwarded_for" not in names
    assert "x_real_thing" in names
