"""Passwords, login with rate limits, opaque device-bound tokens, revocation."""

import hashlib
import hmac
import logging
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlmodel import Session, select

from app.auth.models import ROLE_UNIT_KINDS, AuthToken, Device, LoginFailure, Role, User
from app.config import Settings
from app.db import utcnow
from app.errors import Conflict, Forbidden, Invalid, NotFound, TooManyRequests, Unauthorized
from app.org.models import OrgUnit

log = logging.getLogger("firegrid")

# argon2id at OWASP's first recommended setting (19 MiB, 2 passes, 1 lane), not argon2-cffi's default
# (64 MiB, 3 passes, 4 lanes): each login being verified holds that memory, and a worker's whole budget is
# ~80 MB (docs/PERFORMANCE.md). Hashes made with other settings still verify, and are redone at login.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# Logins verified at once per process: a burst of them (anyone may try) waits here instead of each
# taking its 19 MiB from a worker's memory at the same time.
_VERIFYING = threading.BoundedSemaphore(2)
# Verified against when the username does not exist, so both paths cost the same (no user enumeration).
_DUMMY_HASH = _hasher.hash("firegrid-no-such-user")
MIN_PASSWORD_LENGTH = 8
# The most the login form takes: a longer password could be set but never used to log in.
MAX_PASSWORD_LENGTH = 200
# What the API's UserCreate admits, so an account made by `firegrid user create` can log in as well.
USERNAME_RE = re.compile(r"[A-Za-z0-9_.\-]{2,64}")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def username_key(username: str) -> str:
    """What identifies an account: the username with ASCII letters in lower case. Android keyboards
    capitalise the first letter, so 'Zhangsan' and 'zhangsan' are one account (and one rate-limit key).
    ASCII only, as SQL lower() folds on SQLite, and usernames are ASCII (USERNAME_RE): Python's
    str.lower() would fold the Kelvin sign into a 'k'."""
    return username.translate(_ASCII_LOWER)


def _same_username(username: str) -> sa.ColumnElement[bool]:
    # the form the unique index on lower(username) answers (migrations 20261201_username_any_case)
    return sa.func.lower(User.username) == username_key(username)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        with _VERIFYING:
            return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """Made with other settings than today's (argon2-cffi's default, before 2026-12-01)."""
    try:
        return _hasher.check_needs_rehash(stored_hash)
    except InvalidHashError:
        return False


def token_digest(token: str, secret: str) -> str:
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()


def check_password_rules(password: str, *, field: str = "password") -> None:
    """What any password must be, made by create_user or set later (422 weak_password, password_too_long)."""
    if sum(not c.isspace() for c in password) < MIN_PASSWORD_LENGTH:  # twelve spaces are no password
        raise Invalid(f"{field} must have at least {MIN_PASSWORD_LENGTH} characters other than spaces",
                      code="weak_password", field=field)
    if len(password) > MAX_PASSWORD_LENGTH:
        raise Invalid(f"{field} must be at most {MAX_PASSWORD_LENGTH} characters", code="password_too_long",
                      field=field)


def create_user(
    session: Session, *, username: str, password: str, role: Role, unit: OrgUnit, display_name: str = "",
    is_demo: bool = False, id: str | None = None,
) -> User:
    if not USERNAME_RE.fullmatch(username):
        raise Invalid("username must be 2 to 64 letters, digits, '_', '.' or '-'", code="bad_username",
                      field="username")
    check_password_rules(password)
    if unit.kind not in ROLE_UNIT_KINDS[role]:
        raise Invalid(
            f"a {role.value} must belong to a unit of kind {' or '.join(ROLE_UNIT_KINDS[role])}, not {unit.kind}",
            code="bad_unit", field="org_unit_id",
        )
    taken = session.exec(select(User.username).where(_same_username(username))).first()
    if taken is not None:
        raise _username_taken(username, taken)
    user = User(username=username, password_hash=hash_password(password), role=role, org_unit_id=unit.id,
                display_name=display_name, is_demo=is_demo, **({"id": id} if id else {}))
    # Another transaction may insert the name after the check above (two admins at once; on PostgreSQL
    # its insert waits for ours): the unique index answers then. In a savepoint, so the caller's
    # transaction stays usable whichever error it is.
    try:
        with session.begin_nested():
            session.add(user)
            session.flush()
    except sa.exc.IntegrityError as exc:
        if not _violates_username_unique(exc):
            raise
        raise _username_taken(username, None) from None
    return user


# the username's unique constraint (as typed) and its unique index on lower(username)
_USERNAME_UNIQUE = ("uq_users_username", "uq_users_lower_username")


