"""The one background-loop helper: work handed over from other threads runs on its own loop; it
stops, joins and starts again; in a forked child it forgets the parent's thread."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from src.agents.ml_foundation.observability_connector.background import SHARE_GIL_EVERY_S, BackgroundLoop, share_gil

REPO = Path(__file__).resolve().parents[2]


def test_submit_and_call_soon_run_on_the_loop_thread() -> None:
    bg = BackgroundLoop("test-bg")
    with pytest.raises(RuntimeError):
        bg.submit(asyncio.sleep(0))  # not started
    assert bg.call_soon(print) is False
    loop = bg.start(wait=True)
    assert bg.is_alive() and bg.start() is loop  # a second start while running: the same loop

    async def where() -> int:
        return threading.get_ident()

    loop_thread = bg.submit(where()).result(5)
    assert loop_thread != threading.get_ident() and bg.thread is not None and loop_thread == bg.thread.ident
    called = threading.Event()
    assert bg.call_soon(called.set) and called.wait(5)
    bg.stop()
    assert bg.join(5) and not bg.is_alive()
    assert bg.call_soon(called.set) is False  # the loop is closed


def test_a_main_coroutine_ends_the_run_and_a_new_run_gets_a_new_thread() -> None:
    bg = BackgroundLoop("test-bg-main")
    release = [threading.Event(), threading.Event()]
    runs: list[int] = []

    async def main() -> None:
        gate = release[len(runs)]
        runs.append(threading.get_ident())
        while not gate.is_set():
            await asyncio.sleep(0.005)

    bg.start(main)
    first = bg.thread
    assert not bg.join(0.05)  # still running main()
    release[0].set()
    assert bg.join(5)
    bg.start(main)
    second = bg.thread
    assert second is not first and bg.is_alive()
    release[1].set()
    assert bg.join(5) and len(runs) == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_its_own_loop() -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, os, sys
        sys.path.insert(0, {str(REPO)!r})
        from src.agents.ml_foundation.observability_connector.background import BackgroundLoop

        async def pid():
            return os.getpid()

        bg = BackgroundLoop("parent-loop")
        bg.start(wait=True)
        assert bg.submit(pid()).result(5) == os.getpid()
        child = os.fork()
        if child == 0:
            ok = not bg.is_alive() and bg.loop is None  # the parent's thread does not exist here
            bg.start(wait=True)
            ok = ok and bg.submit(pid()).result(5) == os.getpid()
            bg.stop()
            os._exit(0 if ok and bg.join(5) else 1)
        _, status = os.waitpid(child, 0)
        assert bg.submit(pid()).result(5) == os.getpid()  # the parent's loop is untouched
        sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def _sleeps_while_sharing(calls: int = 50) -> int:
    """Busy work with share_gil between items; how many times time.sleep was called meanwhile."""
    seen: list[object] = []

    def hook(frame: object, event: str, arg: object) -> None:
        if event == "c_call" and arg is time.sleep:
            seen.append(arg)

    sys.setprofile(hook)  # this thread only
    try:
        for _ in range(calls):
            until = time.perf_counter() + 2 * SHARE_GIL_EVERY_S
            while time.perf_counter() < until:  # an item that holds the GIL longer than a turn
                pass
            share_gil()
    finally:
        sys.setprofile(None)
    return len(seen)


def test_share_gil_gives_the_gil_back_on_a_background_thread_and_never_sleeps_elsewhere() -> None:
    # On an application's thread (here the test's): never a sleep, not even sleep(0).
    assert _sleeps_while_sharing() == 0
    bg = BackgroundLoop("test-share")
    bg.start(wait=True)
    try:

        async def on_the_loop() -> int:
            return _sleeps_while_sharing()

        # Each item held the GIL for two turns' worth: every call handed it over.
        assert bg.submit(on_the_loop()).result(30) == 50
    finally:
        bg.stop()
        bg.join(5)
