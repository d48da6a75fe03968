"""The `firegrid` console script."""

import zlib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from typer.core import TyperGroup

from app.config import get_settings


def _problem(exc: Exception) -> str | None:
    """What an operator can act on, for an error of configuration or of the database's state; None for any
    other error (a bug: its traceback is what is wanted)."""
    import alembic.util
    import pydantic
    import sqlalchemy as sa

    from app.referrals.policy import PolicyError

    first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, PolicyError):
        return f"the routing policy (FIREGRID_POLICY_FILE): {first}"
    if isinstance(exc, pydantic.ValidationError):
        return f"the settings (FIREGRID_* environment): {exc.errors()[0].get('loc', ('?',))[0]}: {exc.errors()[0]['msg']}"
    if isinstance(exc, alembic.util.CommandError):
        return f"migrate: {first}"
    if isinstance(exc, sa.exc.ArgumentError):
        return f"FIREGRID_DATABASE_URL: {first}"
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.ProgrammingError)):
        hint = (" (run `firegrid migrate` first)" if any(w in first for w in ("no such table", "no such column",
                                                                              "does not exist")) else "")
        return f"the database: {first}{hint}"
    return None


class _Group(TyperGroup):
    """Errors of configuration or of the database's state end in one line saying what is wrong and exit code
    2, not a traceback (which is kept for what is a bug)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, typer.Exit):
            raise
        except Exception as exc:
            problem = _problem(exc)
            if problem is None:
                raise
            typer.echo(f"error: {problem}", err=True)
            raise typer.Exit(2) from None


cli = typer.Typer(help="Firegrid: fire-hazard inspection and referral service.", no_args_is_help=True,
                  pretty_exceptions_enable=False, cls=_Group)
user_cli = typer.Typer(help="Manage user accounts.", no_args_is_help=True)
cli.add_typer(user_cli, name="user")


def _db():
    from app.audit.service import use_settings
    from app.db import Database

    settings = get_settings()
    use_settings(settings)  # commands that write hazards seal their events with the configured key
    return Database.from_settings(settings)


@cli.command()
def migrate(revision: str = "head") -> None:
    """Bring the database schema up to date (Alembic)."""
    from app import migrate as m

    url = get_settings().database_url
    before = m.current_revision(url)
    m.upgrade(url, revision=revision)
    typer.echo(f"database at {revision}")
    if m.crossed(before, m.current_revision(url), m.SEALS_REVISION):
        # the run that adds seals seals the events stored before, once: a later run sealing whatever is
        # unsealed would seal a forgery whose seals were removed. A chain left unsealed is reported, not a
        # failed migration: the server must still start
        _seal(quiet_if_none=True, fail=False)


@cli.command("seed-demo")
def seed_demo() -> None:
    """Create the demo county, towns, units, accounts and premises (dev only; idempotent)."""
    from app.demo import seed_demo as run

    if get_settings().env == "prod":
        typer.echo("refusing: FIREGRID_ENV=prod never gets demo data", err=True)
        raise typer.Exit(2)
    db = _db()
    with db.session(write=True) as session:
        result = run(session)
        session.commit()
    typer.echo(f"demo data ready ({result['places_created']} premises, {result['hazards_created']} hazards created); "
               "password for every account: firegrid-demo")


# glibc, read when the new image starts; each set unless the operator did.
# - MALLOC_ARENA_MAX: glibc gives each thread that allocates a heap ("arena") of its own, up to 8 per
#   CPU, and each keeps freed memory. A worker's threads (the event loop, the sync endpoints' pool, the
#   upload hops) then held 2-4 MB more under a push+photo load (bench/submission_bench.py: peak PSS
#   158-160 MB against 161-162 for both workers), with no CPU difference the benchmarks could see.
# - MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_: a request body arrives as 64 KB pieces that uvicorn
#   joins and the app frees. By default glibc hands such memory back to the kernel (munmap, heap trim)
#   and faults it in afresh for the next request, and on a VM each fresh page can cost a fault in the
#   host. Pieces under 1 MB now come from the heap, which keeps 2 MB of free memory at its top: photos
#   -10 to -20 % server CPU, a phone's sync of 50 inspections with photos +23-28 % per s, for 1-4 MB
#   more PSS (bench/photo_bench.py, bench/submission_bench.py, alternating runs).
SERVE_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "2097152"}


@cli.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    reload: bool = False,
) -> None:
    """Serve the API and the PWA: one uvicorn process, or with --workers N > 1 gunicorn forking N uvicorn
    workers from a master that imported the app once (app/serving.py: they share its memory)."""
    import os
    import sys

    # Become the server's own command line rather than running it from here: the Typer CLI would stay
    # in memory (and uvicorn's spawned workers re-imported it, ~13 MB more, bench/photo_bench.py).
    # -P: the working directory is not put on sys.path, so a stray app/ there cannot shadow ours
    if workers > 1 and not reload:
        args = [sys.executable, "-P", "-m", "app.serving", "--bind", f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                "--workers", str(workers)]
    else:
        # --ws none: the API has no WebSocket route, and the default ("auto") imports a WebSocket library
        # (~1 MB, bench/photo_bench.py)
        args = [sys.executable, "-P", "-m", "uvicorn", "app.asgi:app", "--host", host, "--port", str(port),
                "--proxy-headers", "--ws", "none"]
        if reload:
            args.append("--reload")
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)  # read by glibc when the new image starts
    os.execv(sys.executable, args)


@user_cli.command("create")
def user_create(
    username: str,
    role: Annotated[str, typer.Option(help="grid_worker, town_office, police_station, brigade or admin")],
    unit: Annotated[str, typer.Option(help="code or id of the user's org unit")],
    password: Annotated[Optional[str], typer.Option(help="prompted for when omitted")] = None,
    display_name: str = "",
) -> None:
    """Create a user in a unit."""
    from sqlmodel import select

    from app.auth.models import Role
    from app.auth.service import create_user
    from app.errors import DomainError
    from app.org.models import OrgUnit

    try:
        role_value = Role(role)
    except ValueError:
        typer.echo(f"unknown role {role!r}; choose one of {', '.join(r.value for r in Role)}", err=True)
        raise typer.Exit(2)
    if password is None:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    db = _db()
    with db.session(write=True) as session:
        org = session.exec(select(OrgUnit).where((OrgUnit.code == unit) | (OrgUnit.id == unit))).first()
        if org is None:
            typer.echo(f"no org unit with code or id {unit!r}", err=True)
            raise typer.Exit(2)
        try:
            user = create_user(session, username=username, password=password, role=role_value, unit=org,
                               display_name=display_name)
        except DomainError as exc:
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(2)
        session.commit()
    typer.echo(f"created {user.username} ({user.role.value}) in {org.name}: {user.id}")


@user_cli.command("set-password")
def user_set_password(
    username: str,
    password: Annotated[Optional[str], typer.Option(help="prompted for when omitted")] = None,
) -> None:
    """Set a user's password (the admin who forgot theirs): every token of the user is revoked, so all
    their phones log in again with the new one, and their failed logins are cleared."""
    from app.auth import service
    from app.db import utcnow
    from app.errors import DomainError

    db = _db()
    with db.session() as session:  # found before the password is asked for, and no write lock held while typing
        user = service.find_user(session, username)
    if user is None:
        typer.echo(f"error: no user named {username!r}", err=True)
        raise typer.Exit(1)
    if password is None:
        password = typer.prompt(f"new password for {user.username}", hide_input=True, confirmation_prompt=True)
    try:
        service.check_password_rules(password)
    except DomainError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1)
    new_hash = service.hash_password(password)
    with db.session(write=True) as session:
        change = service.reset_password(session, user_id=user.id, new_hash=new_hash, now=utcnow())
        session.commit()
    service.log_password_set(change, by="the command line (firegrid user set-password)")
    inactive = "" if user.is_active else " (the account is deactivated: it still cannot log in)"
    typer.echo(f"password of {change.username} set; {change.tokens_revoked} tokens revoked, so its devices log in "
               f"again with the new password{inactive}")


def _print_import(file: Path, report) -> None:
    """A sheet import's answer: each bad row as FILE:ROW: column C: reason, the counts, exit 1 if any."""
    for e in report.errors:
        typer.echo(f"{file}:{e.row}: column {e.column}: {e.reason}", err=True)
    typer.echo(f"imported: {report.created} created, {report.updated} updated, {report.rejected_rows} rows rejected")
    if report.errors:
        raise typer.Exit(1)


