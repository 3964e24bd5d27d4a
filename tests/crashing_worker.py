"""`memeguard worker` with a bug injected for the crash-loop breaker's test: a batch holding a record whose
value contains CRASH-ME kills the process at once (os._exit, as a native crash or an OOM kill would: no
handler runs, nothing is committed). Run as `python tests/crashing_worker.py`."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consumer.cli import main  # noqa: E402
from consumer.core import pipeline  # noqa: E402

# prepare() is the first stage of every path (the pipelined worker's and process()'s)
_prepare = pipeline.ModerationPipeline.prepare


async def _crash_on_marker(self, records):
    if any(r.value and b"CRASH-ME" in r.value for r in records):
        os._exit(70)
    return await _prepare(self, records)


pipeline.ModerationPipeline.prepare = _crash_on_marker
sys.exit(main(["worker"]))
