"""Child processes: start them, watch them, end them, and never leave one behind.

Used by `listsync run`, the emulator wrapper, the benchmarks and the fault drill. Every child
asks the kernel to send it SIGTERM when its parent dies (PR_SET_PDEATHSIG), so a killed
supervisor does not leave its children running. A child can lead its own process group (a
Celery prefork worker and its pool), so that killing it ends the whole group, as a crash would.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Use as Popen(preexec_fn=...): the kernel sends SIGTERM when the parent dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """One child process. `log`: where its output goes (appended across restarts, so a scan
    of the file sees every incarnation); None: this process's own output. `own_group`: it
    leads its own process group, and `kill` and `stop` end the whole group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        log: Path | None = None,
        own_group: bool = False,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.log = log
        self.own_group = own_group
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> Child:
        """Start (or start again, after it ended) the process."""
        out: int | None = None
        if self.log is not None:
            self._log_offset = self.log.stat().st_size if self.log.exists() else 0
            out = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                start_new_session=self.own_group,
                preexec_fn=die_with_parent,
            )
        finally:
            if out is not None:
                os.close(out)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def logged_since_start(self, needle: str) -> bool:
        """Whether the output since the latest start holds `needle`."""
        if self.log is None:
            return False
        with self.log.open("rb") as f:
            f.seek(self._log_offset)
            return needle.encode() in f.read()

    def log_tail(self, chars: int = 3000) -> str:
        return "" if self.log is None else self.log.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        """SIGKILL: the process (and its group, when it leads one), as a crash would."""
        if self.proc is None:
            return
        if self.own_group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def terminate(self) -> None:
        """SIGTERM (a Celery worker's warm shutdown); see `wait_or_kill`."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def wait_or_kill(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for it to end, then kill it (and what it left)."""
        if self.proc is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(max(0.1, timeout))
        self.kill()  # a lingering process, or pool processes its group leader left behind

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, up to `timeout` seconds to end, then SIGKILL."""
        self.terminate()
        self.wait_or_kill(timeout)


class Children:
    """The processes one supervisor started: ended in reverse order, never left behind."""

    def __init__(
        self, log_dir: Path | None = None, *, own_groups: bool = False, cwd: Path | None = None
    ) -> None:
        self.log_dir = log_dir
        self.own_groups = own_groups
        self.cwd = cwd
        self.started: list[Child] = []

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None) -> Child:
        log = self.log_dir / f"{name}.log" if self.log_dir is not None else None
        child = Child(name, argv, env, log=log, own_group=self.own_groups, cwd=self.cwd)
        self.started.append(child.start())
        return child

    def first_exited(self) -> tuple[str, int] | None:
        for child in self.started:
            code = child.exit_code()
            if code is not None:
                return child.name, code
        return None

    def wait_first_exited(self, poll: float = 0.5) -> tuple[str, int]:
        """Block until a child ends; its name and exit status. Signal handlers run between
        polls, so a stop request interrupts the wait."""
        while (exited := self.first_exited()) is None:
            time.sleep(poll)
        return exited

    def stop_all(self, timeout: float = 15.0) -> None:
        """SIGTERM to every child, then up to `timeout` seconds in all before SIGKILL."""
        for child in reversed(self.started):
            child.terminate()
        deadline = time.monotonic() + timeout
        for child in reversed(self.started):
            child.wait_or_kill(deadline - time.monotonic())


# --- measuring a process tree -------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (a Celery worker's pool, uvicorn's workers)."""
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU the process has used so far (its own, not its children's)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def peak_rss_kib(pid: int | str = "self") -> int | None:
    """The process's peak resident set size (VmHWM) in KiB, or None once it is gone.

    Read from /proc: psutil reports the current RSS only, not the peak.
    """
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None
