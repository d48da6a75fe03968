"""Working-day arithmetic on the Chinese calendar (工作日, 含调休).

PURE: no database, no web framework. Every legal time limit in the referral chain
("within 3 working days", 复查 "within 3 working days after the deadline") counts
Chinese working days: public holidays are off and the adjusted weekend workdays
(调休上班) count.

Sources of truth, in order:

1. ``overrides`` — a table ``date -> is_workday`` kept by admins, so a year the
   ``chinese_calendar`` package does not know yet (the State Council publishes the
   next year's schedule each November) can be entered without a code change.
   Overrides always win, also for years the package knows (a local extra day off).
2. ``chinese_calendar.is_workday``.
3. For a year the package does not know: Monday–Friday, less, while no override
   of that year is entered, the days off the law itself fixes (``statutory_days_off``:
   元旦, 春节, 清明, 劳动节, 端午, 中秋, 国庆, and the make-up day for one on a weekend).
   Once an admin enters the year's published schedule, its days are the overrides
   and the law's days are no longer guessed (a make-up day the schedule placed
   elsewhere stays a working day). What the State Council adds each year (bridging
   days, the weekend workdays 调休上班) is not known before: the year is recorded in
   ``unknown_years`` so callers can warn ("holiday schedule missing for 2027")
   instead of silently drifting (FixMyStreet Zurich's trap).

All instants are aware datetimes; the local day is the day in Asia/Shanghai.
Deadlines are returned as aware UTC datetimes.

Midnight convention: for the arithmetic, an instant exactly at local midnight
(00:00:00.000000) belongs to the day it ENDS, not the day it starts. Deadlines
are such instants ("end of Monday" is Tuesday 00:00), so counting from a
deadline composes: ``add_workdays(add_workdays(t, a), b) == add_workdays(t, a + b)``
and 复查 "3 working days after a deadline ending Monday" ends on Thursday, not
Friday. ``local_date`` (for display) is the plain calendar date.
"""

from __future__ import annotations

import calendar as _months
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import chinese_calendar

__all__ = ["LOCAL_TZ", "ClockBasis", "WorkCalendar", "moving_holidays", "statutory_days_off"]

LOCAL_TZ = ZoneInfo("Asia/Shanghai")

_ONE_DAY = timedelta(days=1)


def _day(solar: Any) -> date:
    return date(solar.getYear(), solar.getMonth(), solar.getDay())


@functools.cache
def moving_holidays(year: int) -> dict[str, date]:
    """The holidays of ``year`` that move with the moon or the sun: 除夕 and 初一 (春节), 清明 (the solar
    term), 端午 (5th of the 5th lunar month), 中秋 (15th of the 8th)."""
    from lunar_python import Lunar  # loaded only for a year the package does not know

    first = _day(Lunar.fromYmd(year, 1, 1).getSolar())
    return {"除夕": first - _ONE_DAY, "初一": first,
            "清明": _day(Lunar.fromYmd(year, 1, 1).getJieQiTable()["清明"]),
            "端午": _day(Lunar.fromYmd(year, 5, 5).getSolar()), "中秋": _day(Lunar.fromYmd(year, 8, 15).getSolar())}


@functools.cache
def statutory_days_off(year: int) -> frozenset[date]:
    """The days off that 《全国年节及纪念日放假办法》 (as amended in 2024, in force from 2025) fixes for every
    year, before the State Council's yearly schedule: 元旦 1 January; 春节 the lunar New Year's Eve (除夕) and
    the first three days of the lunar year; 清明 the day of the 清明 solar term; 劳动节 1 and 2 May; 端午 the
    5th of the 5th lunar month; 中秋 the 15th of the 8th; 国庆 1 to 3 October. One that falls on a Saturday
    or Sunday is made up on the next weekday that is not itself off (补假, article 6 of the same 办法).

    The deadlines of a year the chinese-calendar package does not know yet are counted with these: a
    clock then does not run through 除夕 or 1 January as if they were working days. The schedule's bridging
    days and its weekend workdays (调休上班) come only with the published schedule (an admin's overrides)."""
    moving = moving_holidays(year)
    days = {date(year, 1, 1), date(year, 5, 1), date(year, 5, 2), *(date(year, 10, d) for d in (1, 2, 3)),
            *(moving["初一"] + timedelta(days=k) for k in range(-1, 3)), moving["清明"], moving["端午"],
            moving["中秋"]}
    made_up: set[date] = set()
    for d in sorted(days):
        if d.weekday() >= 5:
            extra = d + _ONE_DAY
            while extra.weekday() >= 5 or extra in days or extra in made_up:
                extra += _ONE_DAY
            made_up.add(extra)
    return frozenset(days | made_up)


def _require_aware(value: datetime, name: str) -> None:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(f"{name} must be an aware datetime (with a time zone), got naive {value!r}")


@dataclass(frozen=True)
class ClockBasis:
    """How a clock counted in working days was computed: the end of the ``workdays``-th working day after
    the local day ``after`` (``WorkCalendar.workdays_after``), so it can be counted again when the
    calendar changes (an admin enters a year's holidays and 调休 after the clock started).

    ``from_clock``: counted from that clock's deadline (复查 within 3 working days after the 限期整改
    deadline); when that clock is re-timed, this one is counted again from its new deadline. A clock
    with no basis was given as an instant (a holder's explicit deadline) and is never re-timed."""

    after: date
    workdays: int
    from_clock: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"after": self.after.isoformat(), "workdays": self.workdays}
        if self.from_clock is not None:
            out["from"] = self.from_clock
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ClockBasis":
        return cls(after=date.fromisoformat(data["after"]), workdays=int(data["workdays"]),
                   from_clock=data.get("from"))


