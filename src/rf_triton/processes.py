"""Child processes that must not outlive rf-triton: tritonserver, Locust, wrk.

Each child starts in a session of its own, so that it and everything it spawns (Triton's
Python-backend stubs, Locust's workers) form one process group that can be stopped together by
PID, and so that a terminal's Ctrl-C reaches rf-triton alone, which then stops the group in order.

If rf-triton itself dies (SIGKILL included), a watchdog ends the group: a small process in a
session of its own that blocks reading a pipe whose only write end rf-triton holds. The kernel
closes that end when the rf-triton process ends, whatever thread started the child, so the
watchdog sees end-of-file, sends SIGTERM, and SIGKILLs the group after a grace period. This needs
no code between fork and exec (no preexec_fn), and unlike PR_SET_PDEATHSIG it follows the process,
not the thread that forked.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

WATCHDOG = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
pgid, grace_s = int(sys.argv[1]), float(sys.argv[2])
while os.read(0, 1):
    pass
try:
    os.kill(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        os.killpg(pgid, 0)
        time.sleep(0.1)
    os.killpg(pgid, signal.SIGKILL)
except ProcessLookupError:
    pass
"""


class ProcessGroup:
    """A child started in its own session (its PID is the group's ID), with its watchdog."""

    def __init__(self, process: subprocess.Popen, watchdog: subprocess.Popen | None, alive_fd: int | None) -> None:
        self.process = process
        self._watchdog = watchdog
        self._alive_fd = alive_fd

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def stop(self, timeout_s: float, first_signal: signal.Signals = signal.SIGINT) -> int:
        """`first_signal` to the leader, wait up to `timeout_s`, then SIGKILL the whole group. Returns its exit code.

        Safe to call again, and after the child has exited: what is left of the group is killed either way."""
        try:
            code = self.process.poll()
            if code is None:
                log.info("sending %s to process group %d", signal.Signals(first_signal).name, self.pid)
                try:
                    self.process.send_signal(first_signal)
                    code = self.process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("process %d still running after %.0f s: killing its group", self.pid, timeout_s)
            self.kill_group()
            return self.process.wait() if code is None else code
        finally:
            self._release_watchdog()

    def kill_group(self) -> None:
        """SIGKILL whatever is left in the group (children that outlive their leader, such as Triton's stubs)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _release_watchdog(self) -> None:
        """Stop the watchdog first, then close the pipe: it must never act on a group that is already gone."""
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
            self._watchdog = None
        if self._alive_fd is not None:
            os.close(self._alive_fd)
            self._alive_fd = None


def start(command: list[str], *, die_with_parent: bool = True, grace_s: float = 15.0, **popen_kwargs) -> ProcessGroup:
    """Start `command` in a session of its own; with `die_with_parent`, a watchdog ends its group if we die."""
    process = subprocess.Popen(command, start_new_session=True, **popen_kwargs)
    log.info("started %s as process group %d", Path(command[0]).name, process.pid)
    if not die_with_parent:
        return ProcessGroup(process, None, None)
    read_fd, write_fd = os.pipe()  # both ends non-inheritable: only the watchdog gets the read end, as its stdin
    try:
        watchdog = subprocess.Popen([sys.executable, "-I", "-S", "-c", WATCHDOG, str(process.pid), str(grace_s)],
                                    stdin=read_fd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
    except BaseException:
        os.close(write_fd)
        ProcessGroup(process, None, None).stop(timeout_s=5.0)
        raise
    finally:
        os.close(read_fd)
    return ProcessGroup(process, watchdog, write_fd)


def run_bounded(command: list[str], timeout_s: float, *, interrupt_grace_s: float = 10.0) -> tuple[int, str]:
    """Run `command` to the end and return (exit code, output); its group never outlives this call.

    Past `timeout_s` the group is killed and TimeoutError raised. On any other way out (Ctrl-C,
    SIGTERM turned into an exception, an error here), the child gets SIGINT, then its group SIGKILL.
    """
    group = start(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    try:
        output, _ = group.process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        group.stop(timeout_s=0)
        output, _ = group.process.communicate()
        raise TimeoutError(f"{Path(command[0]).name} still running after {timeout_s:.0f} s; killed. "
                           f"Output tail:\n{output[-3000:]}") from None
    except BaseException:
        log.info("interrupted: stopping process group %d", group.pid)
        group.stop(timeout_s=interrupt_grace_s)
        raise
    finally:
        group.stop(timeout_s=0)  # the leader has exited: this kills whatever it left in its group
    return group.process.returncode, output
