"""Premises use cases: list/search, create, update, CSV import."""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import Session, select

from app.audit.service import Actor
from app.auth.models import Role
from app.auth.scope import ROLE_TIER, Scope
from app.db import utcnow
from app.errors import Conflict, Forbidden, Invalid, NotFound, PreconditionFailed, bindable
from app.org.models import OrgUnit, UnitKind
from app.places.models import Place, PlaceCreate, PlaceUpdate
from app.referrals.routing import TIER_ORDER, supervising_tier
from app.sync import feed

if TYPE_CHECKING:
    from app.referrals.service import Rules

MAX_PAGE = 200


def _resolve_grid(session: Session, scope: Scope | None, grid_id: str) -> OrgUnit:
    grid = session.get(OrgUnit, grid_id)
    if grid is None or grid.kind != UnitKind.grid or (scope is not None and not scope.sees_grid(grid)):
        raise Invalid(f"grid_id: no grid {grid_id!r} in your jurisdiction", code="unknown_grid", field="grid_id")
    return grid


def _resolve_regulator(session: Session, regulator_id: str | None, grid: OrgUnit) -> None:
    """A premises' sector regulator is one of its own county's: copied on the premises' hazards, another
    county's would hear of premises outside its remit."""
    if regulator_id is None:
        return
    unit = session.get(OrgUnit, regulator_id)
    if unit is None or unit.kind != UnitKind.sector_regulator or unit.county_id != grid.county_id:
        raise Invalid(f"sector_regulator_id: no sector regulator {regulator_id!r} in the premises' county",
                      code="unknown_regulator", field="sector_regulator_id")


def require_whole_position(lat: float | None, lon: float | None) -> None:
    """A desk's or a sheet's premises: both coordinates or neither, as the premises will have them (a latitude
    without its longitude is no position; field_versions counts the two as one, "location"). A phone's edit
    is not refused for it: premises stored before this check may hold half a position, and a phone sends
    its copy back whole; refused, its edit would be stuck on it for ever."""
    if (lat is None) != (lon is None):
        raise Invalid("lat and lon: give both or neither (a position is the two together)", code="validation_error",
                      field="lat" if lat is None else "lon")


def create_place(session: Session, scope: Scope | None, data: PlaceCreate, *, now: datetime | None = None) -> Place:
    """``now``: the app's clock, as every other row of the request is stamped (None: the wall clock)."""
    grid = _resolve_grid(session, scope, data.grid_id)
    _resolve_regulator(session, data.sector_regulator_id, grid)
    values = data.model_dump(exclude_none=True)
    if data.id and session.get(Place, data.id) is not None:
        raise Conflict(f"place {data.id} already exists", code="place_exists")
    if now is not None:
        values.update(created_at=now, updated_at=now)
    place = Place(**values, town_id=grid.town_id, community_id=grid.community_id)
    if not data.id:
        session.add(place)
        session.flush()
        return place
    # a client's id: the same premises sent twice at once (a desk's retry, PostgreSQL) both found it absent
    savepoint = session.begin_nested()
    try:
        session.add(place)
        session.flush()
    except sa.exc.IntegrityError:
        savepoint.rollback()
        raise Conflict(f"place {data.id} already exists", code="place_exists") from None
    savepoint.commit()
    return place


