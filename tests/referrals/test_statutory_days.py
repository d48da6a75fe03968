"""The fallback for a year the chinese-calendar package has no schedule for (2027, on 2026-12-01): Monday to
Friday less the days off that 《全国年节及纪念日放假办法》 (2024 text, in force from 2025) fixes, with the
make-up day (补假) for one that falls on a weekend. Checked against the package's published schedules,
which must contain every such day, and by hand for 2027."""

from datetime import date, datetime, timedelta

import chinese_calendar
import pytest

from app.referrals.calendar import LOCAL_TZ, WorkCalendar, moving_holidays, package_last_year, statutory_days_off


def _off_in_package(d: date) -> bool:
    return not chinese_calendar.is_workday(d)


@pytest.mark.parametrize("year", range(2025, package_last_year() + 1))
def test_every_statutory_day_off_is_off_in_the_published_schedule(year):
    days = statutory_days_off(year)
    assert len(days) >= 13  # the 13 days of the 2024 text, and any make-up days
    assert sorted(d for d in days if not _off_in_package(d)) == []


@pytest.mark.parametrize("year", range(2008, package_last_year() + 1))
def test_the_lunar_and_solar_term_days_match_the_published_schedule(year):
    """Before 2025 the text gave 春节 three days from the 1st (除夕 not among them) and 劳动节 one, but 初一,
    清明, 端午 and 中秋 have been days off since 2008: where the moon and the sun put them is checked against
    every schedule the package has."""
    moving = moving_holidays(year)
    assert {k: v for k, v in moving.items() if k != "除夕" and not _off_in_package(v)} == {}
    assert moving["除夕"] == moving["初一"] - timedelta(days=1) and moving["初一"].month in (1, 2)
    assert moving["中秋"].month in (9, 10) and moving["端午"].month in (5, 6) and moving["清明"].month == 4


def test_2027_by_hand():
    # 2027: 元旦 Fri; 除夕 2-05 (Fri), 初一 to 初三 2-06..2-08 (Sat, Sun, Mon): two made up on Tue 2-09 and Wed
    # 2-10; 清明 4-05 (Mon); 5-01, 5-02 (Sat, Sun): Mon 5-03 and Tue 5-04; 端午 6-09 (Wed); 中秋 9-15 (Wed);
    # 国庆 10-01..10-03 (Fri, Sat, Sun): Mon 10-04 and Tue 10-05
    want = {"01-01", "02-05", "02-06", "02-07", "02-08", "02-09", "02-10", "04-05", "05-01", "05-02", "05-03",
            "05-04", "06-09", "09-15", "10-01", "10-02", "10-03", "10-04", "10-05"}
    assert statutory_days_off(2027) == {date.fromisoformat(f"2027-{md}") for md in want}


def test_a_year_the_package_does_not_know_keeps_its_statutory_days_off():
    cal = WorkCalendar()
    # 2099: 除夕 1-20 (Tue), 初一 to 初三 1-21..1-23 (Wed-Fri). One working day after Monday 1-19 is Monday 1-26.
    assert [cal.is_workday(date(2099, 1, d)) for d in range(19, 27)] == [True, False, False, False, False, False,
                                                                       False, True]
    assert cal.add_workdays(datetime(2099, 1, 19, 10, tzinfo=LOCAL_TZ), 1) == datetime(2099, 1, 27, tzinfo=LOCAL_TZ)
    assert cal.unknown_years == {2099}
    # an admin's override has the last word, and a year with overrides is a year with its schedule entered:
    # the law's days are no longer guessed there (the published schedule lists every day off it gives)
    scheduled = WorkCalendar({date(2099, 1, 20): True, date(2099, 1, 22): False})
    assert [scheduled.is_workday(date(2099, 1, d)) for d in range(20, 24)] == [True, True, False, True]
    assert scheduled.is_workday(date(2099, 1, 1)) is True
    assert WorkCalendar({date(2098, 1, 2): False}).is_workday(date(2099, 1, 1)) is False  # another year's


def test_a_year_past_2100_still_gets_its_lunar_days():
    moving = moving_holidays(2150)
    assert all(d.year == 2150 for d in moving.values())
    assert moving["初一"].month in (1, 2) and moving["清明"].month == 4 and moving["中秋"].month in (9, 10)
    assert moving["初一"] in statutory_days_off(2150) and date(2150, 10, 1) in statutory_days_off(2150)
