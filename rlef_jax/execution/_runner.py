"""The in-sandbox test runner: a tiny standard-library-only Python process (started `python -I -S`).

One runner lives inside one sandbox and serves jobs from the host over length-prefixed JSON on
stdin/stdout. It compiles each program once, then forks one child per stdin/stdout test, or one child
per batch of function tests (restarted after a failure that kills it), so tests pay a fork (~2 ms)
instead of an interpreter start. Each child drops to an unprivileged uid (when the runner is root),
sets rlimits and no_new_privs, gets a fresh private working directory and a clean environment. The
runner enforces wall-clock deadlines and output caps, and after every test kills every other process it
can reach (as PID 1 of its own PID namespace -- sandboxes "bwrap" and "unshare" -- `kill(-1)` reaches
exactly the test's processes, daemons included, and the test cannot signal it back).

Sandboxes (the host picks one, see sandbox.py):
* "bwrap": this file runs inside bubblewrap, which built the namespaces and the file system.
* "unshare": this file builds the same sandbox itself (section "namespaces"): new mount, PID, network,
  IPC and UTS namespaces (plus a user namespace when the host is not root); a root that is an empty
  tmpfs with read-only binds of the system directories and the interpreter's paths only, /dev with a
  few device nodes, a fresh /proc, and a size-capped tmpfs for working directories; the host's tree is
  detached (pivot_root), so its /tmp, home directories, repository and data are not reachable; the only
  network interface is a loopback that is down. The runner forks itself as PID 1 of the new PID
  namespace; the first process waits outside it and the runner dies with it (parent-death SIGKILL).
* "weak": none of that; the private directory is created here under the host's temporary directory
  and removed on every exit, the host's death included (parent-death signal SIGTERM).

Result channel. A test child reports on fd 3, a pipe to the runner: the exception of a stdin/stdout
program, or the return value / assert outcome of each function test. The program runs in the same
process and can write to that pipe as well (or reopen it through /proc/self/fd), so every report is
authenticated: it carries a keyed BLAKE2b MAC of (sequence number, report) under a 128-bit key the
runner draws for that child just before forking it. The runner accepts a line only with the next
sequence number and a valid MAC and drops anything else (counted as forged): lines a program writes
itself -- on fd 3, on any other fd or through /proc/self/fd/* -- change nothing, and the program gets the
verdicts of what it really did. Replayed or reordered honest lines fail the sequence check; stealing
them (reading the pipe) only makes the following reports fail, i.e. loses tests. The key lives only in
the child's memory: forging needs reading one's own memory or patching the harness in the same
interpreter (introspection, ctypes), which no in-process reporting can rule out and which an
AssertCase's checks are open to anyway, since they run in the program's interpreter (objects whose
`__eq__` always returns True, `sys.settrace`). Function tests' values are judged by the host against
expected outputs that never enter the sandbox, and a report is accepted only as the next test's, in
order, so a forged value would be worth no more than returning it.

Expected outputs never reach this process: it only reports what the program did; the host judges.
Never import anything from rlef_jax here: this file runs inside the sandbox on its own.
"""
import atexit
import ctypes
import gc
import io
import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import time
import traceback
import types

CONFIG = json.loads(sys.argv[1])
PID1 = os.getpid() == 1
CLEANING_UP = False  # set on the way out: a parent-death SIGTERM then no longer interrupts the clean-up
RUNNER_FILE = os.path.abspath(__file__)
_codec = {}
exec(compile(open(CONFIG["codec"]).read(), "<codec>", "exec"), _codec)
_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
ERR_CAP = 64 << 10
TERM_GRACE_S = 0.1
TB_FRAMES = 50
CHILD_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
             "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
             "PYTHONIOENCODING": "utf-8"}
_CHANNEL = {"key": b"", "seq": 0}  # the report key and count of the child about to be / being run
try:
    from _blake2 import blake2b  # what hashlib.blake2b is, without loading OpenSSL into every test's fork
except ImportError:
    from hashlib import blake2b


def _mac(key, seq, body):
    return blake2b(b"%d " % seq + body, key=key, digest_size=16).hexdigest().encode()


