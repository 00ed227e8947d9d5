"""The disk tier and its file format: layout, checksum, Vary files, update, delete, purge, eviction, fill locks."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from tlsedge.cache import diskformat
from tlsedge.cache.disk import DiskTier, DiskTierError, key_hash, variant_hash
from tlsedge.cache.entry import CacheEntry

ALL_BYTES = bytes(range(256))


def entry(key: bytes, size: int, *, variant: bytes = b"", vary: tuple[bytes, ...] = (), site: str = "blog",
          tags: tuple[bytes, ...] = (), headers: list[tuple[bytes, bytes]] | None = None) -> CacheEntry:
    return CacheEntry(
        key=key, variant=variant, site=site, url=b"https://blog.test" + key, status=200,
        headers=headers if headers is not None else [(b"Content-Type", b"text/plain"), (b"X-Raw", ALL_BYTES)],
        vary=vary, tags=tags, request_time=1000.25, response_time=1000.5, initial_age=3.0, lifetime=60.0,
        stale_while_revalidate=30.0, stale_if_error=300.0, no_cache=False, must_revalidate=True,
        etag=b'"v1"', last_modified=None, body_size=size,
    )


def body_for(key: bytes, size: int) -> bytes:
    block = key * (4096 // max(1, len(key)) + 1)
    return (block * (size // len(block) + 1))[:size]


def store(tier: DiskTier, key: bytes, size: int = 1000, **kw: object) -> CacheEntry:
    e = entry(key, size, **kw)  # type: ignore[arg-type]
    writer = tier.writer(e)
    body = body_for(key, size)
    for start in range(0, size, 300):
        writer.write(memoryview(body)[start:start + 300] if start % 600 else body[start:start + 300])
    assert writer.commit(e), writer.error
    return e


def object_path(root: Path, site: str, key: bytes, variant: bytes = b"") -> Path:
    h = key_hash(key)
    return root / site / h[:2] / f"{h}-{variant_hash(variant)}"


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True, timeout=10)
    return int(done.stdout)


def encoded(e: CacheEntry, body: bytes) -> bytes:
    return body + diskformat.encode_trailer(e, diskformat.checksum(body))


# --- the file format ---------------------------------------------------------------------------------------------


def test_format_round_trip_keeps_every_field_and_byte_value() -> None:
    e = entry(b"/a?q=\xff", 5, tags=(b"t1", b"\x80tag"), vary=(b"accept-encoding",), variant=b"gzip\x00\xff")
    e.last_modified = b"Tue, 15 Nov 1994 12:45:26 GMT"
    e.lifetime = float("inf")
    data = encoded(e, b"hello")
    assert data.endswith(diskformat.MAGIC + data[-16:])  # footer: magic, lengths, crc
    decoded = diskformat.decode(data)
    assert decoded is not None
    assert decoded[0] == e and bytes(decoded[1]) == b"hello"


def test_format_body_is_first_so_a_fill_streams_it() -> None:
    e = entry(b"/s", 3)
    data = encoded(e, b"abc")
    assert data[:3] == b"abc"
    meta_len, body_len = struct.unpack_from("<IQ", data, len(data) - diskformat.FOOTER_SIZE + 8)
    assert body_len == 3 and meta_len + body_len + diskformat.FOOTER_SIZE == len(data)


def test_format_rejects_truncation_at_every_length() -> None:
    data = encoded(entry(b"/t", 100), b"x" * 100)
    for cut in range(len(data)):
        assert diskformat.decode(data[:cut]) is None, cut
    assert diskformat.decode(data + b"\0") is None


def test_format_rejects_any_flipped_byte() -> None:
    data = encoded(entry(b"/f", 64), bytes(range(64)))
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 0x01
        assert diskformat.decode(bytes(damaged)) is None, i


def test_format_rejects_foreign_files() -> None:
    assert diskformat.decode(b"") is None
    assert diskformat.decode(b"<html>not a cache file</html>" * 10) is None
    assert diskformat.decode(bytes(4096)) is None  # zero-filled blocks: what a power loss can leave
    data = encoded(entry(b"/m", 4), b"abcd")
    assert diskformat.decode(data.replace(diskformat.MAGIC, b"TECACHE2")) is None


def test_format_crc_covers_the_lengths_so_a_shifted_boundary_is_caught() -> None:
    """Moving one byte from the body to the metadata keeps the length sum; the crc must still fail."""
    data = bytearray(encoded(entry(b"/b", 10), b"0123456789"))
    magic, meta_len, body_len, crc = struct.unpack_from("<8sIQI", data, len(data) - 24)
    struct.pack_into("<8sIQI", data, len(data) - 24, magic, meta_len + 1, body_len - 1, crc)
    assert diskformat.decode(bytes(data)) is None


def forge(fields: list[object], body: bytes) -> bytes:
    """A file with arbitrary metadata and a valid checksum, written by the documented format."""
    meta = json.dumps(fields).encode()
    lengths = struct.pack("<IQ", len(meta), len(body))
    crc = zlib.crc32(lengths, zlib.crc32(meta, zlib.crc32(body)))
    return body + meta + struct.pack("<8sIQI", b"TECACHE1", len(meta), len(body), crc)


def valid_fields() -> list[object]:
    return [1, "/k", "", "blog", "https://blog.test/k", 200, [["A", "b"]], [], [], 1.0, 2.0, 0.0, 60.0, 0.0, 0.0,
            False, False, None, None, 2]


@pytest.mark.parametrize(("index", "bad"), [
    (0, 2),  # unknown version
    (0, True),  # version must be an int, not a bool
    (1, "\u0100"),  # not a latin-1 string: no byte value
    (1, 5),  # key not a string
    (3, ""),  # empty site
    (5, "200"),  # status as a string
    (5, 42),  # status out of range
    (6, [["A"]]),  # header not a pair
    (6, {"A": "b"}),  # headers not a list
    (7, "accept"),  # vary not a list
    (9, "1.0"),  # time as a string
    (12, float("nan")),  # NaN lifetime
    (15, 0),  # no_cache as an int
    (17, 7),  # etag neither null nor a string
    (19, 3),  # body_size differs from the footer's body length
])
def test_format_validates_every_metadata_field(index: int, bad: object) -> None:
    assert diskformat.decode(forge(valid_fields(), b"ok")) is not None
    fields = valid_fields()
    fields[index] = bad
    assert diskformat.decode(forge(fields, b"ok")) is None


def test_format_rejects_wrong_field_counts_and_shapes() -> None:
    assert diskformat.decode(forge([*valid_fields(), 1], b"ok")) is None
    assert diskformat.decode(forge(valid_fields()[:-1], b"ok")) is None
    assert diskformat.decode(forge({"version": 1}, b"ok")) is None  # type: ignore[arg-type]


def test_read_entry_only_reads_the_trailer_of_small_and_large_metadata(tmp_path: Path) -> None:
    small = entry(b"/small", 50_000)
    large = entry(b"/large", 50_000, headers=[(b"X-Big-%d" % i, b"v" * 100) for i in range(200)])  # > 8 KiB
    for e in (small, large):
        path = tmp_path / e.key.decode().strip("/")
        path.write_bytes(encoded(e, b"b" * 50_000))
        assert diskformat.read_entry_only(path) == e
    assert diskformat.read_entry_only(tmp_path / "missing") is None
    broken = tmp_path / "large"
    with open(broken, "r+b") as f:
        f.truncate(50_000 + 100)
    assert diskformat.read_entry_only(broken) is None


# --- the tier ----------------------------------------------------------------------------------------------------


def test_round_trip_layout_and_modes(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    tier = DiskTier(root, 1 << 30)
    e = store(tier, b"/page", 10_000)
    path = object_path(root, "blog", b"/page")
    assert path.is_file() and path.stat().st_mode & 0o777 == 0o600
    assert root.stat().st_mode & 0o777 == 0o700
    got = tier.get("blog", b"/page", b"")
    assert got is not None and got[0] == e and got[1] == body_for(b"/page", 10_000)
    assert isinstance(got[1], bytes)
    assert tier.vary_of("blog", b"/page") == ()
    assert tier.vary_of("blog", b"/other") is None
    assert tier.get("blog", b"/other", b"") is None
    assert tier.get("shop", b"/page", b"") is None
    assert tier.usage() == path.stat().st_size
    assert list((root / ".tmp").iterdir()) == []
    other_worker = DiskTier(root, 1 << 30)  # another process's view: nothing in memory, all on disk
    assert other_worker.get("blog", b"/page", b"") == got


def test_vary_file_lets_a_worker_that_never_saw_the_key_find_variants(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 30)
    gz = store(tier, b"/v", 100, variant=b"gzip", vary=(b"accept-encoding",))
    store(tier, b"/v", 200, variant=b"br", vary=(b"accept-encoding",))
    fresh = DiskTier(tmp_path, 1 << 30)
    assert fresh.vary_of("blog", b"/v") == (b"accept-encoding",)
    got = fresh.get("blog", b"/v", b"gzip")
    assert got is not None and got[0] == gz
    assert fresh.get("blog", b"/v", b"br") is not None
    assert fresh.get("blog", b"/v", b"") is None
    # The origin stops varying: the varying objects can no longer be looked up and are deleted with the .vary file.
    store(tier, b"/v", 50)
    assert fresh.vary_of("blog", b"/v") == ()
    assert not object_path(tmp_path, "blog", b"/v", b"gzip").exists()
    assert not object_path(tmp_path, "blog", b"/v", b"br").exists()
    # And starts varying again: the plain object goes.
    store(tier, b"/v", 60, variant=b"en", vary=(b"accept-language",))
    assert fresh.vary_of("blog", b"/v") == (b"accept-language",)
    assert fresh.get("blog", b"/v", b"") is None
    assert not object_path(tmp_path, "blog", b"/v").exists()


def test_varying_response_stored_under_the_empty_variant_is_kept(tmp_path: Path) -> None:
    """A request with none of the Vary fields may have the empty secondary key; the .vary file must still appear."""
    tier = DiskTier(tmp_path, 1 << 30)
    e = store(tier, b"/nv", 10, vary=(b"accept-language",))
    assert tier.vary_of("blog", b"/nv") == (b"accept-language",)
    got = tier.get("blog", b"/nv", b"")
    assert got is not None and got[0] == e


def test_damaged_file_is_a_miss_and_is_deleted(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 30)
    store(tier, b"/d", 5000)
    path = object_path(tmp_path, "blog", b"/d")
    data = bytearray(path.read_bytes())
    data[2500] ^= 0x40
    path.write_bytes(bytes(data))
    assert tier.get("blog", b"/d", b"") is None
    assert not path.exists()


def test_object_under_another_keys_name_is_not_served(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 30)
    store(tier, b"/one", 10)
    store(tier, b"/two", 10)
    os.replace(object_path(tmp_path, "blog", b"/one"), object_path(tmp_path, "blog", b"/two"))
    assert tier.get("blog", b"/two", b"") is None


def test_get_refreshes_mtime_at_most_once_a_minute(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 30)
    store(tier, b"/m", 10)
    path = object_path(tmp_path, "blog", b"/m")
    now = time.time()
    os.utime(path, (now - 30, now - 30))
    assert tier.get("blog", b"/m", b"") is not None
    assert path.stat().st_mtime == pytest.approx(now - 30, abs=0.01)
    os.utime(path, (now - 120, now - 120))
    assert tier.get("blog", b"/m", b"") is not None
    assert path.stat().st_mtime == pytest.approx(time.time(), abs=5)


def test_update_rewrites_metadata_and_keeps_the_body(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 30)
    e = store(tier, b"/u", 3_000_000)  # several copy chunks
    path = object_path(tmp_path, "blog", b"/u")
    inode = path.stat().st_ino
    e.headers = [(b"Content-Type", b"text/plain"), (b"X-Updated", b"yes")]
    e.response_time = 2000.0
    e.etag = b'"v2"'
    assert tier.update(e)
    got = tier.get("blog", b"/u", b"")
    assert got is not None and got[0] == e and got[1] == body_for(b"/u", 3_000_000)
    assert path.stat().st_ino != inode  # replaced atomically, not rewritten in place
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_update_refuses_missing_resized_and_damaged_objects(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 30)
    assert not tier.update(entry(b"/none", 10))
    e = store(tier, b"/u", 1000)
    assert not tier.update(entry(b"/u", 999))
    assert tier.get("blog", b"/u", b"") is not None
    path = object_path(tmp_path, "blog", b"/u")
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    path.write_bytes(bytes(data))
    assert not tier.update(e)
    assert not path.exists()
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_delete_one_variant_or_all(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 30)
    for variant in (b"gzip", b"br", b"identity"):
        store(tier, b"/x", 10, variant=variant, vary=(b"accept-encoding",))
    assert tier.delete("blog", b"/x", b"gzip") == 1
    assert tier.delete("blog", b"/x", b"gzip") == 0
    assert tier.get("blog", b"/x", b"br") is not None
    assert tier.delete("blog", b"/x") == 2
    assert tier.vary_of("blog", b"/x") is None
    assert tier.delete("blog", b"/never") == 0
    store(tier, b"/plain", 10)
    assert tier.delete("blog", b"/plain") == 1
    assert tier.vary_of("blog", b"/plain") is None


def test_purge_by_predicate_per_site_and_everywhere(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 30)
    for i in range(6):
        store(tier, b"/p%d" % i, 10, tags=(b"red",) if i % 2 else (b"blue",))
        store(tier, b"/p%d" % i, 10, site="shop", tags=(b"red",))
    store(tier, b"/varied", 10, variant=b"gzip", vary=(b"accept-encoding",), tags=(b"red",))
    assert tier.purge(lambda e: b"red" in e.tags, site="blog") == 4
    assert tier.get("blog", b"/p1", b"") is None
    assert tier.get("blog", b"/p0", b"") is not None
    assert tier.get("shop", b"/p1", b"") is not None
    assert tier.vary_of("blog", b"/varied") is None  # no variant left: the .vary file went too
    corrupt = object_path(tmp_path, "shop", b"/p0")
    corrupt.write_bytes(b"garbage")
    assert tier.purge(lambda e: b"red" in e.tags) == 5
    assert not corrupt.exists()  # invalid files are removed but not counted
    assert tier.usage() == sum(object_path(tmp_path, "blog", b"/p%d" % i).stat().st_size for i in (0, 2, 4))


def test_purge_site_removes_the_directory_and_counts(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 30)
    for i in range(7):
        store(tier, b"/s%d" % i, 10, site="shop")
    store(tier, b"/s0", 10)
    assert tier.purge_site("shop") == 7
    assert not (tmp_path / "shop").exists()
    assert tier.get("shop", b"/s1", b"") is None
    assert tier.get("blog", b"/s0", b"") is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp", "blog"]
    assert tier.purge_site("shop") == 0
    store(tier, b"/after", 10, site="shop")  # the site fills again
    assert tier.get("shop", b"/after", b"") is not None


def test_evict_removes_least_recently_used_until_under_budget(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 30)
    now = time.time()
    for i in range(10):
        store(tier, b"/e%d" % i, 10_000)
        os.utime(object_path(tmp_path, "blog", b"/e%d" % i), (now - 1000 + i, now - 1000 + i))
    size = object_path(tmp_path, "blog", b"/e0").stat().st_size
    assert tier.get("blog", b"/e0", b"") is not None  # the oldest, read now: its mtime is refreshed
    tier.budget = 6 * size + 10
    assert tier.evict() == 4
    assert tier.usage() <= tier.budget
    kept = [i for i in range(10) if tier.get("blog", b"/e%d" % i, b"") is not None]
    assert kept == [0, 5, 6, 7, 8, 9]
    assert tier.evict() == 0


def test_evict_tidies_orphan_vary_files_and_old_locks(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 30)
    store(tier, b"/o", 10, variant=b"gzip", vary=(b"accept-encoding",))
    store(tier, b"/kept", 10, variant=b"gzip", vary=(b"accept-encoding",))
    assert tier.claim("blog", b"/o", b"br", ttl=30)
    h = key_hash(b"/o")
    lock = tmp_path / "blog" / h[:2] / f"{h}-{variant_hash(b'br')}.fill"
    os.utime(lock, (time.time() - 7200, time.time() - 7200))
    object_path(tmp_path, "blog", b"/o", b"gzip").unlink()
    tier.evict()
    assert tier.vary_of("blog", b"/o") is None
    assert tier.vary_of("blog", b"/kept") == (b"accept-encoding",)
    assert not lock.exists()


def test_writer_commit_requires_the_announced_size_and_abort_is_idempotent(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 30)
    e = entry(b"/w", 10)
    writer = tier.writer(e)
    writer.write(b"12345")
    assert not writer.commit(e)
    assert isinstance(writer.error, ValueError)
    assert tier.get("blog", b"/w", b"") is None
    aborted = tier.writer(e)
    aborted.write(b"0123456789")
    assert len(list((tmp_path / ".tmp").iterdir())) == 1
    aborted.abort()
    aborted.abort()
    assert not aborted.commit(e)
    assert list((tmp_path / ".tmp").iterdir()) == []
    assert tier.get("blog", b"/w", b"") is None


def test_a_dropped_writer_removes_its_temp_file(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 30)
    writer = tier.writer(entry(b"/dropped", 10))
    writer.write(b"01234")
    assert len(list((tmp_path / ".tmp").iterdir())) == 1
    del writer
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_writer_on_an_unusable_directory_fails_quietly(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 30)
    (tmp_path / ".tmp").rmdir()
    (tmp_path / ".tmp").write_bytes(b"not a directory")
    e = entry(b"/w", 3)
    writer = tier.writer(e)
    writer.write(b"abc")
    assert not writer.commit(e)
    assert isinstance(writer.error, OSError)


DISK_FULL = r"""
import json, os, resource, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_disk_tier import entry
from tlsedge.cache.disk import DiskTier
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
tier = DiskTier(Path(sys.argv[1]), 1 << 30)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))  # writes past 64 KiB fail with EFBIG, like a full disk
e = entry(b"/full", 200_000)
writer = tier.writer(e)
for _ in range(20):
    writer.write(b"z" * 10_000)
