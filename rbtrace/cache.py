"""The compile cache: what BCC compiled, kept so that later runs load it
without compiling (and without importing bcc, which maps LLVM).

An entry is keyed on everything that changes the compiled bytes: the
probe's source with its local includes, the -D flags, the kernel (release,
build and a digest of its BTF), the headers compiled against, the format
of every tracepoint the source names, and the BCC and rbtrace versions.

The cache is a security boundary: an entry is code that goes into the
kernel.  The entries' directory must belong to the user running rbtrace
and be reachable by nobody else (mode 0700), every entry must be a
regular file of that user with mode 0600, and its digest must match its
contents.  Anything else is not used: it is compiled again, with one line
for the user (notice.say: on stderr from the command line).
"""
import base64
import hashlib
import json
import os
import stat
import time
from pathlib import Path

from rbtrace import __version__
from rbtrace.loader import Compiled, MapSpec, ProgSpec
from rbtrace.notice import say  # cache.say: the cache command's lines too

FORMAT = 1
SUFFIX = ".probe.json"
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"


def cache_root() -> Path:
    from rbtrace.paths import cache_dir
    return cache_dir()


def entries_dir(root=None) -> Path:
    return (root or cache_root()) / "compiled"


class Unsafe(Exception):
    """The cache (or an entry) can't be trusted; the message says why."""