# ------------------------------------------------------------------------------------ host channel
def _recv():
    head = _read_exact(4)
    if head is None:
        return None
    return json.loads(_read_exact(struct.unpack(">I", head)[0]))


def _read_exact(n):
    chunks, got = [], 0
    while got < n:
        b = os.read(0, n - got)
        if not b:
            return None
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


_outbox = []


def _send(msg, flush=True):
    """Frame `msg` for the host; with flush=False it waits in `_outbox` for the next `_flush_sends()`
    (reports that arrive together from a child leave together, in one write)."""
    data = json.dumps(msg).encode()
    _outbox.append(struct.pack(">I", len(data)) + data)
    if flush:
        _flush_sends()


def _flush_sends():
    data = b"".join(_outbox)
    _outbox.clear()
    while data:
        data = data[os.write(1, data):]


# ------------------------------------------------------------------------ namespaces (sandbox="unshare")
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
_KEPT_FLAGS = ((8, MS_NOEXEC), (1024, 1024), (2048, 2048), (4096, 1 << 21))  # statvfs ST_* -> MS_*
MNT_DETACH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4
ROOT_CAPS = (0, 1, 3, 5, 6, 7)  # CHOWN, DAC_OVERRIDE, FOWNER, KILL, SETGID, SETUID: bwrap mode's set as root
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
SCRATCH_DIRS = ("/tmp", "/mnt", "/media", "/srv", "/opt", "/var/tmp", "/run")
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source, target, fstype, flags, data=None):
    enc = (lambda s: None if s is None else s.encode())
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _write_file(path, text):
    with open(path, "w") as f:
        f.write(text)


def _enter_namespaces():
    """Move into new namespaces and fork the runner proper as PID 1 of the new PID namespace; this first
    process stays outside, waits for it and exits with its status (when this process dies, e.g. by the
    host's death, PID 1 gets SIGKILL and the kernel ends the whole namespace). Returns in PID 1 only,
    inside the sandbox's file system and with capabilities dropped."""
    uid, gid = os.geteuid(), os.getegid()
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    userns = uid != 0
    if not userns and _libc.unshare(flags) != 0:
        userns = True  # root without CAP_SYS_ADMIN (a container): try a user namespace
    if userns:
        _check(_libc.unshare(flags | CLONE_NEWUSER), "unshare")
        _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # /proc/self/*_map belong to root while not dumpable
        _write_file("/proc/self/setgroups", "deny")
        _write_file("/proc/self/uid_map", f"65534 {uid} 1")
        _write_file("/proc/self/gid_map", f"65534 {gid} 1")
        _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    lifeline, keep = os.pipe()
    pid = os.fork()
    if pid:
        os.close(lifeline)
        os.close(0)
        os.close(1)
        _, status = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    os.close(keep)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if select.select([lifeline], [], [], 0)[0]:
        os._exit(1)  # the first process died before the line above
    os.close(lifeline)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # PID 1 ignores signals it has no handler for
    _build_root(CONFIG["ro_paths"], CONFIG["work_bytes"])
    _drop_capabilities(() if userns else ROOT_CAPS)


