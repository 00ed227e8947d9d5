"""The control process keeps the edge serving when a worker dies, and restarts crashed workers with backoff."""

from __future__ import annotations

import os
import signal

from e2e_support import BLOG_HOSTS, site, wait_for


def test_killed_worker_is_replaced_and_edge_keeps_serving(make_edge, py_origin, site_certs, origin):
    edge = make_edge([site("blog", BLOG_HOSTS, [py_origin.url], site_certs["blog"])], workers=2)
    wait_for(lambda: len(edge.worker_pids()) == 2, 10, what="two workers")
    victim = edge.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: len(edge.worker_pids()) == 2 and victim not in edge.worker_pids(), 10, what="replacement worker"
    )
    assert "exited unexpectedly" in edge.error_text()
    for _ in range(4):
        assert edge.curl("blog.example", "/after-crash").status == 200
    assert edge.proc.poll() is None


def test_repeated_crashes_back_off(make_edge, py_origin, site_certs, origin):
    edge = make_edge([site("blog", BLOG_HOSTS, [py_origin.url], site_certs["blog"])], workers=1)
    for _ in range(3):
        wait_for(lambda: len(edge.worker_pids()) == 1, 10, what="a worker")
        os.kill(edge.worker_pids()[0], signal.SIGKILL)
        wait_for(lambda: not edge.worker_pids(), 5, what="worker gone")
    # third crash in a row: restarted after 0.4 s, not at once
    delays = [line for line in edge.error_text().splitlines() if "starting a new one in" in line]
    assert [d.rsplit(" in ", 1)[1] for d in delays] == ["0.1 s", "0.2 s", "0.4 s"], delays
    wait_for(lambda: len(edge.worker_pids()) == 1, 10, what="worker restarted after backoff")
    assert edge.curl("blog.example", "/").status == 200