def _violates_username_unique(exc: sa.exc.IntegrityError) -> bool:
    name = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)  # PostgreSQL names it
    if name is not None:
        return name in _USERNAME_UNIQUE
    message = str(exc.orig)  # SQLite: "UNIQUE constraint failed: users.username" or "...: index '<name>'"
    return "UNIQUE constraint failed" in message and (
        "users.username" in message or any(f"'{n}'" in message for n in _USERNAME_UNIQUE))


def _username_taken(username: str, taken: str | None) -> Conflict:
    also = f" (as {taken!r}: usernames are the same in any case)" if taken not in (None, username) else ""
    return Conflict(f"username {username!r} is taken{also}", code="username_taken", field="username")


@dataclass
class IssuedToken:
    token: str
    expires_in: int
    user: User
    device: Device


def _check_rate_limit(session: Session, settings: Settings, key: str, address: str, now: datetime) -> None:
    """429 if the failures within the window reach a limit: ``login_max_failures_per_user`` for this
    username from this address, ``login_max_failures_per_user_all_addresses`` for it from all addresses, or
    ``login_max_failures_per_address`` from this address for all usernames. ``key``: username_key()."""
    since = now - timedelta(minutes=settings.login_window_minutes)
    by_pair, by_user, by_addr = session.exec(
        select(
            sa.func.count().filter(LoginFailure.username == key, LoginFailure.address == address),
            sa.func.count().filter(LoginFailure.username == key),
            sa.func.count().filter(LoginFailure.address == address),
        ).where(LoginFailure.at >= since, (LoginFailure.username == key) | (LoginFailure.address == address))
    ).one()
    for count, most, limit, whose in (
        (by_pair, settings.login_max_failures_per_user, "user_address", "for this user from this address"),
        (by_user, settings.login_max_failures_per_user_all_addresses, "user",
         "for this user from all addresses together"),
        (by_addr, settings.login_max_failures_per_address, "address", "from this address"),
    ):
        if count >= most:
            raise TooManyRequests(
                f"too many failed logins {whose}; try again in {settings.login_window_minutes} minutes",
                limit=limit, headers={"Retry-After": str(settings.login_window_minutes * 60)},
            )


def begin_attempt(session: Session, settings: Settings, username: str, address: str, now: datetime) -> None:
    """On a write transaction, before the password is verified: the rate limit, then this attempt counted
    as a failed one until it succeeds (issue_token clears it). Checked and counted at once: logins sent
    together, each counted only after its verification, all passed a limit none of them had reached.
    Failures are counted under username_key(username): the same account in any case."""
    key, address = username_key(username)[:64], address[:64]
    if session.get_bind().dialect.name == "postgresql":  # SQLite's writers already take turns
        # one attempt at a time per username (its pair and user-wide counts) and per address (its
        # count over all usernames), always in this order (no deadlock)
        for lock in (f"login-user:{key}", f"login-address:{address}"):
            session.execute(_ADVISORY_LOCK, {"key": lock})
    _check_rate_limit(session, settings, key, address, now)
    session.add(LoginFailure(username=key, address=address, at=now))


# Advisory locks belong to the whole database, not to a schema: the key names the schema too, so two
# installations (or test runs) sharing one database never queue behind each other's logins.
_ADVISORY_LOCK = sa.text("SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':' || :key))")


def forget_old_failures(session: Session, settings: Settings, now: datetime) -> int:
    """Delete failed logins older than the window: they count toward no limit, and a spray of wrong
    passwords for made-up usernames from many addresses would otherwise grow the table for good.
    Run by the periodic sweep (app/main.py); returns how many went."""
    since = now - timedelta(minutes=settings.login_window_minutes)
    return session.execute(sa.delete(LoginFailure).where(LoginFailure.at < since)).rowcount


def check_credentials(session: Session, *, username: str, password: str) -> User | None:
    """Read-only: the password (argon2, ~30 ms of CPU), after begin_attempt. None: wrong credentials."""
    user = session.exec(select(User).where(_same_username(username))).first()
    ok = verify_password(user.password_hash if user else _DUMMY_HASH, password)
    return user if ok and user is not None and user.is_active else None