def _build_root(ro_paths, work_bytes):
    """The sandbox's file system, as bwrap mode builds it: an empty tmpfs (mounted, in this private
    mount namespace only, over a host directory that holds none of the paths to bind, e.g. /tmp) with
    read-only binds of SYSTEM_DIRS and `ro_paths`, /dev, /proc of the new PID namespace and a
    `work_bytes` tmpfs at /w; then pivot_root into it and detach the host's tree."""
    machine = os.uname().machine
    if machine not in SYS_PIVOT_ROOT:
        raise OSError(f"pivot_root: unknown system call number on {machine}")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    sources = SYSTEM_DIRS + tuple(ro_paths) + ("/dev",)
    new = next((d for d in SCRATCH_DIRS if os.path.isdir(d) and not os.path.islink(d)
                and not any(p == d or p.startswith(d + "/") for p in sources)), None)
    if new is None:
        raise OSError(f"no directory among {SCRATCH_DIRS} to build the sandbox's root on")
    _mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    bound = []
    for path in SYSTEM_DIRS + tuple(ro_paths):
        if any(path == b or path.startswith(b + "/") for b in bound) or not os.path.lexists(path):
            continue
        if path in SYSTEM_DIRS and os.path.islink(path):
            os.symlink(os.readlink(path), new + path)
            continue
        _mkdirs(new, path)
        _bind_ro(path, new + path)
        bound.append(path)
    _mkdirs(new, "/dev")
    _mount("tmpfs", new + "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
    for name in DEVICES:
        if os.path.exists("/dev/" + name):
            open(f"{new}/dev/{name}", "w").close()
            _mount("/dev/" + name, f"{new}/dev/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{new}/dev/{name}")
    _mkdirs(new, "/dev/shm")
    _mkdirs(new, "/proc")
    try:
        _mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        pass  # a container masking parts of its /proc forbids new proc mounts in a user namespace
    _mkdirs(new, "/w")
    _mount("tmpfs", new + "/w", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0755,size={work_bytes}")
    os.chdir(new)
    _check(_libc.syscall(ctypes.c_long(SYS_PIVOT_ROOT[machine]), b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount the host's root")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _mkdirs(root, path):
    d = root
    for part in path.strip("/").split("/"):
        d += "/" + part
        if not os.path.isdir(d):
            os.mkdir(d)
            os.chmod(d, 0o755)


def _bind_ro(source, target):
    """A recursive read-only bind; remounts keep the flags the kernel locks (noexec, atime flags)."""
    _mount(source, target, None, MS_BIND | MS_REC)
    for mnt in [target] + _mounts_under(target):
        f_flag = os.statvfs(mnt).f_flag
        kept = sum(ms for st, ms in _KEPT_FLAGS if f_flag & st)
        _mount(None, mnt, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | kept)


def _mounts_under(path):
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    points = [p.encode().decode("unicode_escape") for p in points]  # \040 etc.
    return sorted(p for p in points if p.startswith(path + "/"))


def _drop_capabilities(keep):
    """Keep only `keep` (bounding set, permitted, effective; no inheritable or ambient ones)."""
    for cap in range(64):
        if cap not in keep:
            _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the last capability: fine
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    mask = sum(1 << c for c in keep)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    _check(_libc.capset(header, (ctypes.c_uint32 * 6)(mask, mask, 0, 0, 0, 0)), "capset")


# ============================================================ test child: the code path that runs user code
# Everything from the fork in `_Run.__init__` to the child's `os._exit`: isolation and limits
# (`_enter_child`), then the program and its tests (`_child_stdio`, `_child_function`), reporting on
# fd 3 through `_report_line` only (see "Result channel" above).
def _clean_traceback(exc):
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__, limit=-TB_FRAMES, compact=True)
    for t in _chain(te):
        t.stack = traceback.StackSummary.from_list(
            [f for f in t.stack if f.filename not in (RUNNER_FILE, "<codec>")])
    text = "".join(te.format())
    for prefix, alias in CONFIG.get("path_aliases", []):
        text = text.replace(prefix, alias)
    return text.replace(os.getcwd() + "/", "")


def _chain(te):
    seen = []
    while te is not None and te not in seen:
        seen.append(te)
        te = te.__cause__ or te.__context__
    return seen


def _rlimits(limits, cpu_s):
    """The (resource, soft, hard) triples every test child sets, computed in the runner before forking
    (the less Python the child runs, the fewer copy-on-write page faults it pays)."""
    mem = limits["memory_bytes"]
    return ((resource.RLIMIT_AS, mem, mem), (resource.RLIMIT_DATA, mem, mem),
            (resource.RLIMIT_STACK, min(mem, 256 << 20), min(mem, 256 << 20)),
            (resource.RLIMIT_CPU, cpu_s, cpu_s + 1),
            (resource.RLIMIT_FSIZE, limits["file_bytes"], limits["file_bytes"]),
            (resource.RLIMIT_NPROC, limits["processes"], limits["processes"]),
            (resource.RLIMIT_NOFILE, limits["open_files"], limits["open_files"]),
            (resource.RLIMIT_CORE, 0, 0))


def _child_streams():
    """Fresh text streams over fds 0-2 for one test child, built in the child (they must not share
    buffers with anything that ran before)."""
    return (io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8",
                             errors="replace"),
            io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8",
                             errors="backslashreplace"),
            io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                             write_through=True))


