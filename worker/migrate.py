"""`listsync db upgrade`: apply the Alembic migrations in migrations/."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config

from config import get_settings


def migrations_dir() -> Path:
    override = os.environ.get("LISTSYNC_MIGRATIONS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    # ConfigParser treats % as interpolation; URL-encoded options (%3D) must be escaped.
    cfg.set_main_option("sqlalchemy.url", (url or get_settings().database_url).replace("%", "%%"))
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)
