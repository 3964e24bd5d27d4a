"""De-duplication: worker memes/s at 0%, 30% and 90% duplicate content (same image + text, new event ids).

Duplicates are served by the in-batch de-duplication and the Redis verdict cache instead of the model.
Each rate gets a fresh worker and an empty cache. Run: `python -m bench.bench_dedup [--n 200]`.
"""

import argparse
import tempfile
from pathlib import Path

from bench.common import (
    bundle,
    collect,
    dev_stack,
    event_records,
    flush_cache,
    now_ms,
    produce,
    start_worker,
    table,
    throughput,
    write_result,
)
from schemas import Verdict
from testkit.topics import Topics

RATES = [0.0, 0.3, 0.9]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200, help="events per duplicate rate")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    bundle_path, bundle_name = bundle()
    results = []
    with dev_stack() as stack, tempfile.TemporaryDirectory() as tmp:
        first = 0
        for rate in RATES:
            flush_cache(stack)
            topics = Topics.unique()
            unique = max(1, round(args.n * (1 - rate)))
            records = event_records(first, args.n, topics.group, unique=unique)
            first += unique
            produce(stack, topics.input, records)
            worker = start_worker(stack, bundle_path, topics, Path(tmp), MEMEGUARD_MAX_BATCH=str(args.batch),
                                  MEMEGUARD_MAX_WAIT_S="0.5", MEMEGUARD_PROVIDERS="cpu")
            ready_ms = now_ms()
            try:
                ids = {r[0] for r in records}
                reader = collect(stack, topics, ids)
                memes_per_s = throughput(reader, ids, ready_ms)
                cached = sum(isinstance(o.out, Verdict) and o.out.cached for o in reader.outputs)
                reader.close()
            finally:
                worker.stop()
            results.append({"duplicate_rate": rate, "events": args.n, "unique_contents": unique,
                            "memes_per_s": memes_per_s, "cached_verdicts": cached})
    base = results[0]["memes_per_s"]
    for r in results:
        r["speedup_vs_0pct"] = round(r["memes_per_s"] / base, 2)
    table(f"de-duplication ({bundle_name} bundle, {args.n} events each)",
          ["duplicates", "unique", "memes/s", "cached verdicts", "x vs 0%"],
          [[f"{r['duplicate_rate']:.0%}", r["unique_contents"], r["memes_per_s"], r["cached_verdicts"],
            r["speedup_vs_0pct"]] for r in results])
    write_result("bench_dedup", {"bundle": bundle_name, "bundle_path": str(bundle_path), "max_batch": args.batch,
                                 "max_wait_s": 0.5, "results": results})


if __name__ == "__main__":
    main()
