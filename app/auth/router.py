from typing import Annotated

from fastapi import APIRouter, Form, Request
from sqlmodel import select

from app.auth import service
from app.auth.deps import CurrentPrincipal, SettingsDep
from app.auth.models import Device, Role, User
from app.auth.schemas import (DevicePublic, MePublic, NoNul, PasswordChange, PasswordReset, TokenResponse, UserCreate,
                              UserPublic)
from app.db import SessionDep, utcnow
from app.errors import Forbidden, Invalid, NotFound, Unauthorized
from app.org.models import OrgUnit
from app.org.service import require_unit

router = APIRouter(prefix="/api/v1", tags=["auth"])


@router.post("/auth/token", response_model=TokenResponse)
def issue_token(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    username: Annotated[str, Form(max_length=64), NoNul],
    password: Annotated[str, Form(max_length=service.MAX_PASSWORD_LENGTH)],  # hashed, never stored: a NUL is harmless
    device_id: Annotated[str | None, Form(max_length=128), NoNul] = None,
    device_name: Annotated[str | None, Form(max_length=100), NoNul] = None,
):
    """The password is checked on a read transaction: argon2's ~30 ms never holds SQLite's write lock."""
    address = request.client.host if request.client else "unknown"
    now = utcnow()
    with request.app.state.db.session(write=True) as attempt:  # 429, or counted before the password is tried
        service.begin_attempt(attempt, settings, username, address, now)
        attempt.commit()
    user = service.check_credentials(session, username=username, password=password)
    verified_hash = user.password_hash if user is not None else None  # what the password was checked against
    session.commit()  # end the read transaction before writing (it has nothing to commit)
    if user is None:  # counted already, as a failure
        raise Unauthorized("wrong username or password", code="bad_credentials")
    # hashed again out here, not under the write lock, if made with other settings (once per user)
    rehashed = service.hash_password(password) if service.needs_rehash(user.password_hash) else None
    with request.app.state.db.session(write=True) as writer:
        issued = service.issue_token(writer, settings, user.id, device_key=device_id, device_name=device_name,
                                     now=now, address=address, rehashed=rehashed, verified_hash=verified_hash)
        writer.commit()
    return TokenResponse(access_token=issued.token, expires_in=issued.expires_in, device_id=issued.device.id)


issue_token.opens_own_write_transaction = True


@router.post("/auth/logout", status_code=204)
def logout(p: CurrentPrincipal, session: SessionDep):
    service.revoke_token(session, p.token)


@router.get("/me", response_model=MePublic)
def me(p: CurrentPrincipal, session: SessionDep):
    unit = session.get(OrgUnit, p.user.org_unit_id)
    scope = p.scope
    return MePublic(
        id=p.user.id, username=p.user.username, display_name=p.user.display_name, role=p.user.role,
        org_unit_id=unit.id, org_unit_name=unit.name, org_unit_kind=unit.kind, town_id=unit.town_id,
        county_id=unit.county_id if unit.county_id else (unit.id if unit.kind == "county" else None),
        grid_ids=sorted(scope.grid_ids) if scope.grid_ids is not None else None, device_id=p.device.id,
    )


@router.post("/me/password", status_code=204)
def change_password(body: PasswordChange, request: Request, p: CurrentPrincipal, session: SessionDep,
                    settings: SettingsDep):
    """The signed-in user changes their own password. The current one is checked as a login's is: counted
    as a failed login for this user and address first (429 at the limit: a stolen token cannot guess at
    full speed), then verified off the write lock; wrong, a 403 wrong_password (not a 401: the token is
    fine, and a client would take a 401 for "log in again"). Then every other token of the user is
    revoked; this one goes on."""
    service.check_password_rules(body.new_password, field="new_password")
    if body.new_password == body.current_password:
        raise Invalid("new_password must differ from the current password", code="same_password",
                      field="new_password")
    user_id, username, token_id, stored_hash = p.user.id, p.user.username, p.token.id, p.user.password_hash
    session.commit()  # end the read transaction before writing (it has nothing to commit)
    address = request.client.host if request.client else "unknown"
    now = utcnow()
    with request.app.state.db.session(write=True) as attempt:  # 429, or counted before the password is tried
        service.begin_attempt(attempt, settings, username, address, now)
        attempt.commit()
    if not service.verify_password(stored_hash, body.current_password):  # counted already, as a failure
        raise Forbidden("the current password is wrong", code="wrong_password", field="current_password")
    new_hash = service.hash_password(body.new_password)  # argon2 out here too, not under the write lock
    with request.app.state.db.session(write=True) as writer:
        change = service.change_own_password(writer, user_id=user_id, token_id=token_id, verified_hash=stored_hash,
                                             new_hash=new_hash, address=address, now=now)
        writer.commit()
    service.log_password_set(change, by=None)


