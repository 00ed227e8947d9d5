"""The disk tier: cached responses as files shared by every worker of the edge (separate processes).

Layout under ``root``::

    <site>/<h[:2]>/<h>-<v>        one object (diskformat: body, metadata, footer); h = blake2b-128(key) hex,
                                  v = blake2b-64(variant) hex, or "0" for the variant b""
    <site>/<h[:2]>/<h>.vary       the Vary names of the key's responses, so a worker that never saw the key can
                                  compute the variant of a request
    <site>/<h[:2]>/<h>-<v>.fill   a cross-worker fill lock (O_CREAT|O_EXCL; content "<pid> <token>")
    .tmp/<pid>-<token>-<n>        files being written; os.replace'd into place on commit (atomic)
    .purge-<pid>-<token>-<n>/     a purged site's directory, renamed aside and being removed

Why files and no index: the processes share nothing but the directory, and the filesystem already is a concurrent
index with atomic rename. A reader either opens the old object or the new one, never a mix; a writer's partial file
is invisible until its rename. No fsync per commit: after a power loss, recent objects may be missing, truncated or
zero-filled, and the checksum (see diskformat) turns every such file into a miss that is deleted; a crash of a process
(kill -9) loses nothing committed. The cost: a power loss can lose recent entries, but it never makes a wrong one
served.

Eviction is least-recently-used by file mtime: a commit sets it, and ``get`` refreshes it at most once a minute per
file (one ``futimens`` on the open descriptor), so a hit costs open, fstat, read and close. ``evict`` and ``usage`` walk
the whole tree: run them from one process on a timer, not per request.

Every OSError of a read path (``get``, ``vary_of``, ``purge``, ``claimed``) is a miss or a skip; writers record their
error and make ``commit`` return False. Only the constructor raises (``DiskTierError``) when the root is unusable,
and a method given an unsafe site name (``ValueError``; the configuration rules such names out).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from tlsedge.cache import diskformat
from tlsedge.cache.entry import CacheEntry

TOUCH_INTERVAL = 60.0  # seconds between two mtime refreshes of a file by get()
STALE_TEMP = 3600.0  # a temp file (or lock) untouched this long is abandoned even if its pid looks alive (pid reuse)
_COPY_CHUNK = 1 << 20
_O_READ = os.O_RDONLY | os.O_CLOEXEC
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class DiskTierError(OSError):
    """The cache directory cannot be used; the message names it, the reason and what to do."""


def key_hash(key: bytes) -> str:
    """The file name stem of a primary key (32 hex digits)."""
    return hashlib.blake2b(key, digest_size=16).hexdigest()


def variant_hash(variant: bytes) -> str:
    """The file name suffix of a secondary key: 16 hex digits, or "0" for no variant."""
    return hashlib.blake2b(variant, digest_size=8).hexdigest() if variant else "0"


def _is_object(name: str) -> bool:
    """Whether a file name in a key directory is an object (not a .vary, a .fill or something foreign)."""
    return (len(name) == 34 or len(name) == 49) and name[32] == "-"


class DiskTier:
    """The shared disk cache under ``root``, kept under ``budget`` bytes of objects by ``evict``."""

    def __init__(self, root: Path, budget: int) -> None:
        self.root = Path(root)
        self.budget = budget
        self._root = str(root)
        self._tmp = os.path.join(self._root, ".tmp")
        try:
            os.makedirs(self._tmp, mode=0o700, exist_ok=True)
            os.chmod(self._root, 0o700)
        except OSError as exc:
            raise DiskTierError(
                f"cache directory {self._root}: {exc.strerror or exc}; make it writable by the user tlsedge runs as, "
                "or point the state directory elsewhere"
            ) from None
        self._token = secrets.token_hex(4)
        self._counter = itertools.count()
        self._site_dirs: dict[str, str] = {}
        self._claims: dict[str, bytes] = {}  # lock path -> the content we wrote in it
        self._clean_abandoned()

    # --- reading -------------------------------------------------------------------------------------------------

    def vary_of(self, site: str, key: bytes) -> tuple[bytes, ...] | None:
        """The Vary names of the key's stored responses: () when they do not vary, None when nothing is stored."""
        directory, h = self._key_dir(site, key)
        try:
            fd = os.open(f"{directory}/{h}.vary", _O_READ)
        except FileNotFoundError:
            return () if os.path.exists(f"{directory}/{h}-0") else None
        except OSError:
            return None
        try:
            data = os.read(fd, 65536)
        except OSError:
            return None
        finally:
            os.close(fd)
        return tuple(data.split(b"\n")) if data else None

    def get(self, site: str, key: bytes, variant: bytes) -> tuple[CacheEntry, bytes] | None:
        """A stored object whose checksum holds and whose identity is the one asked; a damaged file is deleted."""
        path = self._object_path(site, key, variant)
        try:
            fd = os.open(path, _O_READ)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            data = _read_all(fd, st.st_size)
            if time.time() - st.st_mtime > TOUCH_INTERVAL:
                with contextlib.suppress(OSError):
                    os.utime(fd)
        except OSError:
            return None
        finally:
            os.close(fd)
        decoded = diskformat.decode(data)
        if decoded is None:
            _unlink_if_same(path, st.st_ino)
            return None
        entry, body = decoded
        if entry.key != key or entry.variant != variant or entry.site != site:  # a foreign file under this name
            _unlink_if_same(path, st.st_ino)
            return None
        return entry, body.tobytes()

    # --- writing -------------------------------------------------------------------------------------------------

    def writer(self, entry: CacheEntry) -> DiskWriter:
        """A writer for a new object's body; an unusable directory gives a writer that fails (commit -> False)."""
        self._site_dir(entry.site)  # an unsafe site name fails here, not after the body was written
        path = self._temp_name()
        try:
            fd = os.open(path, _O_NEW, 0o600)
        except FileNotFoundError:  # .tmp removed under us: recreate it once
            try:
                os.makedirs(self._tmp, mode=0o700, exist_ok=True)
                fd = os.open(path, _O_NEW, 0o600)
            except OSError as exc:
                return DiskWriter(self, None, path, exc)
        except OSError as exc:
            return DiskWriter(self, None, path, exc)
        return DiskWriter(self, fd, path, None)

    def update(self, entry: CacheEntry) -> bool:
        """Replace a stored object's metadata (after a 304), keeping its body: copied with the new trailer, replaced.

        False when the object is gone, damaged (then deleted), of another body size, replaced meanwhile (the newer
        object wins), or the copy fails.
        """
        path = self._object_path(entry.site, entry.key, entry.variant)
        try:
            src = os.open(path, _O_READ)
        except OSError:
            return False
        writer: DiskWriter | None = None
        try:
            st = os.fstat(src)
            trailer = diskformat.read_trailer(src, st.st_size)
            if trailer is None:
                _unlink_if_same(path, st.st_ino)
                return False
            if trailer.body_len != entry.body_size:
                return False
            writer = self.writer(entry)
            offset = 0
            while offset < trailer.body_len:
                chunk = os.pread(src, min(_COPY_CHUNK, trailer.body_len - offset), offset)
                if not chunk:
                    return False
                writer.write(chunk)
                offset += len(chunk)
            if writer.error is not None:
                return False
            old = trailer.entry()
            if not trailer.matches(writer.checksum) or old is None or old.key != entry.key:
                _unlink_if_same(path, st.st_ino)
                return False
            if os.stat(path).st_ino != st.st_ino:
                return False
            return writer.commit(entry)
        except OSError:
            return False
        finally:
            os.close(src)
            if writer is not None:
                writer.abort()

    def _place(self, temp: str, entry: CacheEntry) -> None:
        """Rename a complete temp file into place, then bring the key's .vary file in line with the entry."""
        directory, h = self._key_dir(entry.site, entry.key)
        path = f"{directory}/{h}-{variant_hash(entry.variant)}"
        try:
            os.replace(temp, path)
        except FileNotFoundError:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            os.replace(temp, path)
        try:
            self._set_vary(directory, h, path, entry.vary)
        except OSError:
            _unlink(path)  # a varying object without its .vary file could not be found: do not leave it behind
            raise

    def _set_vary(self, directory: str, h: str, path: str, vary: tuple[bytes, ...]) -> None:
        """Record the Vary names; when they changed, the key's other variants are unreachable and are deleted."""
        vary_path = f"{directory}/{h}.vary"
        if not vary:
            if _unlink(vary_path):
                self._drop_variants(directory, h, keep=path)
            return
        content = b"\n".join(vary)
        try:
            with open(vary_path, "rb") as f:
                old: bytes | None = f.read()
        except FileNotFoundError:
            old = None
        if old == content:
            return
        temp = self._temp_name()
        fd = os.open(temp, _O_NEW, 0o600)
        try:
            _write_all(fd, content)
        except OSError:
            _unlink(temp)
            raise
        finally:
            os.close(fd)
        os.replace(temp, vary_path)
        if old is None:
            zero = f"{directory}/{h}-0"  # the key's response did not vary before
            if zero != path:
                _unlink(zero)
        else:
            self._drop_variants(directory, h, keep=path)

    # --- deleting ------------------------------------------------------------------------------------------------

    def delete(self, site: str, key: bytes, variant: bytes | None = None) -> int:
        """Delete one variant, or (variant None) every variant and the .vary file; return how many objects went.

        Without a .vary file the key has only its plain object (other variants could not be found anyway), so the
        common case (an unsafe method invalidating a URI) costs two unlinks and no directory listing.
        """
        directory, h = self._key_dir(site, key)
        if variant is not None:
            return int(_unlink(f"{directory}/{h}-{variant_hash(variant)}"))
        if _unlink(f"{directory}/{h}.vary"):
            return self._drop_variants(directory, h, keep=None)
        return int(_unlink(f"{directory}/{h}-0"))

    def purge(self, matches: Callable[[CacheEntry], bool], site: str | None = None) -> int:
        """Delete every object (of one site when given) whose metadata ``matches``; return how many.

        Reads only trailers. Files that are not valid objects are deleted too (never served anyway) but not counted;
        a key left without objects loses its .vary file.
        """
        count = 0
        for site_dir in self._site_paths(site):
            for directory in _subdirs(site_dir):
                listing = _listing(directory)
                purged: set[str] = set()
                remaining: set[str] = set()
                for item in listing:
                    name = item.name
                    if not _is_object(name):
                        continue
                    entry = diskformat.read_entry_only(item.path)
                    if entry is None:
                        _unlink(item.path)
                    elif matches(entry):
                        count += _unlink(item.path)
                        purged.add(name[:32])
                    else:
                        remaining.add(name[:32])
                for h in purged - remaining:
                    _unlink(f"{directory}/{h}.vary")
        return count

    def purge_site(self, site: str) -> int:
        """Drop a site's whole directory: renamed aside (gets miss from then on), counted, then removed."""
        aside = f"{self._root}/.purge-{self._unique()}"
        try:
            os.rename(self._site_dir(site), aside)
        except FileNotFoundError:
            return 0
        except OSError:  # cannot rename (a mount point, say): delete object by object instead
            return self.purge(lambda _: True, site)
        count = sum(1 for d in _subdirs(aside) for item in _listing(d) if _is_object(item.name))
        shutil.rmtree(aside, ignore_errors=True)
        return count

    def _drop_variants(self, directory: str, h: str, keep: str | None) -> int:
        prefix = h + "-"
        count = 0
        for item in _listing(directory):
            if item.name.startswith(prefix) and _is_object(item.name) and item.path != keep:
                count += _unlink(item.path)
        return count

    # --- budget --------------------------------------------------------------------------------------------------

    def evict(self) -> int:
        """Delete the least recently used objects (oldest mtime) until usage is within the budget; return how many.

        The same walk removes what crashes leave behind: .vary files of keys without objects, fill locks untouched
        for an hour, temp files of dead processes.
        """
        objects, total = self._inventory(tidy=True)
        self._clean_abandoned()
        if total <= self.budget:
            return 0
        objects.sort()
        count = 0
        for _mtime, size, path in objects:
            if total <= self.budget:
                break
            count += _unlink(path)
            total -= size  # gone even when another process deleted it first
        return count

    def usage(self) -> int:
        """Bytes of stored objects (a walk of the tree: not for the request path)."""
        return self._inventory(tidy=False)[1]

    def _inventory(self, tidy: bool) -> tuple[list[tuple[float, int, str]], int]:
        """(mtime, size, path) of every object and their total size; with ``tidy``, remove orphans on the way."""
        objects: list[tuple[float, int, str]] = []
        total = 0
        now = time.time()
        for site_dir in self._site_paths(None):
            for directory in _subdirs(site_dir):
                stems: set[str] = set()
                leftovers: list[os.DirEntry[str]] = []
                for item in _listing(directory):
                    name = item.name
                    if _is_object(name):
                        try:
                            st = item.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        objects.append((st.st_mtime, st.st_size, item.path))
                        total += st.st_size
                        stems.add(name[:32])
                    elif tidy and (name.endswith(".vary") or name.endswith(".fill")):
                        leftovers.append(item)
                for item in leftovers:
                    if item.name.endswith(".vary"):
                        if item.name[:32] not in stems:
                            _unlink(item.path)
                    else:
                        with contextlib.suppress(OSError):
                            if now - item.stat(follow_symlinks=False).st_mtime > STALE_TEMP:
                                _unlink(item.path)
        return objects, total

    # --- fill locks ----------------------------------------------------------------------------------------------

    def claim(self, site: str, key: bytes, variant: bytes, ttl: float) -> bool:
        """Take the cross-worker fill lock of an object, or extend it when we hold it already.

        A lock older than ``ttl`` seconds, or whose process is dead, is stale and taken over. Two workers taking over
        the same stale lock at the same instant may both succeed: both fill, both results are valid, the last commit
        wins. True also when the lock cannot be created for another reason than someone holding it: a broken cache
        directory must not stop fills.
        """
        directory, h = self._key_dir(site, key)
        lock = f"{directory}/{h}-{variant_hash(variant)}.fill"
        token = self._claims.get(lock) or b"%s %s" % (_owner(os.getpid()), self._unique().encode())
        try:
            for _ in range(3):
                try:
                    fd = os.open(lock, _O_NEW, 0o600)
                except FileNotFoundError:
                    os.makedirs(directory, mode=0o700, exist_ok=True)
                    continue
                except FileExistsError:
                    holder = _holder(lock)
                    if holder is None:
                        continue  # released meanwhile: try again
                    content, mtime = holder
                    if content == token:
                        os.utime(lock)
                        return True
                    if _live(content, mtime, ttl):
                        return False
                    return self._take_over(lock, token)
                try:
                    _write_all(fd, token)
                finally:
                    os.close(fd)
                self._claims[lock] = token
                return True
        except OSError:
            return True
        return False

    def _take_over(self, lock: str, token: bytes) -> bool:
        temp = self._temp_name()
        fd = os.open(temp, _O_NEW, 0o600)
        try:
            _write_all(fd, token)
        except OSError:
            _unlink(temp)
            raise
        finally:
            os.close(fd)
        os.replace(temp, lock)
        holder = _holder(lock)
        if holder is None or holder[0] != token:
            return False
        self._claims[lock] = token
        return True

    def release(self, site: str, key: bytes, variant: bytes) -> None:
        """Give up a fill lock we hold; one taken over by someone else is left alone."""
        directory, h = self._key_dir(site, key)
        lock = f"{directory}/{h}-{variant_hash(variant)}.fill"
        token = self._claims.pop(lock, None)
        if token is None:
            return
        holder = _holder(lock)
        if holder is not None and holder[0] == token:
            _unlink(lock)

    def claimed(self, site: str, key: bytes, variant: bytes, ttl: float) -> bool:
        """Whether another worker (or another DiskTier) holds a live fill lock on the object."""
        directory, h = self._key_dir(site, key)
        lock = f"{directory}/{h}-{variant_hash(variant)}.fill"
        holder = _holder(lock)
        if holder is None:
            return False
        content, mtime = holder
        return content != self._claims.get(lock) and _live(content, mtime, ttl)

    # --- paths and housekeeping ----------------------------------------------------------------------------------

    def _site_dir(self, site: str) -> str:
        path = self._site_dirs.get(site)
        if path is None:
            if not site or site[0] == "." or "/" in site or "\0" in site:
                raise ValueError(f"cache: site name {site!r} is not a safe directory name")
            path = self._site_dirs[site] = os.path.join(self._root, site)
        return path

    def _key_dir(self, site: str, key: bytes) -> tuple[str, str]:
        h = key_hash(key)
        return f"{self._site_dir(site)}/{h[:2]}", h

    def _object_path(self, site: str, key: bytes, variant: bytes) -> str:
        directory, h = self._key_dir(site, key)
        return f"{directory}/{h}-{variant_hash(variant)}"

    def _site_paths(self, site: str | None) -> list[str]:
        if site is not None:
            return [self._site_dir(site)]
        return [item.path for item in _listing(self._root) if item.name[0] != "." and _is_dir(item)]

    def _unique(self) -> str:
        """A name part no other process or DiskTier uses: pid (for cleanup after a crash), token, counter."""
        return f"{os.getpid()}-{self._token}-{next(self._counter)}"

    def _temp_name(self) -> str:
        return f"{self._tmp}/{self._unique()}"

    def _clean_abandoned(self) -> None:
        """Remove temp files and purge directories of dead processes (and any untouched for STALE_TEMP seconds)."""
        now = time.time()
        for item in _listing(self._tmp):
            if _abandoned(item, now):
                _unlink(item.path)
        for item in _listing(self._root):
            if item.name.startswith(".purge-") and _abandoned(item, now, prefix=len(".purge-")):
                shutil.rmtree(item.path, ignore_errors=True)