@cli.command("import-org")
def import_org(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)]) -> None:
    """Import the org tree (county, brigade, towns, offices, police stations, communities, grids, sector
    regulators) from a UTF-8 CSV: code, kind, name, parent[, enforcement_power, sector, police_station]."""
    from app.org.service import import_org_csv

    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        typer.echo(f"{file}:1: column *: file is not UTF-8 text (save the sheet as CSV UTF-8)", err=True)
        raise typer.Exit(1)
    with _db().session(write=True) as session:
        report = import_org_csv(session, text)
        session.commit()
    _print_import(file, report)


@cli.command("import-places")
def import_places(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)]) -> None:
    """Import premises from a UTF-8 CSV; good rows are imported, each bad row is reported and skipped."""
    from app.places.service import import_places_csv
    from app.referrals.policy import DEFAULT_POLICY_PATH, load_policy
    from app.referrals.service import Rules, calendar_for_writing

    db = _db()
    policy = load_policy(get_settings().policy_file or DEFAULT_POLICY_PATH)  # a moved premises' hazards are re-routed
    with db.session(write=True) as session:
        # moved or reclassed premises' hazards restart their clocks: counted with a calendar no save changes meanwhile
        report = import_places_csv(session, file, rules=Rules(policy=policy, calendar=calendar_for_writing(session)))
        session.commit()
    _print_import(file, report)