change_password.opens_own_write_transaction = True


def _get(session, model, id_: str):
    # a NUL cannot be in any id, and PostgreSQL answers a lookup of one with an error (a 500)
    return None if "\x00" in id_ else session.get(model, id_)


def _visible_user(session, p, user_id: str) -> User:
    user = _get(session, User, user_id)
    if user is None or not p.scope.sees_unit(require_unit(session, user.org_unit_id)):
        raise NotFound(f"user {user_id} not found")
    return user


@router.get("/devices", response_model=list[DevicePublic])
def list_devices(p: CurrentPrincipal, session: SessionDep):
    """Your own devices; a town office sees those of its towns' staff (not the county's), an admin all."""
    q = select(Device).join(User, User.id == Device.user_id)
    if p.user.role in (Role.admin, Role.town_office):
        q = q.join(OrgUnit, OrgUnit.id == User.org_unit_id).where(p.scope.staff_clause())
    else:
        q = q.where(Device.user_id == p.user.id)
    return session.exec(q.order_by(Device.created_at)).all()


@router.post("/devices/{device_id}/revoke", response_model=DevicePublic)
def revoke_device(device_id: str, p: CurrentPrincipal, session: SessionDep):
    device = _get(session, Device, device_id)
    if device is None:
        raise NotFound(f"device {device_id} not found")
    if device.user_id != p.user.id:
        owner = _visible_user(session, p, device.user_id)  # 404 outside scope
        p.require_role(Role.admin, Role.town_office)
        if not p.scope.answers_for_staff_of(require_unit(session, owner.org_unit_id)):
            raise NotFound(f"device {device_id} not found")  # not in the caller's list of devices either
    service.revoke_device(session, device)
    return device


@router.post("/users", response_model=UserPublic, status_code=201)
def create_user(body: UserCreate, p: CurrentPrincipal, session: SessionDep):
    p.require_role(Role.admin)
    unit = require_unit(session, body.org_unit_id, field="org_unit_id")
    return service.create_user(session, username=body.username, password=body.password, role=body.role, unit=unit,
                               display_name=body.display_name)


@router.post("/users/{user_id}/deactivate", response_model=UserPublic)
def deactivate_user(user_id: str, p: CurrentPrincipal, session: SessionDep):
    user = _visible_user(session, p, user_id)
    p.require_role(Role.admin)
    service.deactivate_user(session, user)
    return user


@router.post("/users/{user_id}/password", status_code=204)
def set_user_password(user_id: str, body: PasswordReset, request: Request, p: CurrentPrincipal, session: SessionDep):
    """The county admin sets a user's password (one forgotten): every token of the user is revoked, so all
    their phones log in again with the new one, and their failed logins are cleared. An admin setting their
    own this way loses the token that asked too: unlike POST /me/password it proves no knowledge of the old
    password, so the session is not carried over; logging in with the new one at once also shows it was
    typed as meant, while the admin still remembers what they typed."""
    user = _visible_user(session, p, user_id)
    p.require_role(Role.admin)
    service.check_password_rules(body.new_password, field="new_password")
    target_id, token_id, by = user.id, p.token.id, f"admin {p.user.username!r} ({p.user.id})"
    session.commit()  # end the read transaction before writing (it has nothing to commit)
    new_hash = service.hash_password(body.new_password)  # argon2 not under the write lock
    with request.app.state.db.session(write=True) as writer:
        service.require_live_token(writer, token_id)  # the admin's, still good on the write transaction
        change = service.reset_password(writer, user_id=target_id, new_hash=new_hash, now=utcnow())
        writer.commit()
    service.log_password_set(change, by=by)


set_user_password.opens_own_write_transaction = True