temps = os.listdir(Path(sys.argv[1]) / ".tmp")
print(json.dumps({"commit": writer.commit(e), "errno": getattr(writer.error, "errno", None), "temps": temps,
                  "get": tier.get("blog", b"/full", b"") is not None}))
"""


def test_disk_full_during_write_is_swallowed_and_commit_fails(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", DISK_FULL, str(tmp_path), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {"commit": False, "errno": 27, "temps": [], "get": False}  # 27: EFBIG


def test_constructor_names_an_unusable_root(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(DiskTierError, match=str(blocker)):
        DiskTier(blocker / "cache", 1 << 20)


def test_unsafe_site_names_are_refused(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 20)
    for site in ("", ".tmp", "../x", "a/b"):
        with pytest.raises(ValueError, match="site name"):
            tier.get(site, b"/k", b"")


def test_abandoned_temp_files_and_purges_are_cleaned_at_start(tmp_path: Path) -> None:
    DiskTier(tmp_path, 1 << 20)
    tmp = tmp_path / ".tmp"
    gone = dead_pid()
    (tmp / f"{gone}-abcd-1").write_bytes(b"partial")
    (tmp / "foreign").write_bytes(b"?")
    old_live = tmp / f"{os.getpid()}-ffff-9"
    old_live.write_bytes(b"stale")
    os.utime(old_live, (time.time() - 7200, time.time() - 7200))
    (tmp / f"{os.getpid()}-ffff-10").write_bytes(b"being written")
    (tmp_path / f".purge-{gone}-abcd-2" / "ab").mkdir(parents=True)
    DiskTier(tmp_path, 1 << 20)
    assert [p.name for p in tmp.iterdir()] == [f"{os.getpid()}-ffff-10"]
    assert not (tmp_path / f".purge-{gone}-abcd-2").exists()


def test_temp_files_of_a_killed_process_not_yet_reaped_are_cleaned(tmp_path: Path) -> None:
    """A worker killed with its control process is adopted by whoever reaps orphans; until then it is a zombie
    whose pid answers signals. It writes no more, so its temp files are abandoned."""
    DiskTier(tmp_path, 1 << 20)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        os.kill(zombie.pid, 0)  # still signalable: a plain liveness check would keep its files
        (tmp_path / ".tmp" / f"{zombie.pid}-abcd-1").write_bytes(b"partial")
        DiskTier(tmp_path, 1 << 20)
        assert list((tmp_path / ".tmp").iterdir()) == []
    finally:
        zombie.wait(5)


def test_fill_lock_claim_release_and_claimed(tmp_path: Path) -> None:
    a = DiskTier(tmp_path, 1 << 20)
    b = DiskTier(tmp_path, 1 << 20)  # another worker
    assert not a.claimed("blog", b"/f", b"", ttl=30)
    assert a.claim("blog", b"/f", b"", ttl=30)
    assert a.claim("blog", b"/f", b"", ttl=30)  # ours: extended
    assert not a.claimed("blog", b"/f", b"", ttl=30)
    assert b.claimed("blog", b"/f", b"", ttl=30)
    assert not b.claim("blog", b"/f", b"", ttl=30)
    assert b.claim("blog", b"/f", b"gzip", ttl=30)  # another variant is another lock
    b.release("blog", b"/f", b"")  # not b's: left alone
    assert b.claimed("blog", b"/f", b"", ttl=30)
    a.release("blog", b"/f", b"")
    assert not b.claimed("blog", b"/f", b"", ttl=30)
    assert b.claim("blog", b"/f", b"", ttl=30)


def test_fill_lock_older_than_ttl_is_taken_over(tmp_path: Path) -> None:
    a = DiskTier(tmp_path, 1 << 20)
    b = DiskTier(tmp_path, 1 << 20)
    assert a.claim("blog", b"/t", b"", ttl=5)
    h = key_hash(b"/t")
    lock = tmp_path / "blog" / h[:2] / f"{h}-0.fill"
    os.utime(lock, (time.time() - 10, time.time() - 10))
    assert not b.claimed("blog", b"/t", b"", ttl=5)
    assert b.claimed("blog", b"/t", b"", ttl=60)  # the age that makes it stale is the caller's ttl
    assert b.claim("blog", b"/t", b"", ttl=5)
    a.release("blog", b"/t", b"")  # a's claim lapsed: b's lock stays
    assert lock.exists()
    assert a.claimed("blog", b"/t", b"", ttl=5)


def test_fill_lock_of_a_dead_process_is_stale_at_once(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 20)
    h = key_hash(b"/dead")
    lock = tmp_path / "blog" / h[:2] / f"{h}-0.fill"
    lock.parent.mkdir(parents=True)
    lock.write_bytes(b"%d 1234-abcd-0" % dead_pid())
    assert not tier.claimed("blog", b"/dead", b"", ttl=3600)
    assert tier.claim("blog", b"/dead", b"", ttl=3600)
    lock.write_bytes(b"")  # a lock being created (content not yet written) is live while young
    assert tier.claimed("blog", b"/dead", b"", ttl=3600)