def update_place(session: Session, scope: Scope | None, place: Place, data: PlaceUpdate, *,
                 rules: Rules | None = None, actor: Actor | None = None, now: datetime | None = None,
                 offline_device_id: str | None = None, whole_position: bool = False,
                 if_version: Callable[[], Collection[int] | None] | None = None) -> Place:
    """Change a premises. Moved to another town or community, its hazards go to the bodies
    whose jurisdiction it now lies in; reclassed, those below the tier the policy names for the new class
    go up to it (never down): both by referrals.service.relocate, planned before anything changes, which
    needs ``rules``. ``scope``: the caller's (None: the CSV import, the admin's), who may change only what
    it may (a police station or the brigade the class alone; a class a lower tier supervises only the body
    that supervises the premises now, one above it, or the admin). ``actor``: who changed it, the system
    if None. ``offline_device_id``: the phone whose synced edit this is (Place.field_versions: a later edit
    it made offline has seen this one); an edit at a desk, online, names none. ``if_version``: reads the
    versions the caller's If-Match names (app/conditional.py; None: any), after the 403s, so that a malformed
    header (422) does not outrank them either: 412 if the premises, as locked, is at none of them."""
    from app.referrals.service import plan_relocation, relocate

    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:
        # the premises as it is now, locked: a concurrent move planned from the row as it was would
        # write only the columns it saw change, leaving grid, town and the hazards' holders at odds
        # (SQLite's BEGIN IMMEDIATE already serialises writers)
        # FOR NO KEY UPDATE: a hazard written meanwhile checks its foreign key with FOR KEY SHARE, which FOR
        # UPDATE would block: the writer, holding its hazard, would wait on this premises while this edit
        # waited on that hazard, a deadlock
        session.refresh(place, with_for_update={"key_share": True})
        if scope is not None and not scope.sees_place(place):
            # moved out of the caller's jurisdiction between the caller's read and this lock: not theirs to
            # edit, nor to move back (SQLite's writer read it under its write lock already)
            raise NotFound(f"place {place.id} not found")
    changes = data.model_dump(exclude_unset=True)
    if postgres and (changes.get("grid_id", place.grid_id) != place.grid_id
                     or changes.get("place_class", place.place_class) != place.place_class):
        # a move or reclass changes the premises' hazards: locked now, before the relocation is planned from them
        _lock_hazards_at(session, [place.id])
    if whole_position:  # a desk's or a sheet's edit (require_whole_position): the position it leaves
        require_whole_position(changes.get("lat", place.lat), changes.get("lon", place.lon))
    if scope is not None:
        scope.require_place_editor({k for k, v in changes.items() if getattr(place, k) != v})
    if "name" in changes and (changes["name"] is None or not changes["name"].strip()):
        raise Invalid("name: must not be blank", code="validation_error", field="name")
    if "place_class" in changes and changes["place_class"] is None:
        raise Invalid("place_class: required", code="validation_error", field="place_class")
    new_class = changes.get("place_class", place.place_class)
    reclassed = new_class != place.place_class
    if reclassed and scope is not None:
        _may_reclass(session, scope, place, new_class, rules)
    expected = if_version() if if_version is not None else None
    if expected is not None and place.version not in expected:
        # after the 403s, whatever the header says; on the row as locked, before anything is written: a second
        # PATCH with the same If-Match waits for the first, then sees its version
        raise PreconditionFailed(f"place {place.id} has changed since you read it: it is at version {place.version} "
                                 "now; read it again before you change it", current_version=place.version)
    relocation = None
    if "grid_id" in changes:
        if changes["grid_id"] is None:
            raise Invalid("grid_id: a place must stay in a grid", code="validation_error", field="grid_id")
        grid = _resolve_grid(session, scope, changes["grid_id"])
    # a phone names the grid (and may name the regulator) with every edit: only a real change counts, so
    # an edit that moves nothing neither reads the inspections nor answers for a regulator set before
    moved = "grid_id" in changes and changes["grid_id"] != place.grid_id
    regulator = changes.get("sector_regulator_id", place.sector_regulator_id)
    if regulator is not None and regulator != place.sector_regulator_id:
        _resolve_regulator(session, regulator, grid if moved else session.get(OrgUnit, place.grid_id))
    elif regulator is not None and moved and grid.county_id != session.get(OrgUnit, place.grid_id).county_id:
        _resolve_regulator(session, regulator, grid)  # the one it has, left in the county it leaves
    location = (place.town_id, place.community_id)
    to_location = (grid.town_id, grid.community_id) if "grid_id" in changes else location
    if to_location != location or reclassed:
        # checked before anything changes: a move the new location cannot take, or a class whose tier has
        # no unit there, changes nothing. One plan for both: a hazard goes where the new class at the new
        # location puts it, in one hop
        relocation = plan_relocation(
            session, place.id, location, to_location, rules=rules, place_class=new_class,
            sector_regulator_id=changes.get("sector_regulator_id", place.sector_regulator_id), now=now,
            from_class=place.place_class)
        if relocation is not None and rules is None:
            raise TypeError("update_place: moving or reclassing a premises with hazards needs the rules")
    changed = {versioned_as(key) for key, value in changes.items() if getattr(place, key) != value}
    if not changed:
        # nothing to write: a phone sends the whole record with every edit, and a record sent back as it is
        # must not make a new version, nor a change every phone of the grid then pulls
        return place
    if "grid_id" in changes:
        place.town_id, place.community_id = grid.town_id, grid.community_id
    for key, value in changes.items():
        setattr(place, key, value)
    place.updated_at = now or utcnow()
    place.version += 1
    by = [place.version, offline_device_id]  # a new dict: the JSON column sees no change made inside the old one
    place.field_versions = {**(place.field_versions or {}), **{key: by for key in changed}}
    followed: list[str] = []
    if "grid_id" in changes or "place_class" in changes:
        with session.no_autoflush:  # the place's change is flushed once, with its hazards' and inspections'
            followed = _hazards_follow(session, place)
            if moved:
                # an inspection the same push submitted is the phone's own write, not echoed to it unless
                # marked: it would never hear that the server moved it
                feed.mark_news(session, "inspection", _inspections_follow(session, place))
    session.add(place)
    session.flush()
    if relocation is not None:
        relocate(session, rules, relocation, actor or Actor.system(), now or utcnow())
        followed = [*followed, *relocation.hazard_ids]
    feed.mark_news(session, "hazard", followed)  # as the inspections: a hazard reported earlier in the push
    return place