SWEEP_YEARS = (1970, 2999)  # what `sweep --now` takes
SWEEP_FUTURE_SLACK = timedelta(minutes=5)  # prod: a --now this far ahead of the server's clock is still "now"


@cli.command()
def sweep(now: Annotated[Optional[str], typer.Option(help="ISO-8601 instant to sweep as of (default: now)")] = None) -> None:
    """Escalate every hazard whose holder let a clock run out, one tier up, and raise to the next level up the
    listed supervision of hazards unrectified six months on (idempotent)."""
    from datetime import datetime, timezone

    from app.db import utcnow
    from app.referrals.policy import DEFAULT_POLICY_PATH, load_policy
    from app.referrals.sweeper import run_sweep

    settings = get_settings()
    at = utcnow()
    if now:
        try:
            at = datetime.fromisoformat(now)
        except ValueError:
            typer.echo(f"--now: {now!r} is not an ISO-8601 time", err=True)
            raise typer.Exit(2)
        if at.tzinfo is None:
            typer.echo("--now: give a time zone offset, e.g. 2026-11-23T09:00:00+08:00", err=True)
            raise typer.Exit(2)
        try:  # 0001-01-01T00:00+08:00 has no UTC instant; near 9999 the working-day arithmetic overflows
            in_range = SWEEP_YEARS[0] <= at.astimezone(timezone.utc).year <= SWEEP_YEARS[1]
        except OverflowError:
            in_range = False
        if not in_range:
            typer.echo(f"--now: {now!r} is out of range (years {SWEEP_YEARS[0]} to {SWEEP_YEARS[1]})", err=True)
            raise typer.Exit(2)
        if settings.env == "prod" and at > utcnow() + SWEEP_FUTURE_SLACK:
            # as of a time still to come, hazards whose clocks have not run out would go up for good, their
            # timelines saying the clocks were overdue: catching up on a past time is what --now is for
            typer.echo(f"--now: {now!r} is in the future; FIREGRID_ENV=prod sweeps only as of now or a past time",
                       err=True)
            raise typer.Exit(2)
    done = run_sweep(_db(), load_policy(settings.policy_file or DEFAULT_POLICY_PATH), at)
    raised = [e for e in done if e.listing_raised]
    for e in done:
        if e.listing_raised:
            typer.echo(f"{e.hazard_id}: listed supervision raised to the next level up (six months unrectified)")
        else:
            typer.echo(f"{e.hazard_id}: {e.from_tier} -> {e.to_tier or 'county listed supervision'} "
                       f"(overdue: {', '.join(e.clocks)})")
    typer.echo(f"escalated {len(done) - len(raised)} hazards as of {at.isoformat()}"
               + (f"; raised {len(raised)} listings" if raised else ""))


