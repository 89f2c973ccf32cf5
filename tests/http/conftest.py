from __future__ import annotations

import pytest
from tests.http.fake_openai import FakeOpenAI


@pytest.fixture
def fake_server():
    """Factory: ``fake_server(mode=..., ...)`` starts a fake worker, stopped after the test."""
    started: list[FakeOpenAI] = []

    def make(**kw) -> FakeOpenAI:
        srv = FakeOpenAI(**kw).start()
        started.append(srv)
        return srv

    yield make
    for s in started:
        s.stop()