def versioned_as(field: str) -> str:
    """The key of Place.field_versions a field's changes are counted under: a position is one thing."""
    return "location" if field in ("lat", "lon") else field


def may_reclass(session: Session, scope: Scope, place: Place, to_class: str, rules: Rules | None) -> bool:
    """A class a lower tier supervises (a key unit made a rental: the brigade's premises become the town
    office's, and so does every hazard found there from now on) only by the body that supervises the
    premises now or one above it, or the county admin. Raising it, or a class of the same tier, is open to
    whoever may edit the premises: it sends hazards to a higher body, the safe direction. The tiers are
    the policy's (routing.supervising_tier); a class the policy does not know counts as the lowest.

    "The body that supervises it" is a unit, not a tier: a town has several police stations, and a
    key_unit_3 in one's beat is not another's to lower."""
    if rules is None:
        raise TypeError("update_place: reclassing a premises for a caller needs the rules")
    from_tier, to_tier = _class_tiers(place.place_class, to_class, rules)
    if TIER_ORDER.index(to_tier) >= TIER_ORDER.index(from_tier):
        return True
    if not scope.may_lower_class_from(from_tier):
        return False
    if scope.role == Role.admin or ROLE_TIER.get(scope.role) != from_tier:
        return True  # the admin, or a tier above the supervising one: the county's brigade
    from app.referrals.service import tier_units

    return tier_units(session, place.town_id, place.community_id).get(from_tier) == scope.unit_id


def _class_tiers(from_class: str, to_class: str, rules: Rules) -> tuple[str, str]:
    return (supervising_tier(from_class, rules.policy) or TIER_ORDER[0],
            supervising_tier(to_class, rules.policy) or TIER_ORDER[0])


