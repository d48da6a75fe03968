"""One Settings object, read from FIREGRID_* environment variables (and an optional .env)."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET = "dev-insecure-change-me"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FIREGRID_", env_file=".env", extra="ignore")

    env: Literal["dev", "prod"] = "dev"
    database_url: str = "sqlite:///./data/firegrid.db"
    storage_dir: Path = Path("./data/blobs")
    # Photos are written to the disk around the page cache (O_DIRECT; app/photos/staging.py). Off:
    # through it, for a filesystem that takes O_DIRECT but serves it badly.
    storage_direct_io: bool = True
    policy_file: Path | None = None
    # Pepper mixed into token hashes: a stolen database alone cannot be replayed as tokens.
    secret_key: str = DEFAULT_SECRET
    # The key that seals the audit chain's events (app/audit/chain.py). Unset: derived from secret_key.
    # Set it to keep the seals when secret_key changes (or to the old secret_key, when it does).
    audit_key: str | None = None
    token_ttl_hours: int = Field(default=24 * 30, ge=1)  # phones stay offline for weeks
    # Login limits (429) within the window: failures for one username from one address (a stranger's
    # guesses lock the name out of the stranger's address only), for one username from all addresses
    # together (guessing spread over many addresses), from one address for all usernames.
    login_max_failures_per_user: int = 5
    login_max_failures_per_user_all_addresses: int = 50
    login_max_failures_per_address: int = 30
    login_window_minutes: int = 15
    max_photo_bytes: int = 15 * 1024 * 1024
    # Bodies are read into memory before anything looks at them: without a bound, one request (a
    # stranger's too) could take a worker's memory. A push of 500 ops is ~0.5 MB as phones send them.
    max_push_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024)  # every other JSON or form body
    sweep_interval_seconds: int = 300  # 0 disables the in-process sweep
    sql_echo: bool = False

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()


class UnsafeConfiguration(RuntimeError):
    pass


def check_production_safety(settings: Settings, demo_accounts_present: bool) -> None:
    """Production must not run with the shipped secret or the public demo accounts."""
    if settings.env != "prod":
        return
    for name, key in (("FIREGRID_SECRET_KEY", settings.secret_key), ("FIREGRID_AUDIT_KEY", settings.audit_key)):
        if key is None:  # the audit key is optional: derived from the secret key
            continue
        # the shipped value, anything short, or what no generator would make: blanks, a few characters
        # repeated, the shipped value padded out
        if (DEFAULT_SECRET in key or len(key) < 32 or not key.strip() or len(set(key)) < 10):
            raise UnsafeConfiguration(
                f"FIREGRID_ENV=prod needs {name} set to a random value of at least 32 characters "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
    if demo_accounts_present:
        raise UnsafeConfiguration(
            "FIREGRID_ENV=prod refuses to start: demo accounts (password 'firegrid-demo') exist in the database"
        )