def _check_private_dir(path: Path, euid: int):
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise Unsafe(f"{path} is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise Unsafe(f"{path} is not a directory")
    if st.st_uid != euid:
        raise Unsafe(f"{path} belongs to uid {st.st_uid}, not {euid}")
    if st.st_mode & 0o077:
        raise Unsafe(f"{path} has mode {stat.S_IMODE(st.st_mode):04o}, not 0700")


def open_dir(root=None, create=True) -> Path:
    """The entries' directory, checked (and made, mode 0700, if missing;
    with create=False a missing one is returned as it is).  Unsafe when it
    can't be trusted."""
    return open_subdir("compiled", root, create)


def open_subdir(name, root=None, create=True) -> Path:
    """The cache's directory `name` (compiled entries, BTF kernel trees),
    checked as open_dir() checks the entries' directory."""
    root = Path(root or cache_root())
    euid = os.geteuid()
    d = root / name
    if not create and not d.exists():
        return d
    try:
        if create and not root.exists():
            os.makedirs(root, mode=0o700, exist_ok=True)
        st = os.stat(root)
        if st.st_uid not in (euid, 0) or st.st_mode & 0o022:
            raise Unsafe(f"{root} can be written by others (owner uid {st.st_uid}, "
                         f"mode {stat.S_IMODE(st.st_mode):04o})")
        if create:
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass
        _check_private_dir(d, euid)
    except OSError as e:
        raise Unsafe(f"{e.filename or d}: {e.strerror}") from None
    return d


# --- the key --------------------------------------------------------------

def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bcc_version() -> str:
    """BCC's version, read without importing bcc (which maps LLVM)."""
    import importlib.util
    spec = importlib.util.find_spec("bcc")
    if spec is None or not spec.submodule_search_locations:
        return "none"
    for d in spec.submodule_search_locations:
        try:
            text = (Path(d) / "version.py").read_text()
        except OSError:
            continue
        return text.split("=", 1)[-1].strip().strip("'\"")
    return "unknown"


_btf_digest = None
DIGEST_MEMO = "btf-digest.json"


def _btf_identity(st) -> str:
    """What names one kernel's BTF for as long as it runs: the boot, the
    kernel build, and the sysfs file's size and time (set at boot)."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    uname = os.uname()
    return ":".join((boot, uname.release, uname.version, str(st.st_size), str(st.st_mtime_ns)))


def _read_memo(path: Path, identity: str):
    """The digest memo of this boot's BTF, or None (missing, another
    boot's, or not a private file of ours: then it is made again)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            return None
        try:
            memo = json.loads(f.read())
        except ValueError:
            return None
    if not isinstance(memo, dict) or memo.get("identity") != identity:
        return None
    digest = memo.get("sha256")
    return digest if isinstance(digest, str) and len(digest) == 64 else None


def _write_memo(path: Path, identity: str, digest: str):
    tmp = path.with_name(f".new-{os.getpid()}-{path.name}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps({"identity": identity, "sha256": digest}).encode())
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def btf_digest(d: Path = None) -> str:
    """sha256 of the running kernel's BTF (part of every key).  Hashing its
    5 MB costs a start about 10 ms; with `d` (the checked entries'
    directory) the digest is kept there once per boot (DIGEST_MEMO): the
    file can't change while the kernel runs."""
    global _btf_digest
    if _btf_digest is None:
        try:
            with open(VMLINUX_BTF, "rb") as f:
                identity = memo = None
                if d is not None:
                    identity = _btf_identity(os.fstat(f.fileno()))
                    memo = _read_memo(d / DIGEST_MEMO, identity)
                _btf_digest = memo or hashlib.file_digest(f, "sha256").hexdigest()
            if d is not None and memo is None:
                _write_memo(d / DIGEST_MEMO, identity, _btf_digest)
        except OSError:
            _btf_digest = "none"
    return _btf_digest


def make_key(text: str, flags, tracepoints, headers: str, d: Path = None) -> tuple:
    """(key, what it was made of).  `flags`: the -D flags; `tracepoints`:
    every "category:event" whose format the compiled bytes depend on; `d`:
    the entries' directory, where the BTF's digest is kept (btf_digest)."""
    from rbtrace import kernel
    uname = os.uname()
    formats = {}
    for tp in sorted(set(tracepoints)):
        category, _, event = tp.partition(":")
        path = kernel.tracefs_dir() / "events" / category / event / "format"
        try:
            formats[tp] = _sha(path.read_bytes())
        except OSError:
            formats[tp] = "missing"
    parts = {
        "format": FORMAT, "rbtrace": __version__, "bcc": bcc_version(),
        "source": _sha(text.encode(errors="surrogateescape")),
        "flags": sorted(flags), "tracepoints": formats,
        "kernel": [uname.release, uname.version, uname.machine, btf_digest(d)],
        "headers": headers,
    }
    return _sha(json.dumps(parts, sort_keys=True).encode()), parts


# --- entries --------------------------------------------------------------

def _payload(compiled: Compiled, source: str) -> dict:
    return {
        "source": source,
        "license": compiled.license,
        "maps": [m.__dict__ for m in compiled.maps],
        "programs": [{**{k: v for k, v in p.__dict__.items() if k != "insns"},
                      "insns": base64.b64encode(p.insns).decode()} for p in compiled.programs],
        "event_types": compiled.event_types,
    }


def _canonical(payload) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def _compiled(payload) -> Compiled:
    return Compiled(
        license=payload["license"],
        maps=[MapSpec(**m) for m in payload["maps"]],
        programs=[ProgSpec(**{**p, "insns": base64.b64decode(p["insns"], validate=True),
                              "map_refs": [tuple(r) for r in p["map_refs"]],
                              "subprogs": [tuple(x) for x in p.get("subprogs", [])]})
                  for p in payload["programs"]],
        event_types=[tuple(t) for t in payload["event_types"]])


def read_entry(path: Path, key=None):
    """(Compiled, document) of the entry at `path`; Unsafe when it can't be
    trusted (owner, mode, kind, digest, or another key's contents)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise Unsafe(f"{path.name}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise Unsafe(f"{path.name} is not a regular file")
        if st.st_uid != os.geteuid():
            raise Unsafe(f"{path.name} belongs to uid {st.st_uid}")
        if st.st_mode & 0o077:
            raise Unsafe(f"{path.name} has mode {stat.S_IMODE(st.st_mode):04o}, not 0600")
        raw = f.read()
    try:
        doc = json.loads(raw)
        if doc.get("format") != FORMAT:
            raise Unsafe(f"{path.name} is of another format ({doc.get('format')!r})")
        if key is not None and doc.get("key") != key:
            raise Unsafe(f"{path.name} holds another key's probe")
        if _sha(_canonical(doc["payload"])) != doc.get("digest"):
            raise Unsafe(f"{path.name} does not match its digest")
        return _compiled(doc["payload"]), doc
    except Unsafe:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise Unsafe(f"{path.name} is corrupt ({type(e).__name__})") from None


def lookup(d: Path, key: str):
    """The Compiled for `key`, or None (missing, or refused with a notice:
    it is compiled again)."""
    path = d / (key + SUFFIX)
    try:
        found = read_entry(path, key)
    except Unsafe as e:
        say(f"compile cache entry refused, compiling again: {e}")
        return None
    return None if found is None else found[0]


def store(d: Path, key: str, compiled: Compiled, source: str, parts: dict):
    """Write the entry atomically (a new file renamed into place)."""
    payload = _payload(compiled, source)
    doc = {"format": FORMAT, "key": key, "created": time.time(), "made_of": parts,
           "digest": _sha(_canonical(payload)), "payload": payload}
    import tempfile    # here, not at start-up: the import costs 5 ms
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".new-", suffix=SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(doc, sort_keys=True).encode())
        os.replace(tmp, d / (key + SUFFIX))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def entries(d: Path):
    """[(path, document or None, problem or None)] of every entry."""
    out = []
    for path in sorted(d.glob("*" + SUFFIX)):
        if path.name.startswith(".new-"):
            continue
        try:
            found = read_entry(path, path.name[:-len(SUFFIX)])
            out.append((path, found[1] if found else None, None))
        except Unsafe as e:
            out.append((path, None, str(e)))
    return out


def clear(d: Path) -> int:
    n = 0
    for path in list(d.glob("*" + SUFFIX)):
        try:
            path.unlink()
            n += 1
        except FileNotFoundError:
            pass
    return n
