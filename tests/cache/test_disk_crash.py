"""The disk tier under kill -9 and on-disk damage, and shared by two processes.

A writer process loops filling objects of random sizes (1 B .. 2 MiB) and is killed at random moments; files are then
truncated, bit-flipped and zero-filled on purpose. Every object's content is derived from its key and variant, so the
test knows what each one must contain: whatever ``get`` returns must be exactly that, every damaged file is a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from tlsedge.cache import diskformat
from tlsedge.cache.disk import DiskTier, key_hash, variant_hash
from tlsedge.cache.entry import CacheEntry

HERE = str(Path(__file__).parent)
KEYS = 150
MAX_SIZE = 2 << 20


def universe() -> list[tuple[bytes, bytes]]:
    """Every (key, variant) a writer may store: one key in four varies on Accept-Encoding."""
    pairs = []
    for i in range(KEYS):
        key = b"/obj/%d" % i
        pairs.extend([(key, b"gzip"), (key, b"br")] if i % 4 == 0 else [(key, b"")])
    return pairs


def content(key: bytes, variant: bytes) -> bytes:
    """The body of (key, variant): its size (log-uniform, 1 B .. 2 MiB) and every 4 KiB block depend on both."""
    seed = key + b"|" + variant
    size = min(MAX_SIZE, int(2 ** random.Random(seed).uniform(0, 21)))
    blocks = (size + 4095) // 4096
    return b"".join(hashlib.blake2b(seed + n.to_bytes(4, "big"), digest_size=64).digest() * 64
                    for n in range(blocks))[:size]


def make_entry(key: bytes, variant: bytes, size: int, generation: int = 0) -> CacheEntry:
    return CacheEntry(
        key=key, variant=variant, site="blog", url=b"https://blog.test" + key, status=200,
        headers=[(b"Content-Type", b"application/octet-stream"), (b"X-Generation", b"%d" % generation)],
        vary=(b"accept-encoding",) if variant else (), tags=(), request_time=time.time(), response_time=time.time(),
        initial_age=0.0, lifetime=60.0, stale_while_revalidate=0.0, stale_if_error=0.0, no_cache=False,
        must_revalidate=False, etag=None, last_modified=None, body_size=size,
    )


WRITER = r"""
import random, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from test_disk_crash import content, make_entry, universe
from tlsedge.cache.disk import DiskTier

tier = DiskTier(Path(sys.argv[1]), 1 << 40)
rng = random.Random(int(sys.argv[2]))
pairs = universe()
abandoned = tier.writer(make_entry(b"/abandoned", b"", 10))  # so every kill leaves a temp file of a dead pid
abandoned.write(b"part")
print("ready", flush=True)
held = []
generation = 0
while True:
    generation += 1
    key, variant = rng.choice(pairs)
    body = memoryview(content(key, variant))
    entry = make_entry(key, variant, len(body), generation)
    writer = tier.writer(entry)
    pos = 0
    while pos < len(body):
        step = rng.randrange(1, 256 * 1024)
        writer.write(body[pos:pos + step])
        pos += step
    fate = rng.random()
    if fate < 0.1:
        writer.abort()
    elif fate < 0.15:
        held.append(writer)  # left mid-write and open, never committed
    elif not writer.commit(entry):
        raise SystemExit(f"commit failed: {writer.error}")
    elif fate < 0.25:
        entry.headers.append((b"X-Revalidated", b"%d" % generation))
        tier.update(entry)
    elif fate < 0.28:
        tier.delete("blog", key)
"""


def object_files(root: Path) -> list[Path]:
    """Every object file on disk, recognised by name independently of the tier's own walk."""
    found = []
    for directory, _, names in os.walk(root):
        if "/." in directory[len(str(root)):]:
            continue
        found.extend(Path(directory, n) for n in names if len(n) in (34, 49) and n[32] == "-")
    return found


def damage(path: Path, how: int, rng: random.Random) -> None:
    size = path.stat().st_size
    if how == 0:  # torn: truncated at a random point
        os.truncate(path, rng.randrange(size))
    elif how == 1:  # bit rot: one flipped bit anywhere
        with open(path, "r+b") as f:
            at = rng.randrange(size)
            f.seek(at)
            byte = f.read(1)[0]
            f.seek(at)
            f.write(bytes([byte ^ (1 << rng.randrange(8))]))
    else:  # power loss: the tail's blocks never reached the disk and read back as zeros
        start = rng.randrange(size)
        with open(path, "r+b") as f:
            f.seek(start)
            f.write(bytes(size - start))


