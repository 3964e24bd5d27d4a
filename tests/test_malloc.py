"""consumer.core.malloc: with the worker's heap settings, large blocks freed between live small ones go back to
the OS; with glibc's defaults they stay resident (the soak's RSS growth, in miniature)."""

import subprocess
import sys
import textwrap

import pytest

from consumer.core import malloc

pytestmark = pytest.mark.skipif(malloc._LIBC is None, reason="glibc only")

SCRIPT = textwrap.dedent("""
    import sys
    from consumer.core.malloc import bound_heap

    def rss_mib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024

    if sys.argv[1] == "bounded":
        assert bound_heap(1 << 20, 2)
    big = b"x" * (16 << 20)
    del big  # glibc's dynamic threshold: blocks up to 16 MiB now come from the heap, not mmap
    base = rss_mib()
    blocks, pins = [], []
    for i in range(16):
        blocks.append(b"y" * (4 << 20))  # 64 MiB in 4 MiB blocks
        pins.append(b"z" * 1000 + bytes([i]))  # a live block (malloc, not pymalloc) after each
    del blocks  # freed between live blocks: the heap cannot shrink past them
    print(rss_mib() - base)
""")


def retained_mib(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_freed_large_blocks_stay_resident_with_glibc_defaults_and_go_back_with_bound_heap() -> None:
    assert retained_mib("default") >= 48  # the control: the effect is there to be removed
    assert retained_mib("bounded") <= 8