class DiskWriter:
    """Streams one object's body to a temp file; ``commit`` makes it visible, ``abort`` drops it.

    A write error (disk full) is swallowed: the writer turns failed, its temp file is removed at once to give the
    space back, and ``commit`` returns False; ``error`` keeps the reason for the caller's log.
    """

    __slots__ = ("_fd", "_path", "_tier", "checksum", "error", "written")

    def __init__(self, tier: DiskTier, fd: int | None, path: str, error: Exception | None) -> None:
        self._tier = tier
        self._fd = fd
        self._path = path
        self.error = error
        self.checksum = 0  # diskformat.checksum of the body so far
        self.written = 0

    def write(self, chunk: bytes | memoryview) -> None:
        """Append a piece of the body (ignored once the writer has failed)."""
        fd = self._fd
        if fd is None:
            return
        try:
            _write_all(fd, chunk)
        except OSError as exc:
            self._fail(exc)
            return
        self.checksum = diskformat.checksum(chunk, self.checksum)
        self.written += len(chunk)

    def commit(self, entry: CacheEntry) -> bool:
        """Append the trailer and rename the file into place; False (and nothing visible) on any failure."""
        fd = self._fd
        if fd is None:
            return False
        if entry.body_size != self.written:
            self._fail(ValueError(f"cache: body of {self.written} bytes written, entry says {entry.body_size}"))
            return False
        try:
            _write_all(fd, diskformat.encode_trailer(entry, self.checksum))
            self._fd = None
            os.close(fd)
            self._tier._place(self._path, entry)
        except OSError as exc:
            self._fail(exc)
            return False
        return True

    def abort(self) -> None:
        """Drop the temp file; safe to call again, or after commit (then it does nothing)."""
        fd = self._fd
        if fd is not None:
            self._fd = None
            with contextlib.suppress(OSError):
                os.close(fd)
            _unlink(self._path)

    def __del__(self) -> None:
        """A writer dropped without commit or abort (an exception in the caller) gives back its descriptor and file."""
        self.abort()

    def _fail(self, error: Exception) -> None:
        self.error = error
        fd = self._fd
        self._fd = None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        _unlink(self._path)


