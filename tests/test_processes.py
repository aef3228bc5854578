"""Process supervision (rf_triton.processes): children never outlive rf-triton, whatever way it ends.

Each test runs a real parent process that starts real children, and sends it real signals.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from rf_triton.processes import run_bounded

DEADLINE_S = 20.0


def gone(pid: int) -> bool:
    """Ended (a zombie counts: nothing reaps orphans on some machines)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(condition, what: str, deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {deadline_s:g} s: {what}"
        time.sleep(0.05)


def parent_process(code: str) -> subprocess.Popen:
    """A Python parent running `code`; it prints its child's PID on its first line."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture()
def parents():
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_child_outlives_the_thread_that_started_it_and_ends_with_its_process(parents):
    # PR_SET_PDEATHSIG would have killed the child when the starting thread ended.
    parent = parent_process("""
        import threading, time
        from rf_triton import processes
        started = {}
        thread = threading.Thread(target=lambda: started.update(group=processes.start(["sleep", "300"])))
        thread.start(); thread.join()
        print(started["group"].pid, flush=True)
        time.sleep(300)
    """)
    parents.append(parent)
    child = int(parent.stdout.readline())
    time.sleep(1.0)  # the starting thread has long ended
    assert not gone(child), "the child died with the thread that started it"
    parent.send_signal(signal.SIGKILL)
    wait_until(lambda: gone(child), f"child {child} ended after its parent was killed")


def test_ctrl_c_during_run_bounded_stops_the_whole_group(parents):
    parent = parent_process("""
        import os, sys
        from rf_triton.processes import run_bounded
        try:
            run_bounded(["sh", "-c", "echo $$; sleep 300 & sleep 300"], timeout_s=300)
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    parents.append(parent)
    shell = wait_for_child(parent.pid, "sh")
    members = [shell, *shell.children(recursive=True)]
    assert len(members) == 3, members
    parent.send_signal(signal.SIGINT)
    assert parent.wait(timeout=DEADLINE_S) == 130
    wait_until(lambda: all(gone(p.pid) for p in members), f"group {members} ended after Ctrl-C")


def wait_for_child(pid: int, name: str) -> psutil.Process:
    found: list[psutil.Process] = []

    def child_started() -> bool:
        found[:] = [c for c in psutil.Process(pid).children() if c.name() == name and len(c.children()) == 2]
        return bool(found)

    wait_until(child_started, f"{name} started with its two children")
    return found[0]


def test_run_bounded_kills_the_group_past_its_timeout():
    with pytest.raises(TimeoutError, match="still running after 1 s") as raised:
        run_bounded(["sh", "-c", "sleep 300 & echo background $!; sleep 300"], timeout_s=1)
    background = int(str(raised.value).split("background ")[1].split()[0])
    wait_until(lambda: gone(background), f"background child {background} killed with its group")


def test_run_bounded_returns_code_and_output():
    assert run_bounded(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout_s=30) == (3, "out\nerr\n")
