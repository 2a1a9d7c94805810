"""Image fixtures: a wheelhouse of tiny wheels the tests write themselves (no
index is ever contacted), a real SQLite store, and settings that build offline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from images_helpers import ADMIN, write_wheels

from spanfaas.config import ImageSettings, Settings
from spanfaas.images import ImageService
from spanfaas.images.curation import new_list
from spanfaas.store import SQLiteStore


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_wheels(tmp_path_factory.mktemp("wheelhouse"))


@pytest.fixture
def settings(tmp_path: Path, wheelhouse: Path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), images=ImageSettings(offline=True, find_links=[str(wheelhouse)]))


@pytest.fixture
def store(settings: Settings) -> SQLiteStore:
    s = SQLiteStore(settings.data_path / "spanfaas.db")
    yield s  # type: ignore[misc]
    s.close()


@pytest.fixture
def service(settings: Settings, store: SQLiteStore) -> Iterator[ImageService]:
    store.create_image_list(new_list("tools", packages=["tinycalc>=1,<3", "tinyhelper"], by=ADMIN.name), ADMIN)
    s = ImageService(settings, store)
    yield s
    s.close()
