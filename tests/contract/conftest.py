"""Fixtures of the storage contract suite.

Every test here takes ``storage`` (an open store with the default retention) or
``backend`` (to open, close and reopen the same store with a chosen retention); both run
once per entry of ``backends.BACKENDS``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gridpilot.config.models import RetentionConfig
from gridpilot.storage import ManagedStorage
from tests.contract.backends import BACKENDS, Backend


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    factory = BACKENDS[request.param]
    return factory(tmp_path)


@pytest.fixture
async def storage(backend: Backend) -> AsyncIterator[ManagedStorage]:
    async with backend.open(RetentionConfig()) as opened:
        yield opened
