"""Starting and talking to one sandboxed runner process (see `_runner.py`).

Isolation modes (paper §1.4 runs code with code_contests' sandbox; this is our equivalent):
* "bwrap" (full): bubblewrap with new PID, network, IPC, UTS and mount namespaces; the root is an
  empty tmpfs with read-only binds of the system (/usr, /lib*, /bin) and interpreter paths only, a
  size-capped tmpfs for working directories, a clean environment (--clearenv), --die-with-parent and
  --new-session. The runner is PID 1 of the namespace. When the host is root, bwrap uses no user
  namespace, keeps only CAP_SETUID/SETGID/KILL/CHOWN/DAC_OVERRIDE/FOWNER for the runner, and every test
  drops to a random unprivileged uid (so RLIMIT_NPROC applies: root is exempt from it). When the host
  is not root, bwrap adds a user namespace (`--unshare-user`, uid 65534) and drops all capabilities.
* "unshare" (full, without bubblewrap): the runner builds the same sandbox itself with unshare(2),
  mount(2) and pivot_root(2) (see `_runner.py`, section "Namespaces"): new mount, PID, network, IPC
  and UTS namespaces (and a user namespace mapping the host's uid to 65534 when the host is not root),
  the same read-only root, /dev, /proc and work tmpfs, the same capabilities and uids as bwrap mode.
* "weak" (only with allow_weak): the runner is a plain subprocess in its own session with a clean
  environment and a private directory under the host's temporary directory (created and removed by
  the runner, also when the host dies); tests still get every rlimit, a private working directory,
  no_new_privs and (when root) a dedicated unprivileged uid, and leftovers are killed by uid (root) or
  as descendants of the runner (a child subreaper). There is NO network or filesystem isolation beyond
  file permissions: a program can reach the network and read the host's world-readable files (problem
  files with private tests included), so "auto" never falls back to it unless allowed.

"auto" is bwrap when it works, else unshare when it works, else weak if allowed, else an error.
"""
from __future__ import annotations

import functools
import io
import json
import logging
import os
import random
import secrets
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
_announced: set = set()  # modes already logged once
MODES = ("auto", "bwrap", "unshare", "weak")
WEAK_REFUSED = (
    "rlef_jax.execution: no isolating sandbox works here: bubblewrap is missing or cannot create namespaces, "
    "and the 'unshare' sandbox (namespaces without bubblewrap) failed too. The only fallback, the WEAK "
    "sandbox, runs programs without network or filesystem isolation, so model-written code could read the "
    "host's files (private tests included) and reach the network. Fix: install bubblewrap (Debian/Ubuntu: "
    "`apt-get install bubblewrap`) or enable user namespaces (sysctl user.max_user_namespaces / "
    "kernel.unprivileged_userns_clone); or, only if you accept the risk, allow it knowingly: "
    "--config.execution.allow_weak_isolation=True (ExecutionPool(allow_weak=True); "
    "python -m rlef_jax.execute --allow-weak-isolation).")


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


@functools.lru_cache(maxsize=None)
def unshare_works() -> bool:
    """Start-up check: does the 'unshare' sandbox start and run a program on this machine?"""
    from rlef_jax.execution import judge  # pylint: disable=g-import-not-at-top  (judge does not import this)
    from rlef_jax.execution.types import IOCase, Job, Limits  # pylint: disable=g-import-not-at-top
    box = None
    try:
        box = SandboxProcess("unshare", 1 << 20)
        timer = threading.Timer(30, box.kill)
        timer.start()
        try:
            msgs = list(box.run(judge.job_message(Job("print('ok')", [IOCase("", "ok\n")], limits=Limits(time_s=10)))))
        finally:
            timer.cancel()
        return any(m.get("type") == "case" and m.get("stdout") == "ok\n" and m.get("exit_code") == 0 for m in msgs)
    except (OSError, SandboxDied, ValueError):
        return False
    finally:
        if box is not None:
            box.kill()