def issue_token(session: Session, settings: Settings, user_id: str, *, device_key: str | None,
                device_name: str | None, now: datetime, address: str, rehashed: str | None = None,
                verified_hash: str | None = None) -> IssuedToken:
    """Write: a token bound to the device (registered on first login; a revoked device is refused).
    ``address``: where the login came from; its failures for this user are forgiven, not those from
    elsewhere (someone else's guesses: they still count toward the user-wide cap, and that address's
    limit). ``rehashed``: the password just verified, hashed with today's settings (see needs_rehash).
    ``verified_hash``: the stored hash the password was verified against (on an earlier transaction, off
    the write lock): if the password was changed or reset since, or the user deactivated, the login gets no
    token (401 bad_credentials, as a wrong password): the change revoked every token, and one issued now
    from the old password would outlive it (nor would a rehash of the old password overwrite the new one)."""
    # a change waits, or we do. FOR NO KEY UPDATE: a push of the user's holds FOR KEY SHARE on the row (its
    # rows' foreign keys), which a full FOR UPDATE would wait for: a login as long as a push
    user = session.get(User, user_id, with_for_update={"key_share": True} if verified_hash is not None else None)
    if verified_hash is not None and (user is None or user.password_hash != verified_hash or not user.is_active):
        raise Unauthorized("wrong username or password", code="bad_credentials")
    if rehashed is not None:
        user.password_hash = rehashed
    session.execute(sa.delete(LoginFailure).where(LoginFailure.username == username_key(user.username)[:64],
                                                  LoginFailure.address == address[:64]))
    device_key = device_key or f"anon-{secrets.token_hex(8)}"
    device = session.exec(select(Device).where(Device.user_id == user.id, Device.device_key == device_key)).first()
    if device is None:
        device = Device(user_id=user.id, device_key=device_key, name=(device_name or "")[:100])
        session.add(device)
        session.flush()
    elif device.revoked_at is not None:
        raise Forbidden("this device was revoked; ask your town office to register a new one", code="device_revoked",
                        field="device_id")
    elif device_name:
        device.name = device_name[:100]
    device.last_seen_at = now
    token = secrets.token_urlsafe(32)
    ttl = timedelta(hours=settings.token_ttl_hours)
    session.add(AuthToken(token_hash=token_digest(token, settings.secret_key), user_id=user.id, device_id=device.id,
                          created_at=now, expires_at=now + ttl))
    return IssuedToken(token=token, expires_in=int(ttl.total_seconds()), user=user, device=device)


_TOKEN_ROWS = (  # built once, like every statement of a request that each request makes
    select(AuthToken, User, Device, OrgUnit)
    .join(User, User.id == AuthToken.user_id)
    .join(Device, Device.id == AuthToken.device_id)
    .join(OrgUnit, OrgUnit.id == User.org_unit_id)
    .where(AuthToken.token_hash == sa.bindparam("token_hash"))
)


def authenticate(session: Session, settings: Settings, token: str) -> tuple[User, Device, AuthToken, OrgUnit]:
    """The token's user, device and token row, and the user's unit (what their scope starts from: one
    statement for the lot, where the scope used to load the unit with one of its own)."""
    row = session.exec(_TOKEN_ROWS, params={"token_hash": token_digest(token, settings.secret_key)}).first()
    if row is None:
        raise Unauthorized("invalid token", headers={"WWW-Authenticate": "Bearer"})
    tok, user, device, unit = row
    _check_token(tok.revoked_at, tok.expires_at, device.revoked_at, user.is_active)
    return user, device, tok, unit


_TOKEN_IDS = (  # see token_ids_query
    sa.select(AuthToken.revoked_at, AuthToken.expires_at, User.id, User.is_active, Device.id, Device.revoked_at)
    .join(User, User.id == AuthToken.user_id)
    .join(Device, Device.id == AuthToken.device_id)
    .where(AuthToken.token_hash == sa.bindparam("token_hash"))
)


def token_ids_query(*extra: sa.ColumnElement) -> sa.Select:
    """The token check without ORM objects (parameter ``token_hash``: token_digest of the token), with
    the same refusals as authenticate(), and ``extra`` columns after its own: a photo upload needs the
    ids and whether its photo is stored, in one statement, and it is the busiest authenticated call.
    Read its rows with ids_of_token_row."""
    return _TOKEN_IDS.add_columns(*extra)


def ids_of_token_row(row: sa.Row | None) -> tuple[str, str]:
    """(user id, device id) from a row of token_ids_query (None: no such token), or 401."""
    if row is None:
        raise Unauthorized("invalid token", headers={"WWW-Authenticate": "Bearer"})
    tok_revoked, expires_at, user_id, user_active, device_id, device_revoked = row[:6]
    _check_token(tok_revoked, expires_at, device_revoked, user_active)
    return user_id, device_id


def _check_token(revoked_at: datetime | None, expires_at: datetime, device_revoked_at: datetime | None,
                 user_active: bool) -> None:
    if revoked_at is not None or expires_at <= utcnow():
        raise Unauthorized("token expired or revoked", headers={"WWW-Authenticate": "Bearer"})
    if device_revoked_at is not None:
        raise Unauthorized("device revoked", code="device_revoked", headers={"WWW-Authenticate": "Bearer"})
    if not user_active:
        raise Unauthorized("user deactivated", code="user_inactive", headers={"WWW-Authenticate": "Bearer"})


def revoke_token(session: Session, tok: AuthToken) -> None:
    tok.revoked_at = utcnow()
    session.add(tok)


