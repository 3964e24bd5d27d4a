"""file:// paths under the file root that are not regular files (issue 27 item 3): a FIFO, a device, a directory.

Each is refused with one message, quickly, and without blocking the event loop. A FIFO with no writer is the
sharp case: a plain open() of it waits for a writer forever. The fetch runs on its own event loop in a thread
with a deadline; if it is stuck past the deadline the test opens the FIFO's write end (which lets the stuck
open() return) so that the thread ends, and fails.
"""

import asyncio
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from consumer.errors import InputError
from schemas import ErrorKind, MemeEvent
from tests.test_fetch import fetcher

DEADLINE_S = 5.0


def run_with_deadline(coro_fn, unblock: Path | None = None):
    """coro_fn() on a fresh event loop in a thread; its result (or exception), or pytest.fail after DEADLINE_S.
    A heartbeat task runs on the same loop: the longest gap between its ticks is returned too."""
    out: dict = {}

    async def main():
        gaps, stop = [], asyncio.Event()

        async def heartbeat():
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        beat = asyncio.create_task(heartbeat())
        await asyncio.sleep(0)  # let the heartbeat start before the fetch
        try:
            return await asyncio.wait_for(coro_fn(), DEADLINE_S), gaps
        finally:
            stop.set()
            await beat

    def target():
        try:
            out["result"] = asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            out["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(DEADLINE_S + 2)
    if thread.is_alive():
        if unblock is not None:  # a writer lets the reader's blocking open() return; then EOF
            os.close(os.open(unblock, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
        pytest.fail(f"the fetch was still blocked {DEADLINE_S + 2}s after it started (event loop blocked)")
    if "error" in out:
        raise out["error"]
    result, gaps = out["result"]
    return result, max(gaps, default=0.0), time.monotonic() - started


def event(path: Path) -> MemeEvent:
    return MemeEvent(event_id="e", post_id="p", image_url=path.as_uri())


@pytest.fixture
def specials(tmp_path: Path) -> dict[str, Path]:
    """Under the root: a FIFO nobody writes, a directory, a symlink to /dev/zero, a regular image."""
    paths = {"fifo": tmp_path / "pipe.png", "dir": tmp_path / "folder.png", "zero": tmp_path / "zero.png",
             "ok": tmp_path / "ok.png"}
    os.mkfifo(paths["fifo"])
    paths["dir"].mkdir()
    paths["zero"].symlink_to("/dev/zero")
    paths["ok"].write_bytes(b"png bytes")
    return paths


@pytest.mark.parametrize("how", ["fetch", "fetch_many"])
def test_fifo_under_the_root_is_refused_without_blocking(tmp_path, specials, how):
    f = fetcher(tmp_path)
    fifo = specials["fifo"]
    if how == "fetch":
        async def go():
            try:
                await f.fetch(event(fifo))
            except InputError as e:
                return e
            return None
    else:  # fetch_many reads file:// inline, on the event loop itself
        async def go():
            return (await f.fetch_many([event(fifo), event(specials["ok"])]))[0]
    error, longest_gap, took = run_with_deadline(go, unblock=fifo)
    assert isinstance(error, InputError), error
    assert error.kind == ErrorKind.IMAGE_MISSING
    assert "is a FIFO, not a regular file" in str(error), error
    assert took < DEADLINE_S and longest_gap < 1.0, (took, longest_gap)


def test_directory_and_device_are_refused_and_a_regular_file_still_reads(tmp_path, specials):
    f = fetcher(tmp_path)

    async def go():
        return await f.fetch_many([event(specials[k]) for k in ("dir", "zero", "ok")])

    (directory, zero, ok), _, took = run_with_deadline(go)
    assert isinstance(directory, InputError) and directory.kind == ErrorKind.IMAGE_MISSING, directory
    assert "is a directory, not a regular file" in str(directory), directory
    # /dev/zero through a symlink resolves outside the root: refused before it is opened
    assert isinstance(zero, InputError) and zero.kind == ErrorKind.FORBIDDEN_URL, zero
    assert ok == b"png bytes"
    assert took < DEADLINE_S


def test_character_device_inside_the_root_is_refused(tmp_path):
    """A device node inside the root itself (made with mknod) is never read. It is /dev/null's (char 1,3), not
    /dev/zero's: without the check a read of /dev/null ends at once (b"", a wrong answer the test sees), while
    /dev/zero would fill memory until the deadline."""
    node = tmp_path / "null-node.png"
    try:
        os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    try:
        os.close(os.open(node, os.O_RDONLY))
    except PermissionError:
        pytest.skip(f"{tmp_path} is mounted nodev")
    f = fetcher(tmp_path)

    async def go():
        return await f.fetch_many([event(node)])

    (error,), _, took = run_with_deadline(go)
    assert took < DEADLINE_S
    assert isinstance(error, InputError) and error.kind == ErrorKind.IMAGE_MISSING, error
    assert "is a character device, not a regular file" in str(error), error