def _enter_child(rlimits, workdir, stdin_fd, out_w, err_w, res_w):
    """Runs in the forked child: isolate, limit, redirect. Never returns on failure.

    The environment is not rebuilt here: the runner's own environment already is exactly the tests'
    clean environment (see `main`), and a fork inherits it."""
    try:
        os.setsid()
        for fd, target in ((stdin_fd, 0), (out_w, 1), (err_w, 2), (res_w, 3)):
            os.dup2(fd, target)
        os.closerange(4, 1 << 16)
        if not PID1:
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1):
                signal.signal(sig, signal.SIG_DFL)
        if os.geteuid() == 0 and CONFIG.get("uid") is not None:
            if CONFIG.get("path_fds"):
                _paths_through_fds()
            os.setgroups([])
            os.setresgid(CONFIG["gid"], CONFIG["gid"], CONFIG["gid"])
            os.setresuid(CONFIG["uid"], CONFIG["uid"], CONFIG["uid"])
        if not PID1:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        for res, soft, hard in rlimits:
            try:
                resource.setrlimit(res, (soft, hard))
            except (ValueError, OSError):
                h = resource.getrlimit(res)[1]
                resource.setrlimit(res, (min(soft, h) if h >= 0 else soft, h))
        os.chdir(workdir)
        sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stdout__, sys.__stderr__ = _child_streams()
        sys.argv = ["main.py"]
    except BaseException:
        os._exit(120)


def _paths_through_fds():
    """Weak mode as root: reach sys.path through directory fds opened before dropping privileges, so
    an interpreter under a private home (e.g. /root/.pyenv) still imports after setuid."""
    mapping = {}
    for p in sys.path:
        if os.path.isdir(p):
            fd = os.open(p, os.O_PATH | os.O_DIRECTORY)
            mapping[p] = f"/proc/self/fd/{fd}"
            CONFIG.setdefault("path_aliases", []).insert(0, [mapping[p], p])

    def rewrite(path):
        for old, new in mapping.items():
            if path == old or path.startswith(old + "/"):
                return new + path[len(old):]
        return path

    sys.path[:] = [rewrite(p) for p in sys.path]
    for m in list(sys.modules.values()):
        if isinstance(getattr(m, "__path__", None), list):
            m.__path__[:] = [rewrite(p) for p in m.__path__]
    sys.path_importer_cache.clear()


def _report(msg):
    _report_line(json.dumps(msg))


def _report_line(line):
    """One authenticated report on fd 3: `MAC(key, seq, line) line\\n` (see "Result channel")."""
    body = line.encode()
    _CHANNEL["seq"] += 1
    data = _mac(_CHANNEL["key"], _CHANNEL["seq"], body) + b" " + body + b"\n"
    while data:
        data = data[os.write(3, data):]


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _new_main():
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = module
    return module.__dict__


def _exception_report(exc, i=None):
    msg = {"exc": type(exc).__name__, "oom": isinstance(exc, MemoryError), "tb": _clean_traceback(exc)}
    if i is not None:
        msg["i"] = i
    return msg


def _child_stdio(code):
    status = 0
    try:
        exec(code, _new_main())
    except SystemExit as e:
        if e.code is None or e.code is True or e.code is False:
            status = int(bool(e.code))
        elif isinstance(e.code, int):
            status = e.code & 0xFF
        else:
            print(e.code, file=sys.stderr)
            status = 1
    except BaseException as e:
        _flush()
        try:
            _report(_exception_report(e))
            sys.stderr.write(_clean_traceback(e))
        except BaseException:
            pass
        status = 1
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
        atexit._run_exitfuncs()
    except BaseException:
        pass
    _flush()
    os._exit(status)


def _child_function(code, entry_point, cases, start):
    g = _new_main()
    try:
        exec(code, g)
    except BaseException as e:
        _report(dict(_exception_report(e), module=True))
        os._exit(1)
    _flush()
    _report({"ready": True})
    for i in range(start, len(cases)):
        case = cases[i]
        try:
            if "args" in case:
                fn = g.get(entry_point)
                if fn is None:
                    raise NameError(f"name {entry_point!r} is not defined")
                value = fn(*_codec["loads"](case["args"]))
                line = json.dumps({"i": i, "value": _codec["encode"](value)}, allow_nan=False)
            else:
                exec(compile(case["code"], "<test>", "exec"), g)
                line = json.dumps({"i": i, "ok": True})
        except BaseException as e:
            line = json.dumps(_exception_report(e, i))
        _flush()
        _report_line(line)
    os._exit(0)


