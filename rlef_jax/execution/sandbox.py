"""Starting and talking to one sandboxed runner process (see `_runner.py`).

Isolation modes (paper §1.4 runs code with code_contests' sandbox; this is our equivalent):
* "bwrap" (full): bubblewrap with new PID, network, IPC, UTS and mount namespaces; the root is an
  empty tmpfs with read-only binds of the system (/usr, /lib*, /bin) and interpreter paths only, a
  size-capped tmpfs for working directories, a clean environment (--clearenv), --die-with-parent and
  --new-session. The runner is PID 1 of the namespace. When the host is root, bwrap uses no user
  namespace, keeps only CAP_SETUID/SETGID/KILL/CHOWN/DAC_OVERRIDE/FOWNER for the runner, and every test
  drops to a random unprivileged uid (so RLIMIT_NPROC applies: root is exempt from it). When the host
  is not root, bwrap adds a user namespace (`--unshare-user`, uid 65534) and drops all capabilities.
* "weak" (fallback when bwrap is missing or cannot create namespaces): the runner is a plain
  subprocess in its own session with a clean environment and a private temp directory; tests still get
  every rlimit, a private working directory, no_new_privs and (when root) a dedicated unprivileged uid,
  and leftovers are killed by uid (root) or as descendants of the runner (a child subreaper). There is
  no network or filesystem isolation beyond file permissions. The pool warns about it once.
"""
from __future__ import annotations

import functools
import io
import json
import logging
import os
import random
import shutil
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading

_HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(_HERE, "_runner.py")
CODEC = os.path.join(_HERE, "codec.py")
_ROOT_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER")
_warned = threading.Event()


class SandboxDied(RuntimeError):
    """The runner process ended unexpectedly (killed, crashed, or a job deadline passed)."""


def interpreter() -> str:
    """The Python that runs programs: this interpreter's real binary (venvs are symlinks)."""
    return os.path.realpath(sys.executable)


def _interpreter_paths() -> list[str]:
    paths = {os.path.dirname(os.path.dirname(interpreter())), sys.base_prefix,
             sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
    return sorted(p for p in paths if p and not any(p.startswith(s + "/") for s in ("/usr",)) and p != "/usr")


def site_packages() -> list[str]:
    """Site-packages of this environment, appended to programs' sys.path so numpy etc. import if installed."""
    return [p for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]} if os.path.isdir(p)]


def _mkdirs_args(path: str, made: set) -> list[str]:
    args, parts = [], path.strip("/").split("/")[:-1]
    for k in range(1, len(parts) + 1):
        d = "/" + "/".join(parts[:k])
        if d not in made:
            made.add(d)
            args += ["--perms", "0755", "--dir", d]
    return args


def bwrap_command(runner_argv: list[str], work_bytes: int, ro_paths: list[str]) -> list[str]:
    """The bwrap command line running `runner_argv` (see module docstring)."""
    cmd = [shutil.which("bwrap") or "bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc",
           "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--as-pid-1",
           "--clearenv"]
    if os.geteuid() == 0:
        cmd += ["--cap-drop", "ALL"] + [a for c in _ROOT_CAPS for a in ("--cap-add", c)]
    else:
        cmd += ["--unshare-user", "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL"]
    made: set = set()
    for d in ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin"):
        if os.path.islink(d):
            cmd += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            cmd += ["--ro-bind", d, d]
        made.add(d)
    for p in ro_paths:
        if os.path.exists(p) and not any(p == m or p.startswith(m + "/") for m in ("/usr",)):
            cmd += _mkdirs_args(p, made) + ["--ro-bind", p, p]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--perms", "0755", "--size", str(work_bytes),
            "--tmpfs", "/w", "--perms", "0755", "--dir", "/rlef",
            "--ro-bind", RUNNER, "/rlef/runner.py", "--ro-bind", CODEC, "/rlef/codec.py", "--chdir", "/w"]
    return cmd + runner_argv


