"""Working-day arithmetic on the Chinese calendar (pure; no DB, no FastAPI)."""

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from app.referrals.calendar import LOCAL_TZ, WorkCalendar

CST = timezone(timedelta(hours=8))


def local(y, m, d, hh=9, mm=0):
    return datetime(y, m, d, hh, mm, tzinfo=LOCAL_TZ)


def utc(y, m, d, hh=0, mm=0):
    return datetime(y, m, d, hh, mm, tzinfo=UTC)


@pytest.mark.parametrize(
    ("day", "expected", "why"),
    [
        # 2024 Spring Festival: 2-10..2-17 off, Sundays 2-4 and 2-18 are 调休 workdays.
        (date(2024, 2, 4), True, "Sunday, adjusted workday before Spring Festival"),
        (date(2024, 2, 9), True, "Friday, New Year's Eve was a working day in 2024"),
        (date(2024, 2, 10), False, "Spring Festival holiday"),
        (date(2024, 2, 12), False, "Monday inside the holiday"),
        (date(2024, 2, 17), False, "last holiday day"),
        (date(2024, 2, 18), True, "Sunday, adjusted workday after Spring Festival"),
        (date(2024, 2, 19), True, "ordinary Monday"),
        (date(2024, 2, 24), False, "ordinary Saturday"),
        # National Day 2025: 10-1..10-8 off, Sunday 9-28 and Saturday 10-11 worked.
        (date(2025, 9, 28), True, "Sunday, adjusted workday before National Day"),
        (date(2025, 10, 1), False, "National Day"),
        (date(2025, 10, 6), False, "Monday inside the holiday"),
        (date(2025, 10, 8), False, "last holiday day"),
        (date(2025, 10, 9), True, "first day back"),
        (date(2025, 10, 11), True, "Saturday, adjusted workday"),
        (date(2025, 10, 12), False, "ordinary Sunday"),
    ],
)
def test_is_workday_known_years(day, expected, why):
    cal = WorkCalendar()
    assert cal.is_workday(day) is expected, why
    assert cal.unknown_years == set()


@pytest.mark.parametrize(
    ("overrides", "day", "expected"),
    [
        ({date(2024, 2, 19): False}, date(2024, 2, 19), False),  # local extra day off
        ({date(2024, 2, 10): True}, date(2024, 2, 10), True),  # holiday made a workday
        ({date(2099, 1, 3): True}, date(2099, 1, 3), True),  # Saturday in an unknown year
        ({date(2099, 1, 1): False}, date(2099, 1, 1), False),  # New Year in an unknown year
    ],
)
def test_overrides_beat_the_package(overrides, day, expected):
    cal = WorkCalendar(overrides)
    assert cal.is_workday(day) is expected
    # a date answered from the override table does not count as an unknown year
    assert cal.unknown_years == set()


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2099, 1, 1), False),  # Thursday, but 元旦: the law's own days off stay off (test_statutory_days)
        (date(2099, 1, 2), True),  # Friday
        (date(2099, 1, 3), False),  # Saturday
        (date(2099, 1, 4), False),  # Sunday
        (date(2099, 1, 5), True),  # Monday
    ],
)
def test_unknown_year_falls_back_to_monday_friday_less_statutory_days_and_is_recorded(day, expected):
    cal = WorkCalendar()
    assert cal.is_workday(day) is expected
    assert cal.unknown_years == {2099}


def test_unknown_year_override_and_fallback_mixed():
    cal = WorkCalendar({date(2099, 1, 1): False})
    # 2099-01-01 off by override, 01-02 (Fri) 1st by fallback, weekend, 01-05 (Mon) 2nd
    assert cal.add_workdays(local(2098, 12, 31, 10), 2) == datetime(2099, 1, 6, tzinfo=LOCAL_TZ)
    assert cal.unknown_years == {2099}