# ================================================================================ runner: supervision
class _Run:
    """Supervises one forked child: pipes, deadline, output cap, authenticated result lines."""

    def __init__(self, limits, target, stdin_bytes, n_cases):
        self.limits = limits
        self.workdir = _fresh_workdir()
        stdin_fd = os.memfd_create("stdin")
        if stdin_bytes:
            os.write(stdin_fd, stdin_bytes)
        os.lseek(stdin_fd, 0, 0)
        pipes = [os.pipe() for _ in range(3)]
        rlimits = _rlimits(limits, int(limits["time_s"] * max(1, n_cases)) + 1)
        self.key, self.seq, self.forged = os.urandom(16), 0, 0
        _CHANNEL.update(key=self.key, seq=0)
        self.t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _enter_child(rlimits, self.workdir, stdin_fd, pipes[0][1], pipes[1][1], pipes[2][1])
            target()
        self.pid = pid
        _CHANNEL.update(key=b"", seq=0)
        os.close(stdin_fd)
        for r, w in pipes:
            os.close(w)
            os.set_blocking(r, False)
        self.out_r, self.err_r, self.res_r = (p[0] for p in pipes)
        self.pidfd = os.pidfd_open(pid)
        self.out, self.err, self.res = bytearray(), bytearray(), bytearray()
        self.messages = []
        self.status = self.rusage = None
        self.deadline = self.t0 + limits["time_s"]

    def _read(self, fd):
        try:
            b = os.read(fd, 1 << 16)
        except BlockingIOError:
            return None
        if fd == self.out_r:
            self.out += b
        elif fd == self.err_r:
            if len(self.err) < ERR_CAP:
                self.err += b[:ERR_CAP - len(self.err)]
        else:
            self.res += b
            if b"\n" in b:
                *lines, rest = self.res.split(b"\n")
                self.res = bytearray(rest)
                for line in lines:
                    self._accept(bytes(line))
        return b

    def _accept(self, line):
        """Keep a report line only if it is the child's next one (see "Result channel")."""
        mac, _, body = line.partition(b" ")
        if mac != _mac(self.key, self.seq + 1, body):  # (the child cannot time this comparison)
            self.forged += 1
            return
        self.seq += 1
        try:
            self.messages.append(json.loads(body))
        except (ValueError, RecursionError):
            self.messages.append({"garbled": True})

    def wait(self, on_message=None, keep_stdout=True):
        """Runs until the child exits ('exited'), overruns ('timeout'), or overflows ('output_limit')."""
        poller = select.poll()
        open_fds = {self.out_r, self.err_r, self.res_r}
        for fd in open_fds | {self.pidfd}:
            poller.register(fd, select.POLLIN)
        seen = 0
        outcome = None
        while outcome is None:
            timeout_ms = max(0, int((self.deadline - time.monotonic()) * 1000) + 1)
            events = poller.poll(timeout_ms)
            exited = False
            for fd, _ in events:
                if fd == self.pidfd:
                    exited = True
                elif self._read(fd) == b"":
                    poller.unregister(fd)
                    open_fds.discard(fd)
            if not keep_stdout and len(self.out) > (1 << 16):
                del self.out[:]
            if len(self.out) > self.limits["output_bytes"] or len(self.res) > self.limits["output_bytes"] + ERR_CAP:
                outcome = "output_limit"
            while on_message and seen < len(self.messages):
                on_message(self, self.messages[seen])
                seen += 1
            _flush_sends()
            if outcome is None and exited:
                for fd in list(open_fds):
                    while self._read(fd):
                        pass
                while on_message and seen < len(self.messages):
                    on_message(self, self.messages[seen])
                    seen += 1
                _flush_sends()
                _, self.status, self.rusage = os.wait4(self.pid, 0)
                outcome = "exited"
            elif outcome is None and time.monotonic() >= self.deadline:
                outcome = "timeout"
        self.elapsed = time.monotonic() - self.t0
        if self.status is None:
            _signal_all(signal.SIGTERM)
            select.select([self.pidfd], [], [], TERM_GRACE_S)
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, self.status, self.rusage = os.wait4(self.pid, 0)
        _kill_leftovers()
        for fd in (self.out_r, self.err_r, self.res_r, self.pidfd):
            os.close(fd)
        _fresh_workdir()
        return outcome

    def exit_info(self):
        """How the child ended; `maxrss` (bytes) lets the host tell a memory kill from a self-kill."""
        info = {"stderr": self.err.decode("utf-8", "replace"),
                "cpu_s": self.rusage.ru_utime + self.rusage.ru_stime, "maxrss": self.rusage.ru_maxrss * 1024}
        if self.forged:
            info["forged_lines"] = self.forged  # dropped (diagnostic only)
        if os.WIFSIGNALED(self.status):
            info["signal"] = os.WTERMSIG(self.status)
        else:
            info["exit_code"] = os.WEXITSTATUS(self.status)
        return info


