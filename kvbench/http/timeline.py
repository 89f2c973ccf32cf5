"""``--scrape-interval`` on real workers: scrape every worker's /metrics each interval during the replay.

The scraper is its own asyncio task beside the replay. It never waits on a scrape: each is a task of its
own, so a slow server delays no tick and no request. A scrape that fails, or is still unanswered at its
worker's next tick (that tick is skipped, so scrapes never pile up on a hung server), becomes an error row;
the run goes on either way.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Self

import aiohttp
import pandas as pd

from kvbench.http import metrics
from kvbench.timeline import server_row, timeline_frame

MIN_SCRAPE_TIMEOUT_S = 2.0  # a scrape may take longer than a short interval; its next tick is then skipped


class TimelineScraper:
    """Use as ``async with TimelineScraper(...) as s:`` around the replay, then ``s.frame(t0)``."""

    def __init__(self, session: aiohttp.ClientSession, urls: list[str], interval_s: float) -> None:
        self.session = session
        self.urls = urls
        self.interval_s = interval_s
        self.timeout_s = max(interval_s, MIN_SCRAPE_TIMEOUT_S)
        self._rows: list[tuple[float, int, dict[str, Any]]] = []  # (monotonic stamp, worker, row fields)
        self._inflight: list[asyncio.Task | None] = [None] * len(urls)
        self._ticker: asyncio.Task | None = None

    async def __aenter__(self) -> Self:
        self._ticker = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks = [t for t in (self._ticker, *self._inflight) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _tick(self) -> None:
        start = time.monotonic()
        k = 0
        while True:
            delay = start + k * self.interval_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            stamp = time.monotonic()
            for w, url in enumerate(self.urls):
                busy = self._inflight[w]
                if busy is not None and not busy.done():
                    self._rows.append((stamp, w, {"error": f"skipped: the previous scrape had not answered "
                                                           f"within --scrape-interval {self.interval_s:g} s"}))
                    continue
                self._inflight[w] = asyncio.create_task(self._scrape(stamp, w, url))
            # a starved event loop skips the ticks it missed instead of firing them all at once
            k = max(k + 1, int((time.monotonic() - start) / self.interval_s) + 1)

    async def _scrape(self, stamp: float, w: int, url: str) -> None:
        snap = await metrics.scrape(self.session, url, self.timeout_s, parse_in_thread=True)
        if snap.ok:
            self._rows.append((stamp, w, {"values": snap.values, "series": snap.series}))
        else:
            self._rows.append((stamp, w, {"error": snap.error}))

    def frame(self, t0: float) -> pd.DataFrame:
        """The rows with times since ``t0`` (the replay's origin); scrapes before it (cache reset, the
        counters' first snapshot) are dropped."""
        rows = [server_row(stamp - t0, w, got.get("values", {}), got.get("series", {}), got.get("error"))
                for stamp, w, got in self._rows if stamp >= t0]
        return timeline_frame(rows)
