"""Building and reading the unit tree."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlmodel import Session, select

from app.errors import Invalid, NotFound
from app.org.models import PARENT_KINDS, OrgUnit, UnitKind

if TYPE_CHECKING:
    from app.places.service import ImportReport


def create_unit(
    session: Session,
    *,
    code: str,
    name: str,
    kind: UnitKind,
    parent: OrgUnit | None,
    enforcement_power: bool = False,
    sector: str | None = None,
    id: str | None = None,
) -> OrgUnit:
    allowed = PARENT_KINDS[kind]
    parent_kind = parent.kind if parent else None
    if parent_kind not in allowed:
        raise Invalid(f"a {kind.value} cannot be placed under {parent_kind or 'nothing'}", code="bad_parent")
    unit = OrgUnit(code=code, name=name, kind=kind, parent_id=parent.id if parent else None,
                   enforcement_power=enforcement_power, sector=sector, **({"id": id} if id else {}))
    if parent is not None:
        unit.county_id = parent.id if parent.kind == UnitKind.county else parent.county_id
        unit.town_id = parent.id if parent.kind == UnitKind.town else parent.town_id
        unit.community_id = parent.id if parent.kind == UnitKind.community else parent.community_id
    session.add(unit)
    session.flush()
    return unit


def get_by_code(session: Session, code: str) -> OrgUnit | None:
    return session.exec(select(OrgUnit).where(OrgUnit.code == code)).first()


def require_unit(session: Session, unit_id: str, *, field: str | None = None) -> OrgUnit:
    """``field``: the request's field that named the unit, when one did (named in the 404)."""
    unit = session.get(OrgUnit, unit_id)
    if unit is None:
        raise NotFound(f"org unit {unit_id} not found", **({"field": field} if field else {}))
    return unit


def town_units(session: Session, town_id: str) -> dict[str, list[OrgUnit]]:
    """The units of a town and its county, by kind: what routing needs to name a holder."""
    town = require_unit(session, town_id)
    rows = session.exec(
        select(OrgUnit).where(
            (OrgUnit.town_id == town_id) | ((OrgUnit.county_id == town.county_id) & (OrgUnit.town_id.is_(None)))
        )
    ).all()
    out: dict[str, list[OrgUnit]] = {}
    for u in sorted(rows, key=lambda u: u.code):
        out.setdefault(u.kind, []).append(u)
    return out


# -- the org tree from a sheet (a production county has no demo data) -------------------------------------

ORG_CSV_COLUMNS = ("code", "kind", "name", "parent", "enforcement_power", "sector", "police_station")
_YES, _NO = ("yes", "y", "true", "1", "是"), ("no", "n", "false", "0", "否", "")


def import_org_csv(session: Session, text: str) -> ImportReport:
    """Units from a UTF-8 CSV: code, kind, name, parent (its code; none for the county), and where they apply
    enforcement_power (a town: yes/no), sector (a sector regulator), police_station (a community: the code of
    the station whose beat covers it). Rows may come in any order: a unit is made once its parent is. A code
    that exists already is updated (name, enforcement power, sector, beat); its kind and parent stay, and a
    row that would change them is refused. Good rows are imported; each bad one is reported and skipped."""
    import csv
    import io

    from app.places.service import ImportReport, RowError  # the sheet imports' report (not at the top: a cycle)

    report = ImportReport()
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in ("code", "kind", "name") if c not in header]
    unknown = [c for c in header if c not in ORG_CSV_COLUMNS]
    if missing or unknown:
        report.errors += [RowError(1, c, "required column is missing from the header") for c in missing]
        report.errors += [RowError(1, c, f"unknown column (expected: {', '.join(ORG_CSV_COLUMNS)})") for c in unknown]
        return report
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        for raw in reader:
            rows.append((reader.line_num, {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k}))
    except csv.Error as exc:
        report.errors.append(RowError(reader.line_num, "*", f"the file cannot be read from here on ({exc})"))
    pending = []
    for line, row in rows:
        problem = _org_row_problem(row)
        if problem:
            report.errors.append(RowError(line, *problem))
        else:
            pending.append((line, row))
    beats: list[tuple[int, OrgUnit, str]] = []  # communities' stations, set once every unit is made
    while pending:  # parents first, whatever the order of the sheet
        waiting = []
        for line, row in pending:
            parent = get_by_code(session, row["parent"]) if row.get("parent") else None
            if row.get("parent") and parent is None:
                waiting.append((line, row))
                continue
            try:
                unit, created = _upsert_unit(session, row, parent)
            except Invalid as exc:
                report.errors.append(RowError(line, exc.extra.get("field") or "*", exc.message))
                continue
            report.created += created
            report.updated += not created
            if row.get("police_station"):
                beats.append((line, unit, row["police_station"]))
        if len(waiting) == len(pending):  # nothing more can be placed
            report.errors += [RowError(line, "parent", f"no unit with code {row['parent']!r} (in the database or "
                                                       "the sheet)") for line, row in waiting]
            break
        pending = waiting
    for line, unit, code in beats:
        station = get_by_code(session, code)
        if station is None or station.kind != UnitKind.police_station or station.town_id != unit.town_id:
            report.errors.append(RowError(line, "police_station", f"no police station {code!r} in the community's town"))
            continue
        unit.police_station_id = station.id
        session.add(unit)
    session.flush()
    return report


def _org_row_problem(row: dict[str, str]) -> tuple[str, str] | None:
    if not row.get("code") or len(row["code"]) > 64:
        return "code", "required, at most 64 characters"
    if not row.get("name") or len(row["name"]) > 200:
        return "name", "required, at most 200 characters"
    if any("\x00" in v for v in row.values()):
        return "*", "must not contain a NUL character"
    try:
        kind = UnitKind(row.get("kind", ""))
    except ValueError:
        return "kind", f"one of {', '.join(k.value for k in UnitKind)}"
    if row.get("enforcement_power", "").lower() not in (*_YES, *_NO):
        return "enforcement_power", "yes or no"
    if row.get("enforcement_power", "").lower() in _YES and kind != UnitKind.town:
        return "enforcement_power", "only a town is granted enforcement power"
    if row.get("police_station") and kind != UnitKind.community:
        return "police_station", "only a community names the station whose beat covers it"
    if row.get("sector") and kind != UnitKind.sector_regulator:
        return "sector", "only a sector regulator has a sector"
    return None


def _upsert_unit(session: Session, row: dict[str, str], parent: OrgUnit | None) -> tuple[OrgUnit, bool]:
    kind = UnitKind(row["kind"])
    power = row.get("enforcement_power", "").lower() in _YES
    unit = get_by_code(session, row["code"])
    if unit is None:
        return create_unit(session, code=row["code"], name=row["name"], kind=kind, parent=parent,
                           enforcement_power=power, sector=row.get("sector") or None), True
    if unit.kind != kind or unit.parent_id != (parent.id if parent else None):
        raise Invalid(f"unit {row['code']!r} exists as a {unit.kind} under another parent or of another kind: an "
                      "import does not move or change units", field="kind")
    unit.name, unit.enforcement_power, unit.sector = row["name"], power, row.get("sector") or None
    session.add(unit)
    return unit, False