@functools.lru_cache(maxsize=None)
def bwrap_works() -> bool:
    """Start-up check: can bwrap create the namespaces we need on this machine?"""
    if not shutil.which("bwrap"):
        return False
    try:
        cmd = bwrap_command([interpreter(), "-I", "-S", "-c", "print('ok')"], 1 << 20, _interpreter_paths())
        out = subprocess.run(cmd, capture_output=True, timeout=30, env={})
        return out.returncode == 0 and out.stdout.strip() == b"ok"
    except (OSError, subprocess.SubprocessError):
        return False


def resolve_mode(sandbox: str) -> str:
    """'auto' -> 'bwrap' when it works, else 'weak' (warning once, loudly)."""
    if sandbox not in ("auto", "bwrap", "weak"):
        raise ValueError(f"sandbox must be 'auto', 'bwrap' or 'weak', got {sandbox!r}")
    if sandbox == "bwrap" and not bwrap_works():
        raise RuntimeError("sandbox='bwrap' but bubblewrap is missing or cannot create namespaces here; "
                           "install the Debian package `bubblewrap` or use sandbox='auto'/'weak'")
    mode = sandbox if sandbox != "auto" else ("bwrap" if bwrap_works() else "weak")
    if mode == "weak" and not _warned.is_set():
        _warned.set()
        logging.warning("rlef_jax.execution: bubblewrap is unavailable, so programs run in the WEAK sandbox "
                        "(rlimits, own session, private directory, clean env, unprivileged uid when root) "
                        "WITHOUT network or filesystem isolation. Install `bubblewrap` for full isolation.")
    return mode


class SandboxProcess:
    """One runner in one sandbox. Not thread-safe: each pool worker owns one."""

    def __init__(self, mode: str, work_bytes: int = 256 << 20):
        self.mode = mode
        uid = random.randrange(200_000, 2_000_000_000)
        self.uid = uid
        config = {"uid": uid, "gid": uid, "extra_path": site_packages(), "parent": os.getpid(),
                  "path_aliases": [[sysconfig.get_paths()["stdlib"], "/usr/lib/python3"]]}
        self._tmp = None
        if mode == "bwrap":
            config.update(work="/w/t", codec="/rlef/codec.py")
            argv = [interpreter(), "-I", "-S", "/rlef/runner.py", json.dumps(config)]
            cmd = bwrap_command(argv, work_bytes, _interpreter_paths() + site_packages())
            cwd = "/"
        else:
            self._tmp = tempfile.mkdtemp(prefix="rlef_exec_")
            os.chmod(self._tmp, 0o755)
            config.update(work=os.path.join(self._tmp, "t"), codec=CODEC, path_fds=os.geteuid() == 0)
            cmd = [interpreter(), "-I", "-S", RUNNER, json.dumps(config)]
            cwd = self._tmp
        debug = os.environ.get("RLEF_EXEC_DEBUG")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=None if debug else subprocess.DEVNULL, env={}, cwd=cwd,
                                     start_new_session=True, close_fds=True, bufsize=0)
        self._out = io.BufferedReader(self.proc.stdout, 1 << 16)
        self.jobs_run = 0

    def run(self, job_msg: dict):
        """Send one job; yield the runner's messages until "done". Raises SandboxDied on EOF."""
        data = json.dumps(job_msg).encode()
        try:
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
        except (BrokenPipeError, OSError) as e:
            raise SandboxDied(f"sandbox runner is gone: {e}") from None
        self.jobs_run += 1
        while True:
            head = self._read(4)
            msg = json.loads(self._read(struct.unpack(">I", head)[0]))
            if msg["type"] == "program" and msg["syntax_error"]:
                head = self._read(4)
                self._read(struct.unpack(">I", head)[0])
                yield msg
                return
            if msg["type"] == "done":
                return
            yield msg

    def _read(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            b = self._out.read(n - got)
            if not b:
                raise SandboxDied(f"sandbox runner exited (status {self.proc.poll()})")
            chunks.append(b)
            got += len(b)
        return b"".join(chunks)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self):
        """End the sandbox: closing stdin ends the runner; SIGKILL of bwrap tears down its PID namespace."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        if self.mode == "bwrap":
            try:
                self.proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        else:
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdout,):
            try:
                f.close()
            except OSError:
                pass
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
