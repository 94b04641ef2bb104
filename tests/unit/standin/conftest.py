"""Fixtures for the TF Serving stand-in's tests (tools/standin), built on standin_harness.

`models` saves two versions of a small linear model under one base path; `standin` starts the server once per
module and stops it with SIGTERM, asserting the clean exit (code 0) at teardown.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from standin_harness import Models, Standin, save_models, start_standin, stop_cleanly


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return save_models(tmp_path_factory.mktemp("standin-models") / "m")


@pytest.fixture(scope="module")
def standin(models: Models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    server = start_standin(tmp_path_factory.mktemp("standin"), models.base)
    yield server
    stop_cleanly(server)