def _fresh_workdir():
    """The runner's one working directory, emptied and re-owned before every test (cheaper than a
    mkdir/rmdir pair per test on slow filesystems; nothing survives from one test to the next)."""
    if not (os.geteuid() == 0 and CONFIG.get("uid") is not None):
        _sweep_work_tree()
    path = os.path.join(CONFIG["work"], "cwd")
    if os.path.lexists(path):
        if os.path.islink(path) or not os.path.isdir(path):
            os.unlink(path)
        elif any(True for _ in os.scandir(path)):
            shutil.rmtree(path, onerror=_force_remove)
    if not os.path.isdir(path):
        os.mkdir(path, 0o700)
    os.chmod(path, 0o700)
    if os.geteuid() == 0 and CONFIG.get("uid") is not None:
        os.chown(path, CONFIG["uid"], CONFIG["gid"])
    return path


def _sweep_work_tree():
    """Tests that run under the runner's own uid (a host that is not root) can write next to their
    directory as well: remove whatever they left in the work tree besides it."""
    work = CONFIG["work"]
    if os.path.islink(work) or (os.path.lexists(work) and not os.path.isdir(work)):
        os.unlink(work)
    os.makedirs(work, exist_ok=True)
    for parent, keep in ((os.path.dirname(work), os.path.basename(work)), (work, "cwd")):
        for entry in os.scandir(parent):
            if entry.name != keep:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, onerror=_force_remove)
                else:
                    os.unlink(entry.path)


def _force_remove(func, path, _):
    try:
        os.chmod(os.path.dirname(path), 0o700)
        os.chmod(path, 0o700)
        func(path)
    except OSError:
        pass