calendar_cli = typer.Typer(help="The working-day calendar.", no_args_is_help=True)
cli.add_typer(calendar_cli, name="calendar")


@calendar_cli.command("retime")
def calendar_retime(year: Annotated[int, typer.Argument(help="the year the upgraded package now has a schedule for")]) -> None:
    """After upgrading the chinese-calendar package to a release with YEAR's holidays: count again the running
    clocks counted while it had none (idempotent)."""
    from app.errors import DomainError
    from app.referrals.service import retime_year

    with _db().session(write=True) as session:
        try:
            moved = retime_year(session, year)
        except DomainError as exc:
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(2)
        session.commit()
    typer.echo(f"{len(moved)} hazards' clocks re-timed for {year}")


@cli.command()
def backup(
    out: Annotated[Path, typer.Option(help="the backup directory (kept across runs: photos are copied once)")],
    photos: Annotated[bool, typer.Option(help="copy the photos too (after the database)")] = True,
    verify: Annotated[bool, typer.Option(help="hash the photos already in the backup too (reads them all)")] = False,
) -> None:
    """Copy the SQLite database (one consistent snapshot, while the server runs), then the photos not yet
    in OUT, each checked against its hash; exit 1 if a photo is damaged in the store or gone from it.
    PostgreSQL: pg_dump it first; this then copies the photos."""
    from app.backup import BackupError, backup as run_backup, sqlite_path
    from app.db import utcnow

    settings = get_settings()
    try:
        if sqlite_path(settings.database_url) is None:
            typer.echo("database: not SQLite, not copied: back it up with pg_dump before this command "
                       "(docs/DEPLOY.md)", err=True)
        report = run_backup(settings.database_url, settings.storage_dir, out, utcnow(), photos=photos,
                            verify=verify, progress=lambda r: typer.echo(f"  … {r.photos_copied:,} photos copied",
                                                                         err=True))
    except (BackupError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    if report.database is not None:
        typer.echo(f"database: {report.database} ({report.database_bytes:,} bytes, revision "
                   f"{report.revision or 'none'}, checked)")
    for name in report.photos_damaged:
        typer.echo(f"photo {name}: its bytes no longer hash to its name, or cannot be read: damaged in the store, not copied",
                   err=True)
    for name in report.photos_repaired:
        typer.echo(f"photo {name}: its copy in the backup no longer hashed to its name: copied again", err=True)
    for name in report.photos_lost:
        typer.echo(f"photo {name}: a record names it, but it is in neither the store nor the backup", err=True)
    if photos:
        repaired = f", {len(report.photos_repaired):,} copied again (damaged in the backup)" if verify else ""
        typer.echo(f"photos: {report.photos_copied:,} copied, {report.photos_present:,} already there{repaired}, "
                   f"{len(report.photos_damaged)} damaged, {len(report.photos_lost)} lost")
    if report.failed:
        raise typer.Exit(1)


@cli.command()
def restored(
    taken_at: Annotated[str, typer.Option(help="when the backup was taken, ISO-8601 with its offset")],
) -> None:
    """After restoring the database from a backup `firegrid backup` did not make (pg_dump, a disk snapshot),
    before the server starts: the phones' cursors are refused, and told to send again what they sent since
    TAKEN_AT (a copy made by `firegrid backup` does this itself at its first start)."""
    from datetime import datetime

    from app.db import utcnow
    from app.sync.feed import RESEND_MARGIN, start_restored

    try:
        at = datetime.fromisoformat(taken_at)
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        typer.echo(f"error: --taken-at {taken_at!r}: not an ISO-8601 time with its offset", err=True)
        raise typer.Exit(2)
    if at > utcnow():  # a typo in the year: the phones would send again nothing they lost
        typer.echo(f"error: --taken-at {taken_at}: in the future; give the time the backup was taken", err=True)
        raise typer.Exit(2)
    with _db().session(write=True) as session:
        if start_restored(session, at) is None:
            typer.echo("error: the database has no change feed yet (run `firegrid migrate` first)", err=True)
            raise typer.Exit(2)
        session.commit()
    typer.echo(f"the change feed starts anew; phones send again every op answered since "
               f"{(at - RESEND_MARGIN).isoformat()} (the backup's time less {RESEND_MARGIN})")


audit_cli = typer.Typer(help="The hash-chained audit trail.", no_args_is_help=True)
cli.add_typer(audit_cli, name="audit")


@audit_cli.command("verify")
def audit_verify(
    anchor: Annotated[Path | None, typer.Option(help="an anchor written earlier by `audit anchor`: every event "
                                                     "in it must still be there, unchanged")] = None,
) -> None:
    """Recompute every hazard's event chain and its seals; exit 1 if any was edited, reordered or cut."""
    from app.audit.chain import ChainProblem
    from app.audit.service import AnchorError, audit_key, check_anchor, verify_all

    key = audit_key(get_settings())
    problems = 0
    checked = 0
    with _db().session() as session:
        for item in verify_all(session, key=key):
            if isinstance(item, ChainProblem):
                problems += 1
                typer.echo(f"hazard {item.hazard_id} event {item.seq}: {item.problem}", err=True)
            else:
                checked = item
        anchored = None
        if anchor is not None:
            try:
                for item in check_anchor(session, key, anchor):
                    if isinstance(item, ChainProblem):
                        problems += 1
                        typer.echo(f"hazard {item.hazard_id} event {item.seq}: {item.problem}", err=True)
                    else:
                        anchored = item
            except (AnchorError, OSError, UnicodeDecodeError, EOFError, zlib.error) as exc:
                typer.echo(f"error: {anchor}: {exc}", err=True)
                raise typer.Exit(2)
    against = f" and {anchored} anchored heads" if anchored is not None else ""
    typer.echo(f"checked {checked} hazards{against}: {'OK' if not problems else f'{problems} problems'}")
    if problems:
        raise typer.Exit(1)


@audit_cli.command("anchor")
def audit_anchor(
    out: Annotated[Path, typer.Option(help="where to write it (.gz: gzipped); keep it off the database's machine")],
) -> None:
    """Write every hazard's chain head, sealed, to a file to be kept outside the database: `audit verify
    --anchor` then also sees hazards deleted with their events and chains cut back."""
    from app.audit.service import audit_key, open_anchor, write_anchor
    from app.db import utcnow

    tmp = out.with_name(out.name + ".part")
    try:
        with _db().session() as session, open_anchor(tmp, "wt", gzipped=out.suffix == ".gz") as f:
            n = write_anchor(session, audit_key(get_settings()), f, utcnow())
        tmp.replace(out)  # a run cut short leaves no anchor that looks whole
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        typer.echo(f"error: {out}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2)
    typer.echo(f"anchored {n} hazards in {out}")


@audit_cli.command("seal")
def audit_seal() -> None:
    """Seal the events stored before seals existed, where their chains verify (`migrate` does it too);
    exit 1 if a chain was left unsealed because it does not verify."""
    _seal(quiet_if_none=False, fail=True)


def _seal(quiet_if_none: bool, fail: bool) -> None:
    from app.audit.service import audit_key, seal_unsealed

    db = _db()
    report = seal_unsealed(lambda: db.session(write=True), audit_key(get_settings()))
    for p in report.refused:
        typer.echo(f"hazard {p.hazard_id} event {p.seq}: {p.problem}: left unsealed", err=True)
    if report.sealed or report.refused or not quiet_if_none:
        typer.echo(f"sealed {report.sealed} audit events" + (f"; {len(report.refused)} problems left unsealed"
                                                             if report.refused else ""))
    if report.refused and fail:
        raise typer.Exit(1)


def main() -> None:
    cli()