def _may_reclass(session: Session, scope: Scope, place: Place, to_class: str, rules: Rules | None) -> None:
    """may_reclass, or 403 ``not_allowed`` naming place_class."""
    if may_reclass(session, scope, place, to_class, rules):
        return
    from_class = place.place_class
    from_tier, to_tier = _class_tiers(from_class, to_class, rules)
    raise Forbidden(f"place_class: a {from_class} premises is supervised by the {from_tier} of its area; making "
                    f"it a {to_class}, which the {to_tier} supervises, is for that {from_tier} (or a body above "
                    "it) or the county admin", code="not_allowed", field="place_class",
                    from_tier=from_tier, to_tier=to_tier)


def _hazards_follow(session: Session, place: Place) -> list[str]:
    """A premises' hazards carry where it is and its class: moved, the new grid's worker re-inspects
    them and the old grid's phones get tombstones through the change feed (ORM updates, so the feed
    sees them); reclassed, the queue's class filter finds them under the class they are shown with."""
    from app.hazards.models import Hazard

    where = (place.grid_id, place.community_id, place.town_id, place.place_class)
    changed = []
    for h in session.exec(select(Hazard).where(Hazard.place_id == place.id)).all():
        if (h.grid_id, h.community_id, h.town_id, h.place_class) != where:
            h.grid_id, h.community_id, h.town_id, h.place_class = where
            h.version += 1
            session.add(h)
            changed.append(h.id)
    return changed


def _inspections_follow(session: Session, place: Place) -> list[str]:
    """A premises' inspections (its 巡查记录) carry where it is, as its hazards do: its file goes with it,
    so the new grid's worker sees when it was last inspected and the inspection its hazards came from,
    and the old grid's phones get tombstones (ORM updates: the change feed sees them)."""
    from app.inspections.models import Inspection

    moved = []
    for i in session.exec(select(Inspection).where(
            Inspection.place_id == place.id,
            (Inspection.grid_id != place.grid_id) | (Inspection.town_id != place.town_id))).all():
        i.grid_id, i.town_id = place.grid_id, place.town_id
        session.add(i)
        moved.append(i.id)
    return moved


def _lock_hazards_at(session: Session, place_ids: list[str]) -> None:
    """PostgreSQL: the hazards of these premises, locked in id order (as a desk action locks them) and read as
    they are now. After the premises themselves: every writer takes premises before hazards."""
    from app.hazards.models import Hazard

    session.exec(select(Hazard).where(Hazard.place_id.in_(place_ids)).order_by(Hazard.id)
                 .with_for_update().execution_options(populate_existing=True)).all()


def _matching_place(session: Session, data: PlaceCreate) -> Place | None:
    """The premises a sheet's row means: by its id, else by what the sheet says (without an address, by name
    alone: an address a phone filled in since must not make the row a second premises). More than one match
    is not guessed at: Invalid."""
    if data.id:
        return session.get(Place, data.id)
    same = [Place.grid_id == data.grid_id, Place.name == data.name]
    if data.address:  # an address column left empty says nothing: one a phone filled in since still matches
        same.append(Place.address == data.address)
    found = session.exec(select(Place).where(*same).order_by(Place.id).limit(2)).all()
    if len(found) > 1:
        raise Invalid("more than one premises of this grid has this name" + (" and address" if data.address else "")
                      + ": give the row the id of the one it means")
    return found[0] if found else None


def _encode_cursor(values: list) -> str:
    return base64.urlsafe_b64encode(json.dumps(values, ensure_ascii=False).encode()).decode()


def _decode_cursor(cursor: str) -> list:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        # (name, id): anything else would be bound into the keyset query as it is (a 500 there)
        if not isinstance(values, list) or len(values) != 2 or not all(bindable(v) for v in values):
            raise ValueError
        return values
    except (ValueError, RecursionError):
        raise Invalid("cursor: not a cursor this server issued", code="bad_cursor", field="cursor") from None