def resolve_mode(sandbox: str, allow_weak: bool = False) -> str:
    """'auto' -> 'bwrap' when it works, else 'unshare' when it works, else 'weak' if `allow_weak` (with
    a loud warning, once), else RuntimeError(WEAK_REFUSED). 'weak' itself also needs `allow_weak`."""
    if sandbox not in MODES:
        raise ValueError(f"sandbox must be one of {MODES}, got {sandbox!r}")
    if not isinstance(allow_weak, bool):
        raise TypeError(f"allow_weak must be a bool, got {allow_weak!r}")
    if sandbox == "bwrap" and not bwrap_works():
        raise RuntimeError("sandbox='bwrap' but bubblewrap is missing or cannot create namespaces here; "
                           "install the Debian package `bubblewrap` or use sandbox='auto' or 'unshare'")
    if sandbox == "unshare" and not unshare_works():
        raise RuntimeError("sandbox='unshare' but this machine does not let the runner create namespaces "
                           "(user namespaces disabled, or no CAP_SYS_ADMIN); install bubblewrap or use sandbox='auto'")
    mode = sandbox
    if sandbox == "auto":
        mode = "bwrap" if bwrap_works() else "unshare" if unshare_works() else "weak"
        if mode == "unshare" and mode not in _announced:
            _announced.add(mode)
            logging.info("rlef_jax.execution: bubblewrap is unavailable; programs run in the 'unshare' sandbox "
                         "(namespaces created by the runner itself)")
    if mode == "weak":
        if not allow_weak:
            if sandbox == "weak":
                raise RuntimeError(
                    "sandbox='weak' runs programs WITHOUT network or filesystem isolation (they can read the "
                    "host's files, private tests included); pass allow_weak=True "
                    "(--config.execution.allow_weak_isolation=True, --allow-weak-isolation) to use it knowingly")
            raise RuntimeError(WEAK_REFUSED)
        if mode not in _announced:
            _announced.add(mode)
            logging.warning("rlef_jax.execution: programs run in the WEAK sandbox (rlimits, own session, private "
                            "directory, clean env, unprivileged uid when root) WITHOUT network or filesystem "
                            "isolation, as allowed by allow_weak. Install `bubblewrap` for full isolation.")
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
        elif mode == "unshare":
            config.update(mode="unshare", work="/w/t", codec=CODEC, work_bytes=work_bytes,
                          ro_paths=_interpreter_paths() + site_packages())
            cmd = [interpreter(), "-I", "-S", RUNNER, json.dumps(config)]
        elif mode == "weak":
            # The runner creates and removes this directory (on the host's death too); we only name it.
            self._tmp = os.path.join(tempfile.gettempdir(), f"rlef_exec_{secrets.token_hex(8)}")
            config.update(mode="weak", own_dir=self._tmp, work=os.path.join(self._tmp, "t"), codec=CODEC,
                          path_fds=os.geteuid() == 0)
            cmd = [interpreter(), "-I", "-S", RUNNER, json.dumps(config)]
        else:
            raise ValueError(f"unknown sandbox mode {mode!r}")
        cwd = "/"
        debug = os.environ.get("RLEF_EXEC_DEBUG")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=None if debug else subprocess.DEVNULL, env={}, cwd=cwd,
                                     start_new_session=True, close_fds=True, bufsize=0)
        self._out = io.BufferedReader(self.proc.stdout, 1 << 16)
        self.jobs_run = 0
        self.died = False

    def run(self, job_msg: dict):
        """Send one job; yield the runner's messages until "done". Raises SandboxDied on EOF."""
        data = json.dumps(job_msg).encode()
        try:
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
        except (BrokenPipeError, OSError) as e:
            self.died = True
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
                self.died = True  # (its stdout can close before the process can be waited for)
                raise SandboxDied(f"sandbox runner exited (status {self.proc.poll()})")
            chunks.append(b)
            got += len(b)
        return b"".join(chunks)

    def alive(self) -> bool:
        return not self.died and self.proc.poll() is None

    def kill(self):
        """End the sandbox. Closing stdin ends an idle runner. Otherwise: SIGKILL of bwrap (or of the
        unshare runner's first process) tears down its PID namespace; a weak runner gets SIGTERM first,
        so that it kills and reaps its tests and removes its directory itself (else we remove it)."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=0.5 if self.mode != "weak" else 0.2)
        except subprocess.TimeoutExpired:
            if self.mode == "weak":
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            else:
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
