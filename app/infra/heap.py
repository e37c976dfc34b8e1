"""The garbage collector's settings for the long-running processes (`serve`, `dev`, `ingest`).

CPython's defaults run a young collection every 700 net allocations and a full one after 100 of
those. A process that fans out thousands of websocket frames a second allocates fast, and every
full pass walks each live object (the schema, caches, every socket's state) while all sockets
wait: `bench/stream.py` (1,000 subscribers) measured a p99 of 183-330 ms with the defaults and
15-28 ms with these settings, in alternating runs on the same machine (bench/RESULTS.md).
"""

from __future__ import annotations

import gc

# Young collections every 50,000 net allocations; a full pass after 20 x 100 of them.
THRESHOLDS = (50_000, 20, 100)


def settle() -> None:
    """Once startup is done: what exists now (modules, schema, caches, pools) lives as long as the
    process, so it is frozen out of every later pass; then the thresholds above apply."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