def test_kill_9_during_fills_never_serves_a_damaged_object(tmp_path: Path) -> None:
    started = time.monotonic()
    root = tmp_path / "cache"
    rng = random.Random(2024)
    dead = []
    for round_ in range(8):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(round_), HERE],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.05, 0.4))
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
        finally:
            child.kill()
            child.wait(timeout=10)  # reaped: a zombie would still look alive to the next DiskTier
        assert child.returncode == -9
        dead.append(child.pid)

    temps = os.listdir(root / ".tmp")
    # Each writer's DiskTier() cleaned the temp files its killed predecessors left; the last one's are still there.
    assert {int(name.split("-")[0]) for name in temps} == {dead[-1]}
    files = object_files(root)
    assert len(files) >= 20
    for path in files:  # kill -9 never leaves an invalid object in place: renames are atomic
        decoded = diskformat.decode(path.read_bytes())
        assert decoded is not None, path
        entry, body = decoded
        assert bytes(body) == content(entry.key, entry.variant)

    damaged = {}
    for n, path in enumerate(rng.sample(files, len(files) // 3)):
        entry = diskformat.read_entry_only(path)
        assert entry is not None
        damaged[(entry.key, entry.variant)] = path
        damage(path, n % 3, rng)

    tier = DiskTier(root, 1 << 40)
    assert os.listdir(root / ".tmp") == []  # temp files of the dead writers are gone
    served = 0
    for key, variant in universe():
        got = tier.get("blog", key, variant)
        if (key, variant) in damaged:
            assert got is None
            assert not damaged[(key, variant)].exists()  # a damaged file is deleted on sight
        elif got is not None:
            served += 1
            assert got[0].key == key and got[0].variant == variant
            assert got[1] == content(key, variant)
            assert got[0].body_size == len(got[1])
    assert served == len(files) - len(damaged)
    remaining = object_files(root)
    assert len(remaining) == served
    assert tier.usage() == sum(p.stat().st_size for p in remaining) > 0
    assert time.monotonic() - started < 15


SHARER = r"""
import json, os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_disk_crash import content, make_entry
from tlsedge.cache.disk import DiskTier

tier = DiskTier(Path(sys.argv[1]), 1 << 30)
written = []
for key, variant in [(b"/shared/0", b""), (b"/shared/1", b""), (b"/shared/2", b"gzip"), (b"/shared/2", b"br")]:
    body = content(key, variant)
    entry = make_entry(key, variant, len(body))
    writer = tier.writer(entry)
    writer.write(body)
    assert writer.commit(entry)
    written.append([key.decode(), variant.decode()])
assert tier.claim("blog", b"/shared/9", b"", 30.0)
print(json.dumps(written), flush=True)
sys.stdin.readline()
got = tier.get("blog", b"/from-parent", b"")
print(json.dumps(got is not None and got[1] == content(b"/from-parent", b"")), flush=True)
os._exit(0)  # dies holding its fill lock, like a crashed worker
"""


def test_two_processes_share_objects_and_fill_locks(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    child = subprocess.Popen([sys.executable, "-c", SHARER, str(root), HERE], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdin is not None
        line = child.stdout.readline()
        assert line, child.stderr.read() if child.stderr else ""
        tier = DiskTier(root, 1 << 30)
        for key_text, variant_text in json.loads(line):
            key, variant = key_text.encode(), variant_text.encode()
            assert tier.vary_of("blog", key) == ((b"accept-encoding",) if variant else ())
            got = tier.get("blog", key, variant)
            assert got is not None and got[1] == content(key, variant)
        assert tier.claimed("blog", b"/shared/9", b"", ttl=30)
        assert not tier.claim("blog", b"/shared/9", b"", ttl=30)

        body = content(b"/from-parent", b"")
        entry = make_entry(b"/from-parent", b"", len(body))
        writer = tier.writer(entry)
        writer.write(body)
        assert writer.commit(entry)
        child.stdin.write(b"read\n")
        child.stdin.flush()
        assert json.loads(child.stdout.readline()) is True
        assert child.wait(timeout=10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    h = key_hash(b"/shared/9")
    assert (root / "blog" / h[:2] / f"{h}-{variant_hash(b'')}.fill").exists()
    assert not tier.claimed("blog", b"/shared/9", b"", ttl=3600)  # its process is dead: stale at once
    assert tier.claim("blog", b"/shared/9", b"", ttl=3600)
