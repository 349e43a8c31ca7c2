"""The one settings object: read from LISTSYNC_* environment variables and an optional .env.

Every setting is documented in docs/configuration.md. Secrets are SecretStr so they never
appear in reprs, logs or validation errors.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: URL schemes of a Redis server, and of RabbitMQ (kombu's py-amqp transport).
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")

#: Mailchimp allows 10 simultaneous connections per account; we never go above it.
MAILCHIMP_HARD_CONCURRENCY_LIMIT = 10

DEFAULT_VAR_DIR = Path("var")
#: Every secret and token is at least this long.
MIN_SECRET_CHARS = 16
#: A secret containing one of these was copied from an example file and never replaced.
PLACEHOLDER_MARKERS = ("change-me", "changeme", "change_me", "replace-me", "placeholder")
#: Values the docs show as examples; they are no secret either.
EXAMPLE_SECRETS = frozenset({"new-secret", "old-secret", "emulated-us1", "secret", "password"})


def secret_problem(value: str) -> str | None:
    """Why a secret is unfit (placeholder, too short), in words that never quote it."""
    lowered = value.strip().lower()
    if any(marker in lowered for marker in PLACEHOLDER_MARKERS) or lowered in EXAMPLE_SECRETS:
        return "is a placeholder from an example: generate one, e.g. `openssl rand -hex 24`"
    if len(value) < MIN_SECRET_CHARS:
        return f"must be at least {MIN_SECRET_CHARS} characters"
    return None


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LISTSYNC_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        hide_input_in_errors=True,
    )

    # --- storage and broker -------------------------------------------------------------
    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_VAR_DIR}/listsync.db",
        description="SQLAlchemy URL. SQLite (default, a file under var/) or postgresql+psycopg://.",
    )
    broker_url: str | None = Field(
        default=None,
        description="URL of the Celery broker: RabbitMQ (amqp://, production) or Redis "
        "(redis://). Unset: `listsync run` embeds a Redis server.",
    )
    redis_url: str | None = Field(
        default=None,
        validate_default=True,
        description="Redis for everything but the queues (the Mailchimp call cap, counters, "
        "nudge flags). Unset: the broker's URL, when the broker is Redis.",
    )
    broker_visibility_timeout_seconds: int = Field(
        default=120,
        ge=10,
        le=3600,
        description="Redis broker: a message a worker took and did not acknowledge within this "
        "long (its worker died) is delivered again.",
    )
    var_dir: Path = Field(default=DEFAULT_VAR_DIR, description="Where local state files live.")
    database_connect_timeout_seconds: int = Field(
        default=5,
        ge=1,
        le=60,
        description="PostgreSQL: give up connecting after this long (the database is away).",
    )
    database_statement_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="PostgreSQL: cancel any statement running longer than this.",
    )
    database_pool_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="Wait at most this long for a free pooled connection.",
    )

    # --- Mailchimp ----------------------------------------------------------------------
    mailchimp_api_key: SecretStr | None = Field(
        default=None, description="Marketing API key. Unset: `listsync run` starts the emulator."
    )
    mailchimp_server: str | None = Field(
        default=None, description="Data-centre prefix such as us6; derived from the key if unset."
    )
    mailchimp_list_id: str | None = Field(default=None, description="The audience (list) id.")
    mailchimp_base_url: str | None = Field(
        default=None, description="Override of the API base URL, e.g. the emulator's."
    )
    mailchimp_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    mailchimp_concurrency: int = Field(
        default=4,
        ge=1,
        le=MAILCHIMP_HARD_CONCURRENCY_LIMIT,
        description="Cap on simultaneous Mailchimp calls across all workers and hosts.",
    )
    double_optin: bool | None = Field(
        default=None,
        description="Send new members as pending (true) or subscribed (false). Unset: read the "
        "audience's own double_optin setting from Mailchimp.",
    )
    resubscribe_with_confirmation: bool = Field(
        default=False,
        description="Allow a new explicit consent after an opt-out to send status=pending.",
    )
    merge_fields: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["FNAME", "LNAME"],
        description="Merge fields that may be sent to Mailchimp (comma-separated).",
    )

    # --- sync ---------------------------------------------------------------------------
    sync_batch_size: int = Field(default=500, ge=1, le=500)
    sync_retry_window_hours: float = Field(default=48.0, gt=0)
    sync_in_flight_timeout_seconds: int = Field(default=300, ge=30)
    sync_sweep_seconds: int = Field(default=30, ge=1)

    # --- web ----------------------------------------------------------------------------
    web_host: str = Field(default="127.0.0.1")
    web_port: int = Field(default=8000, ge=0, le=65535)
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address of the internal listener serving /metrics (and the probes).",
    )
    metrics_port: int = Field(default=9108, ge=1, le=65535)
    web_docs: bool = Field(
        default=False,
        description="Serve /docs and /openapi.json on the public listener.",
    )
    webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Secrets accepted in the webhook path (comma-separated; two during rotation).",
    )
    webhook_signing_secret: SecretStr | None = Field(default=None)
    intake_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Bearer tokens accepted by POST /v1/signups."
    )

    # --- schedules ----------------------------------------------------------------------
    reconcile_interval_seconds: int = Field(default=900, ge=10)
    audience_check_seconds: int = Field(
        default=900,
        ge=10,
        description="How often beat checks the forms against the audience (`listsync check`).",
    )
    purge_hour_utc: int = Field(default=3, ge=0, le=23)
    purge_minute_utc: int = Field(default=15, ge=0, le=59)
    retention_file: Path | None = Field(
        default=None, description="Retention schedule TOML. Unset: config/retention.toml."
    )
    forms_file: Path | None = Field(
        default=None, description="Forms and their allowed fields (TOML). Unset: config/forms.toml."
    )

    # --- operations ---------------------------------------------------------------------
    flower_basic_auth: SecretStr | None = Field(
        default=None, description="user:password for Flower (required unless --insecure-local)."
    )
    worker_concurrency: int = Field(default=2, ge=1)
    worker_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="`listsync worker` and `listsync run` start Celery workers through "
        "`nice -n` this much: the web's answers come first.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO",
        description="Level of listsync's own loggers in the web, the workers and beat.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("merge_fields", mode="before")
    @classmethod
    def _merge_fields_csv(cls, value: object) -> object:
        value = _split_csv(value)
        if isinstance(value, list):
            return [str(v).upper() for v in value]
        return value

    @field_validator("webhook_secrets", "intake_tokens", mode="before")
    @classmethod
    def _secrets_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            # psycopg 3 is the driver we ship; plain URLs would ask for psycopg2.
            value = "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(REDIS_SCHEMES + AMQP_SCHEMES):
            raise ValueError("must be an amqp:// (RabbitMQ) or redis:// URL")
        return value or None

    @field_validator("redis_url")
    @classmethod
    def _redis_for_the_rest(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value and not value.startswith(REDIS_SCHEMES):
            raise ValueError("must be a redis:// URL (the call cap, counters and flags need Redis)")
        broker = info.data.get("broker_url")
        if not value and broker is not None and broker.startswith(AMQP_SCHEMES):
            raise ValueError(
                "must be set when LISTSYNC_BROKER_URL is an amqp:// URL: RabbitMQ carries the "
                "queues, Redis the call cap, counters and flags"
            )
        return value or None

    @field_validator("webhook_secrets", "intake_tokens")
    @classmethod
    def _real_secrets(cls, value: list[SecretStr]) -> list[SecretStr]:
        for secret in value:
            if (problem := secret_problem(secret.get_secret_value())) is not None:
                raise ValueError(f"each one {problem}")
        return value

    @field_validator("webhook_signing_secret", "mailchimp_api_key")
    @classmethod
    def _real_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and (problem := secret_problem(value.get_secret_value())):
            raise ValueError(problem)
        return value

    @field_validator("flower_basic_auth")
    @classmethod
    def _real_passwords(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        for credential in value.get_secret_value().split(","):
            user, sep, password = credential.partition(":")
            if not (user and sep and password):
                raise ValueError("must be user:password (several separated by commas)")
            if (problem := secret_problem(password)) is not None:
                raise ValueError(f"each password {problem}")
        return value

    @field_validator("database_url")
    @classmethod
    def _real_database_password(cls, value: str) -> str:
        from sqlalchemy.engine import make_url

        password = make_url(value).password if "@" in value else None
        if password and (problem := secret_problem(str(password))) is not None:
            raise ValueError(f"the password in it {problem}")
        return value

    @model_validator(mode="after")
    def _server_from_key(self) -> Settings:
        if self.mailchimp_server is None and self.mailchimp_api_key is not None:
            key = self.mailchimp_api_key.get_secret_value()
            if "-" in key:
                self.mailchimp_server = key.rsplit("-", 1)[1]
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def broker_is_amqp(self) -> bool:
        return self.broker_url is not None and self.broker_url.startswith(AMQP_SCHEMES)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests clear the cache with get_settings.cache_clear()."""
    return Settings()