def revoke_device(session: Session, device: Device) -> None:
    now = utcnow()
    device.revoked_at = now
    session.add(device)
    session.execute(
        sa.update(AuthToken).where(AuthToken.device_id == device.id, AuthToken.revoked_at.is_(None)).values(revoked_at=now)
    )


def deactivate_user(session: Session, user: User) -> None:
    now = utcnow()
    user.is_active = False
    session.add(user)
    session.execute(
        sa.update(AuthToken).where(AuthToken.user_id == user.id, AuthToken.revoked_at.is_(None)).values(revoked_at=now)
    )


# -- changing and resetting a password -----------------------------------------------------------


def find_user(session: Session, username: str) -> User | None:
    """The account of this username, typed in any case (as a login finds it)."""
    return session.exec(select(User).where(_same_username(username))).first()


@dataclass
class PasswordSet:
    """What a password change did, for the log line written after it commits (log_password_set)."""
    user_id: str
    username: str
    tokens_revoked: int


def _revoke_tokens(session: Session, user_id: str, now: datetime, *, keep_token_id: str | None = None) -> int:
    q = sa.update(AuthToken).where(AuthToken.user_id == user_id, AuthToken.revoked_at.is_(None))
    if keep_token_id is not None:
        q = q.where(AuthToken.id != keep_token_id)
    return session.execute(q.values(revoked_at=now)).rowcount


def require_live_token(session: Session, token_id: str) -> None:
    """Write side: the token a request was authenticated with, read again on the write transaction (it
    may have been revoked, its device or user too, since the read one), or 401 as authenticate() says."""
    row = session.exec(
        select(AuthToken.revoked_at, AuthToken.expires_at, Device.revoked_at, User.is_active)
        .join(User, User.id == AuthToken.user_id).join(Device, Device.id == AuthToken.device_id)
        .where(AuthToken.id == token_id)
    ).first()
    if row is None:
        raise Unauthorized("invalid token", headers={"WWW-Authenticate": "Bearer"})
    _check_token(*row)


def change_own_password(session: Session, *, user_id: str, token_id: str, verified_hash: str, new_hash: str,
                        address: str, now: datetime) -> PasswordSet:
    """Write, once the current password was verified against ``verified_hash`` and the new one hashed (both
    off the write lock): the new hash, and every token of the user revoked but ``token_id``, the one asking
    (the user's other phones log in again; this one goes on). The attempt begin_attempt counted is
    forgiven, for this address only, as a login's success does. 401 if the token was revoked meanwhile;
    409 password_changed if the stored hash changed since it was verified."""
    require_live_token(session, token_id)
    user = session.get(User, user_id, with_for_update={"key_share": True})  # two changes at once take turns
    if user.password_hash != verified_hash:
        # (another change with this same token, or a login from elsewhere re-hashing it: see needs_rehash)
        raise Conflict("the stored password changed while this request was being checked; send it again",
                       code="password_changed")
    user.password_hash = new_hash
    session.add(user)
    revoked = _revoke_tokens(session, user.id, now, keep_token_id=token_id)
    session.execute(sa.delete(LoginFailure).where(LoginFailure.username == username_key(user.username)[:64],
                                                  LoginFailure.address == address[:64]))
    return PasswordSet(user_id=user.id, username=user.username, tokens_revoked=revoked)


def reset_password(session: Session, *, user_id: str, new_hash: str, now: datetime) -> PasswordSet:
    """Write: the password the county admin sets for a user who forgot theirs (the API or `firegrid user
    set-password`). Every token of the user is revoked: all their phones log in again, with the new password,
    and a phone lost with the old one written down is locked out. Their failed logins are cleared, from
    every address: mostly their own tries of the forgotten password, and all made against a password that
    is no longer theirs."""
    user = session.get(User, user_id, with_for_update={"key_share": True})
    if user is None:
        raise NotFound(f"user {user_id} not found")
    user.password_hash = new_hash
    session.add(user)
    revoked = _revoke_tokens(session, user.id, now)
    session.execute(sa.delete(LoginFailure).where(LoginFailure.username == username_key(user.username)[:64]))
    return PasswordSet(user_id=user.id, username=user.username, tokens_revoked=revoked)


def log_password_set(change: PasswordSet, *, by: str | None) -> None:
    """INFO on the `firegrid` logger, after the commit: whose password, who changed it (``by``; None: the
    user themselves), how many tokens went. Never the password."""
    if by is None:
        log.info("password changed: user %r (%s) changed their own password; %d other tokens revoked",
                 change.username, change.user_id, change.tokens_revoked)
    else:
        log.info("password set: %s set the password of user %r (%s); %d tokens revoked, failed logins cleared",
                 by, change.username, change.user_id, change.tokens_revoked)