def _signal_all(sig):
    if PID1:
        try:
            os.kill(-1, sig)
        except ProcessLookupError:
            pass
    elif os.geteuid() == 0 and CONFIG.get("uid") is not None:
        _signal_uid(sig)
    else:
        for pid in _children():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def _signal_uid(sig):
    """Weak mode as root: a helper with the tests' uid signals everything with that uid (kill(-1))."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setresuid(CONFIG["uid"], CONFIG["uid"], CONFIG["uid"])
            os.kill(-1, sig)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _children():
    me, kids = str(os.getpid()), []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == me:
                        kids.append(int(name))
            except (OSError, IndexError):
                pass
    return kids


def _reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _uid_has_processes():
    uid = str(CONFIG["uid"])
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/status") as f:
                    text = f.read()
                if text.split("Uid:")[1].split()[0] == uid:
                    return True
            except (OSError, IndexError):
                pass
    return False


def _kill_leftovers():
    """Kill and reap every process but this runner (and its helpers); loop until none is left."""
    for _ in range(10000):
        if PID1:
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                _reap()
                return
            _reap()
        elif os.geteuid() == 0 and CONFIG.get("uid") is not None:
            _reap()
            if not _uid_has_processes():
                return
            _signal_uid(signal.SIGKILL)
        else:
            _reap()
            kids = _children()
            if not kids:
                return
            for pid in kids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.0005)


def _stdio_job(job, code):
    for i, text in enumerate(job["cases"]):
        run = _Run(job["limits"], lambda: _child_stdio(code), text.encode("utf-8", "surrogateescape"), 1)
        errors = []
        outcome = run.wait(lambda r, m: errors.append(m))
        msg = dict(run.exit_info(), type="case", i=i, outcome=outcome, time_s=run.elapsed,
                   stdout=bytes(run.out[:job["limits"]["output_bytes"]]).decode("utf-8", "replace"))
        if errors and "tb" in errors[-1]:
            msg.update(exc=errors[-1]["exc"], oom=errors[-1]["oom"], tb=errors[-1]["tb"])
        _send(msg)


def _function_job(job, code):
    cases, n, i = job["cases"], len(job["cases"]), 0
    limits = job["limits"]
    while i < n:
        state = {"next": i, "module_error": None}

        def on_message(run, m, state=state):
            if m.get("ready"):
                run.deadline = time.monotonic() + limits["time_s"]
                state["t"] = time.monotonic()
                return
            if m.get("module"):
                state["module_error"] = m
                return
            if m.get("i") != state["next"] or m.get("garbled"):
                state["garbled"] = True
                return
            now = time.monotonic()
            _send(dict(m, type="case", outcome="reported", time_s=now - state.get("t", run.t0)), flush=False)
            state["next"] += 1
            state["t"] = now
            run.deadline = now + limits["time_s"]

        run = _Run(limits, lambda: _child_function(code, job["entry_point"], cases, i), b"", n - i + 1)
        outcome = run.wait(on_message, keep_stdout=False)
        info = run.exit_info()
        j = state["next"]
        if state["module_error"] is not None or "t" not in state:
            err = state["module_error"] or {}
            for k in range(j, n):
                _send(dict(info, **err, type="case", i=k, outcome="module_failed", time_s=run.elapsed))
            return
        if j < n:
            why = "garbled" if state.get("garbled") else outcome
            _send(dict(info, type="case", i=j, outcome=why, time_s=time.monotonic() - state.get("t", run.t0)))
            j += 1
        i = j


def _serve():
    os.makedirs(CONFIG["work"], exist_ok=True)
    while True:
        job = _recv()
        if job is None:
            return
        try:
            code = compile(job["program"], "main.py", "exec", dont_inherit=True)
            import linecache
            linecache.cache["main.py"] = (len(job["program"]), None, job["program"].splitlines(True), "main.py")
            _send({"type": "program", "syntax_error": None})
        except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError) as e:
            text = "".join(traceback.format_exception_only(type(e), e))
            _send({"type": "program", "syntax_error": text})
            _send({"type": "done"})
            continue
        gc.freeze()
        if job["kind"] == "stdio":
            _stdio_job(job, code)
        else:
            _function_job(job, code)
        _send({"type": "done"})


def _on_sigterm(*_):
    # The parent-death signal comes again as each thread of the dying host exits (the runner is
    # reparented to the next one): exit on the first, and let nothing interrupt the clean-up -- which
    # may already be under way, since the host's death also closes our stdin (EOF ends `_serve`).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if not CLEANING_UP:
        sys.exit(0)


def main():
    global PID1, CLEANING_UP
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    if not PID1:
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        signal.signal(signal.SIGTERM, _on_sigterm)
        if os.getppid() != CONFIG.get("parent", os.getppid()):
            return
    if CONFIG.get("mode") == "unshare":
        _enter_namespaces()
        PID1 = True
    sys.path.extend(CONFIG.get("extra_path", []))
    workdir = os.path.join(CONFIG["work"], "cwd")
    os.environ.clear()
    os.environ.update(CHILD_ENV, HOME=workdir, TMPDIR=workdir)
    own_dir = CONFIG.get("own_dir")  # weak mode: created here, removed on every way out (SIGTERM included)
    try:
        if own_dir:
            os.mkdir(own_dir, 0o700)
            os.chmod(own_dir, 0o755)
        _serve()
    finally:
        CLEANING_UP = True  # (no eval-breaker check before this store: a SIGTERM cannot get in first)
        _kill_leftovers()
        if own_dir and os.path.lexists(own_dir):
            shutil.rmtree(own_dir, onerror=_force_remove)


if __name__ == "__main__":
    main()