def _read_all(fd: int, size: int) -> bytes:
    """Read ``size`` bytes: one read, unless the kernel caps it (about 2 GiB per call on Linux)."""
    data = os.read(fd, size)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        chunk = os.read(fd, size - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    size = len(data)
    done = os.write(fd, data)
    if done < size:  # a regular file writes short only when the disk is nearly full; the next write says why
        view = memoryview(data)
        while done < size:
            done += os.write(fd, view[done:])


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


def _unlink_if_same(path: str, inode: int) -> None:
    """Delete a damaged file unless another process has already replaced it with a new one."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)


def _listing(directory: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return list(it)
    except OSError:
        return []


def _is_dir(item: os.DirEntry[str]) -> bool:
    try:
        return item.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _subdirs(site_dir: str) -> list[str]:
    return [item.path for item in _listing(site_dir) if _is_dir(item)]


def _holder(lock: str) -> tuple[bytes, float] | None:
    """(content, mtime) of a lock file, or None when there is none."""
    try:
        fd = os.open(lock, _O_READ)
    except OSError:
        return None
    try:
        return os.read(fd, 256), os.fstat(fd).st_mtime
    except OSError:
        return None
    finally:
        os.close(fd)


def _live(content: bytes, mtime: float, ttl: float) -> bool:
    """A lock is live while younger than ttl and its process runs (an empty one is being written: age decides)."""
    if time.time() - mtime > ttl:
        return False
    pid_text, _, start = content.split(b" ", 1)[0].partition(b":")
    pid = _pid(pid_text)
    if pid is None:
        return True
    # A killed worker's pid may be a zombie nobody reaped yet, or a new process: compare start times ("-": the
    # writer could not read its own, without /proc). A token without one is not ours: stale.
    if start == b"-":
        return _pid_alive(pid)
    return bool(start) and _start_time(pid) == start


@functools.lru_cache(maxsize=4)
def _owner(pid: int) -> bytes:
    """``pid:start-time`` naming this process in its locks (per pid: a forked worker has its own)."""
    return b"%d:%s" % (pid, _start_time(pid) or b"-")


def _start_time(pid: int) -> bytes | None:
    """A process's start time (field 22 of /proc/<pid>/stat); None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return None
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return fields[19]


def _abandoned(item: os.DirEntry[str], now: float, prefix: int = 0) -> bool:
    """Whether a temp file or purge directory named ``<pid>-...`` (after ``prefix`` characters) is left over."""
    pid = _pid(item.name[prefix:].split("-", 1)[0])
    if pid is None or not _process_running(pid):
        return True
    try:
        return now - item.stat(follow_symlinks=False).st_mtime > STALE_TEMP
    except OSError:
        return False


def _pid(text: str | bytes) -> int | None:
    try:
        pid = int(text)
    except ValueError:
        return None
    return pid if pid > 0 else None


def _process_running(pid: int) -> bool:
    """Alive and not a zombie: a killed worker whose adopter has not reaped it yet writes no more."""
    if os.path.isdir("/proc"):
        return _start_time(pid) is not None
    return _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as another user
        return True
    return True