@pytest.mark.parametrize(
    ("start", "n", "expected", "why"),
    [
        # Thursday before Spring Festival 2024: Fri 2-9 is the 1st working day...
        (local(2024, 2, 8, 10), 1, utc(2024, 2, 9, 16), "end of Fri 2-9"),
        # ...and the 2nd is the adjusted Sunday 2-18, across the holiday.
        (local(2024, 2, 8, 10), 2, utc(2024, 2, 18, 16), "end of Sun 2-18"),
        (local(2024, 2, 8, 10), 3, utc(2024, 2, 19, 16), "end of Mon 2-19"),
        # Reported during the holiday: the adjusted Sunday counts.
        (local(2024, 2, 12, 10), 1, utc(2024, 2, 18, 16), "holiday start"),
        # n = 0: end of the start's own local day, holiday or not.
        (local(2024, 2, 12, 10), 0, utc(2024, 2, 12, 16), "n=0"),
        # National Day 2025: reported 9-30, back on 10-9.
        (local(2025, 9, 30, 9), 1, utc(2025, 10, 9, 16), "first day back"),
        (local(2025, 9, 30, 9), 3, utc(2025, 10, 11, 16), "adjusted Saturday 10-11 counts"),
        (local(2025, 9, 26, 9), 1, utc(2025, 9, 28, 16), "Fri -> adjusted Sun 9-28"),
        # 复查 3 working days after a deadline that ends Friday 2025-09-26 (the
        # instant is Sat 00:00 local): Sun 9-28 (adjusted), Mon 9-29, Tue 9-30.
        (utc(2025, 9, 26, 16), 3, utc(2025, 9, 30, 16), "deadline ending Friday"),
        # A deadline ending Monday 2024-03-04 (Tue 00:00 local): Tue, Wed, Thu.
        (utc(2024, 3, 4, 16), 3, utc(2024, 3, 7, 16), "local midnight ends the previous day"),
        (utc(2024, 3, 4, 16), 0, utc(2024, 3, 4, 16), "n=0 at a deadline is the deadline"),
    ],
)
def test_add_workdays(start, n, expected, why):
    got = WorkCalendar().add_workdays(start, n)
    assert got == expected, why
    assert got.tzinfo is UTC


def test_add_workdays_uses_the_local_date_not_the_utc_date():
    # 2024-03-03 17:00 UTC is Monday 2024-03-04 01:00 in Shanghai (UTC date: Sunday).
    start = utc(2024, 3, 3, 17)
    cal = WorkCalendar()
    assert cal.local_date(start) == date(2024, 3, 4)
    # 1st working day strictly after Monday 3-4 is Tuesday 3-5 (not Monday 3-4).
    assert cal.add_workdays(start, 1) == utc(2024, 3, 5, 16)
    assert cal.add_workdays(start, 0) == utc(2024, 3, 4, 16)
    # 15:59 UTC is still 23:59 on Sunday 3-3 locally: 1st working day is Monday 3-4.
    assert cal.add_workdays(utc(2024, 3, 3, 15, 59), 1) == utc(2024, 3, 4, 16)


def test_add_workdays_accepts_any_aware_offset():
    cal = WorkCalendar()
    same_instant = [local(2024, 2, 8, 10), datetime(2024, 2, 8, 10, tzinfo=CST), utc(2024, 2, 8, 2)]
    results = {cal.add_workdays(s, 2) for s in same_instant}
    assert results == {utc(2024, 2, 18, 16)}


@pytest.mark.parametrize("n", [-1, -10])
def test_add_workdays_rejects_negative(n):
    with pytest.raises(ValueError, match="n must be >= 0"):
        WorkCalendar().add_workdays(utc(2024, 1, 1), n)


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.add_workdays(datetime(2024, 2, 8, 10), 1),
        lambda c: c.workdays_between(datetime(2024, 2, 8), utc(2024, 2, 9)),
        lambda c: c.workdays_between(utc(2024, 2, 8), datetime(2024, 2, 9)),
        lambda c: c.local_date(datetime(2024, 2, 8)),
    ],
)
def test_naive_datetimes_are_rejected(call):
    with pytest.raises(ValueError, match="aware"):
        call(WorkCalendar())


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (local(2024, 2, 8), local(2024, 2, 19), 3),  # 2-9, 2-18, 2-19
        (local(2024, 2, 9), local(2024, 2, 17), 0),  # all holiday
        (local(2024, 2, 8), local(2024, 2, 8, 23), 0),  # same local day
        (local(2024, 2, 19), local(2024, 2, 8), 0),  # b before a: never negative
        (local(2025, 9, 30), local(2025, 10, 12), 3),  # 10-9, 10-10, 10-11
        (utc(2024, 3, 3, 15), utc(2024, 3, 3, 17), 1),  # crosses local midnight into Monday
    ],
)
def test_workdays_between(a, b, expected):
    assert WorkCalendar().workdays_between(a, b) == expected


@pytest.mark.parametrize("start", [local(2024, 1, 30, 15), utc(2024, 2, 7, 16), local(2025, 9, 20, 0)])
def test_add_then_count_round_trip_and_composition(start):
    cal = WorkCalendar()
    for n in range(0, 25):
        due = cal.add_workdays(start, n)
        assert cal.workdays_between(start, due) == n
        assert cal.workdays_between(start, due - timedelta(seconds=1)) == n
        for m in (0, 1, 3):
            assert cal.add_workdays(due, m) == cal.add_workdays(start, n + m)


def test_override_keys_must_be_dates():
    with pytest.raises(TypeError):
        WorkCalendar({datetime(2024, 1, 1): False})
    with pytest.raises(TypeError):
        WorkCalendar().is_workday(datetime(2024, 1, 1, tzinfo=UTC))