def list_places(
    session: Session, scope: Scope, *, q: str | None = None, grid_id: str | None = None,
    place_class: str | None = None, cursor: str | None = None, limit: int = 50,
) -> tuple[list[Place], str | None]:
    """Keyset pagination on (name, id): deep pages cost the same as the first."""
    stmt = select(Place).where(scope.place_clause())
    if q:
        pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        stmt = stmt.where(Place.name.like(pattern, escape="\\") | Place.address.like(pattern, escape="\\"))
    if grid_id:
        stmt = stmt.where(Place.grid_id == grid_id)
    if place_class:
        stmt = stmt.where(Place.place_class == place_class)
    if cursor:
        name, pid = _decode_cursor(cursor)
        stmt = stmt.where(sa.tuple_(Place.name, Place.id) > sa.tuple_(sa.literal(name), sa.literal(pid)))
    limit = max(1, min(limit, MAX_PAGE))
    rows = session.exec(stmt.order_by(Place.name, Place.id).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (_encode_cursor([rows[-1].name, rows[-1].id]) if more and rows else None)


# CSV import ------------------------------------------------------------------------------

CSV_COLUMNS = ("name", "address", "grid", "place_class", "lat", "lon", "owner_name", "owner_phone", "sector_regulator")


@dataclass
class RowError:
    row: int  # 1-based line number in the file, header = 1
    column: str
    reason: str


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    errors: list[RowError] = field(default_factory=list)

    @property
    def rejected_rows(self) -> int:
        return len({e.row for e in self.errors})


# the model's field names that the CSV calls otherwise
_CSV_COLUMN_OF = {"grid_id": "grid", "sector_regulator_id": "sector_regulator"}


def _unit_by_code_or_id(session: Session, value: str, kind: UnitKind) -> OrgUnit | None:
    return session.exec(
        select(OrgUnit).where(OrgUnit.kind == kind, (OrgUnit.code == value) | (OrgUnit.id == value))
    ).first()


def import_places_csv(session: Session, path: Path, rules: Rules | None = None) -> ImportReport:
    """Import good rows, none of the bad; every bad row is reported with its line, column and reason.

    Re-importing the same file updates rather than duplicates: a row matches an existing place by
    its `id` column when given, else by (grid, name, address), and takes the row's non-empty cells only: a
    column the sheet lacks or a cell left empty keeps what the premises has. A row that moves a premises to
    another town or community (a boundary redrawn) takes its hazards to the new location's bodies
    (``rules`` needed for that); one the new location cannot take is reported and skipped.
    """
    report = ImportReport()
    try:
        text = path.read_text(encoding="utf-8-sig")  # Excel writes a BOM
    except UnicodeDecodeError:
        report.errors.append(RowError(1, "*", "file is not UTF-8 text (save the sheet as CSV UTF-8)"))
        return report
    # newline="": the csv module splits the records itself, at \n, \r or \r\n only. str.splitlines() also cut
    # at U+2028, U+0085 (NEL) and the like inside a name, and dropped a quoted field's own line break.
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in ("name", "grid", "place_class") if c not in header]
    unknown = [c for c in header if c not in CSV_COLUMNS and c != "id"]
    if missing or unknown:
        for c in missing:
            report.errors.append(RowError(1, c, "required column is missing from the header"))
        for c in unknown:
            report.errors.append(RowError(1, c, f"unknown column (expected: id, {', '.join(CSV_COLUMNS)})"))
        return report
    next_line = reader.line_num + 1
    records = iter(reader)
    planned: list[tuple[int, dict[str, str], PlaceCreate, Place | None]] = []  # good rows, matched
    while True:
        try:
            raw = next(records)
        except StopIteration:
            break
        except csv.Error as exc:  # past this point the records cannot be told apart: the rows before stand
            report.errors.append(RowError(next_line, "*", f"the file cannot be read from here on ({exc}): "
                                                          "a quote opened and never closed?"))
            break
        # the line the record starts on: a quoted field may span lines
        line_no, next_line = next_line, reader.line_num + 1
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if None in raw:
            report.errors.append(RowError(line_no, "*", "more fields than columns in the header"))
            continue
        # PostgreSQL refuses a NUL in any text it is sent, a lookup's too (the whole import failed); SQLite
        # would store it
        with_nul = [k for k, v in row.items() if "\x00" in v]
        if with_nul:
            for k in with_nul:
                report.errors.append(RowError(line_no, k, "must not contain the NUL character (U+0000)"))
            continue
        errors_before = len(report.errors)
        grid = _unit_by_code_or_id(session, row.get("grid", ""), UnitKind.grid) if row.get("grid") else None
        if grid is None:
            report.errors.append(RowError(line_no, "grid", f"no grid with code or id {row.get('grid')!r}"))
        regulator_id = None
        if row.get("sector_regulator"):
            reg = _unit_by_code_or_id(session, row["sector_regulator"], UnitKind.sector_regulator)
            if reg is None:
                report.errors.append(RowError(line_no, "sector_regulator", f"no sector regulator {row['sector_regulator']!r}"))
            else:
                regulator_id = reg.id
        values = {k: row.get(k) or None for k in ("name", "address", "place_class", "lat", "lon", "owner_name", "owner_phone")}
        values = {k: v for k, v in values.items() if v is not None}
        try:
            data = PlaceCreate.model_validate(
                {**values, "grid_id": grid.id if grid else "-", "sector_regulator_id": regulator_id, "id": row.get("id") or None}
            )
        except ValidationError as exc:
            for e in exc.errors():
                col = str(e["loc"][0]) if e["loc"] else "*"
                report.errors.append(RowError(line_no, col if col != "grid_id" else "grid", e["msg"]))
            continue
        if len(report.errors) > errors_before:
            continue
        try:
            existing = _matching_place(session, data)
        except Invalid as exc:
            report.errors.append(RowError(line_no, "name", exc.message))
            continue
        planned.append((line_no, row, data, existing))
    # PostgreSQL: the premises the sheet changes, locked before any is changed, in id order, and then their
    # hazards, as every writer takes them (premises before hazards, each in id order): row by row, in the
    # sheet's order, a push editing two of them the other way round deadlocked with the import
    if planned and session.get_bind().dialect.name == "postgresql":
        ids = sorted({e.id for *_, e in planned if e is not None})
        for i in range(0, len(ids), 1000):
            session.exec(select(Place).where(Place.id.in_(ids[i:i + 1000])).order_by(Place.id)
                         .with_for_update(key_share=True).execution_options(populate_existing=True)).all()
        for i in range(0, len(ids), 1000):
            _lock_hazards_at(session, ids[i:i + 1000])
    for line_no, row, data, existing in planned:
        if existing is None:
            try:  # a row above made it: this row updates it, as a second import would
                existing = _matching_place(session, data)
            except Invalid as exc:
                report.errors.append(RowError(line_no, "name", exc.message))
                continue
        try:  # a row refused here changed nothing (a move the new town cannot take, another county's regulator)
            if existing is not None:
                # only what the row says: a column the sheet lacks or a cell left empty keeps what the premises
                # has (its coordinates as a phone took them in the field, an owner's phone, its regulator)
                given = {f for f in PlaceUpdate.model_fields if row.get(_CSV_COLUMN_OF.get(f, f))}
                update_place(session, None, existing, PlaceUpdate(**data.model_dump(include=given)), rules=rules,
                             whole_position=True)
            else:
                require_whole_position(data.lat, data.lon)
                create_place(session, None, data)
        except Invalid as exc:
            column = exc.extra.get("field") or "*"
            report.errors.append(RowError(line_no, _CSV_COLUMN_OF.get(column, column), exc.message))
            continue
        if existing is not None:
            report.updated += 1
        else:
            report.created += 1
    return report