class WorkCalendar:
    """Chinese working days with an admin-maintained override table."""

    def __init__(self, overrides: Mapping[date, bool] | None = None, tz: ZoneInfo = LOCAL_TZ) -> None:
        table: dict[date, bool] = {}
        for day, is_work in (overrides or {}).items():
            if isinstance(day, datetime) or not isinstance(day, date):
                raise TypeError(f"override keys must be dates, got {day!r}")
            table[day] = bool(is_work)
        self.overrides: dict[date, bool] = table
        # a year with overrides has its published schedule in them: the statutory days are not guessed there
        self._scheduled_years = {d.year for d in table}
        self.tz = tz
        # Years for which neither the package nor the overrides had data and the
        # Monday–Friday fallback was used. Grows as queries touch such years.
        self.unknown_years: set[int] = set()
        self._memo: dict[tuple[date, int], datetime] = {}

    # -- days ------------------------------------------------------------------

    def is_workday(self, d: date) -> bool:
        """True if ``d`` is a working day (工作日), 调休 workdays included."""
        if isinstance(d, datetime):
            raise TypeError("is_workday takes a date; use local_date(dt) to convert an instant")
        override = self.overrides.get(d)
        if override is not None:
            return override
        try:
            return bool(chinese_calendar.is_workday(d))
        except NotImplementedError:
            self.unknown_years.add(d.year)
            if d.year in self._scheduled_years:
                return d.weekday() < 5
            return d.weekday() < 5 and d not in statutory_days_off(d.year)

    def local_date(self, instant: datetime) -> date:
        """The calendar day in the local time zone (Asia/Shanghai) of an aware instant."""
        _require_aware(instant, "instant")
        return instant.astimezone(self.tz).date()

    def count_day(self, instant: datetime) -> date:
        """The local day an instant counts for: local midnight belongs to the day it ends. Counting
        working days from ``instant`` starts after this day (what a clock's basis records)."""
        return self._count_day(instant)

    def _count_day(self, instant: datetime) -> date:
        """The local day an instant counts for: local midnight belongs to the day it ends."""
        _require_aware(instant, "instant")
        here = instant.astimezone(self.tz)
        day = here.date()
        if here.time() == time(0):
            day -= _ONE_DAY
        return day

    def end_of_local_day(self, d: date) -> datetime:
        """The instant (UTC) of local midnight that ends day ``d``."""
        return datetime.combine(d + _ONE_DAY, time(0), tzinfo=self.tz).astimezone(UTC)

    # -- arithmetic ------------------------------------------------------------

    def add_workdays(self, start: datetime, n: int) -> datetime:
        """Deadline at the END of the n-th working day strictly after start's local date.

        Returned as an aware UTC datetime: the local midnight that begins the day
        after that n-th working day. ``n == 0`` means the end of start's own local
        day (whether or not it is a working day). A start exactly at local midnight
        counts as the end of the previous day (see the module docstring).
        """
        _require_aware(start, "start")
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, got {n!r}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return self.workdays_after(self._count_day(start), n)

    def workdays_after(self, first: date, n: int) -> datetime:
        """Deadline at the END of the n-th working day strictly after the local day ``first`` (aware UTC):
        ``add_workdays(start, n) == workdays_after(count_day(start), n)``. A clock counted in working days
        is re-timed with it from its basis (``first``, ``n``) when the override table changes."""
        if isinstance(first, datetime) or not isinstance(first, date):
            raise TypeError(f"first must be a date, got {first!r}")
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, got {n!r}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        key = (first, n)
        if key not in self._memo:  # a sync batch asks the same question hundreds of times
            day, counted = first, 0
            while counted < n:
                day += _ONE_DAY
                if self.is_workday(day):
                    counted += 1
            self._memo[key] = self.end_of_local_day(day)
        return self._memo[key]

    def workdays_between(self, a: datetime, b: datetime) -> int:
        """Working days after a's local date up to and including b's local date.

        0 when b's local date is on or before a's (never negative). Used for
        figures such as time to close or working days overdue
        (``workdays_between(deadline, now)``). Local midnight counts for the day
        it ends, so ``workdays_between(t, add_workdays(t, n)) == n``.
        """
        _require_aware(a, "a")
        _require_aware(b, "b")
        day = self._count_day(a)
        last = self._count_day(b)
        count = 0
        while day < last:
            day += _ONE_DAY
            if self.is_workday(day):
                count += 1
        return count


def package_first_year() -> int:
    """The first year the chinese-calendar package has the State Council's holiday schedule for."""
    return min(chinese_calendar.holidays).year


def package_last_year() -> int:
    """The last year the chinese-calendar package has the State Council's holiday schedule for."""
    return max(chinese_calendar.holidays).year


def years_without_schedule(override_days: Iterable[date], today: date) -> list[int]:
    """This year and next, where neither the package nor the override table has the schedule: deadlines
    there fall back to Monday–Friday less the statutory days off, and miss the schedule's bridging days and
    weekend workdays (调休) around 春节 and 国庆."""
    covered = {d.year for d in override_days}
    last = package_last_year()
    return [y for y in (today.year, today.year + 1) if y > last and y not in covered]


def add_months(t: datetime, n: int) -> datetime:
    """The same day and time ``n`` months on (the month's last day where it has fewer: 31 August + 6 is 28 or
    29 February): "after six months" as people count it."""
    y, m = divmod(t.month - 1 + n, 12)
    year, month = t.year + y, m + 1
    return t.replace(year=year, month=month, day=min(t.day, _months.monthrange(year, month)[1]))
