"""`firegrid seed-demo`: a county with two towns, its units, the accounts of API.md and realistic premises.

Idempotent: units are found by code, users by username (in any case) and premises by a stable id, so running it
again changes nothing.
"""

import random
import uuid

from sqlmodel import Session, select

from app.auth.models import Role, User
from app.auth.service import create_user, find_user
from app.org.models import OrgUnit, UnitKind
from app.org.service import create_unit, get_by_code
from app.places.models import Place, PlaceClass

DEMO_PASSWORD = "firegrid-demo"
_NS = uuid.UUID("6f1c3c2e-9a51-4d0e-8d7e-2b7f3f1a0c11")

TOWNS = {
    "town-a": ("青峰镇", (29.3562, 105.9270), False),
    "town-b": ("临江街道", (29.3921, 105.8864), True),  # granted fire-law enforcement power (综合执法)
}
COMMUNITIES = {"1": ("{}新街社区", "中心路"), "2": ("{}石板村", "石板坡")}

# (place class, name templates, address suffixes): what grid workers actually walk past.
PLACE_TEMPLATES: dict[PlaceClass, list[str]] = {
    PlaceClass.key_unit_1: ["{town}人民医院", "{town}万达购物中心"],
    PlaceClass.key_unit_2: ["{town}中心小学", "{town}锦江酒店", "{town}敬老院"],
    PlaceClass.key_unit_3: ["{town}农贸市场", "{town}客运站", "{town}第二幼儿园"],
    PlaceClass.police_list: ["{town}红星网吧", "{town}金色年华KTV", "{town}加油站"],
    PlaceClass.nine_small: ["老王小吃店", "便民超市", "丽人美发店", "顺发五金店", "乐康诊所", "川味火锅店", "兴隆旅馆",
                            "小太阳托管班", "足浴养生馆"],
    PlaceClass.three_in_one: ["张记服装加工坊", "李家竹编作坊", "宏达家具作坊", "利民食品加工点"],
    PlaceClass.rental: ["{street}出租屋", "{street}群租房", "外来务工人员公寓"],
    PlaceClass.self_built: ["{street}自建房民宿", "{street}自建房商铺", "农家乐"],
    PlaceClass.crowded: ["{town}文化活动中心", "{town}体育馆", "{town}老年大学"],
    PlaceClass.residential: ["{street}家属院", "幸福小区", "和平苑"],
    PlaceClass.other: ["{town}物流仓库", "废品回收站", "{town}停车场"],
}
OWNERS = ["王建国", "李秀英", "张伟", "刘洋", "陈静", "杨磊", "赵敏", "黄勇", "周芳", "吴强", "徐丽", "孙涛"]
REGULATOR_FOR = {"中心小学": "regulator-education", "第二幼儿园": "regulator-education", "小太阳托管班": "regulator-education",
                 "人民医院": "regulator-health", "乐康诊所": "regulator-health", "敬老院": "regulator-civil",
                 "购物中心": "regulator-commerce", "农贸市场": "regulator-commerce"}


def _unit(session: Session, code: str, name: str, kind: UnitKind, parent: OrgUnit | None, **kw) -> OrgUnit:
    # stable ids: every demo database names the same unit the same way (scripts, comparisons)
    return get_by_code(session, code) or create_unit(session, code=code, name=name, kind=kind, parent=parent,
                                                     id=str(uuid.uuid5(_NS, f"unit/{code}")), **kw)


def _user(session: Session, username: str, role: Role, unit: OrgUnit, display: str) -> None:
    if find_user(session, username) is None:  # in any case, as logins and create_user find it
        create_user(session, username=username, password=DEMO_PASSWORD, role=role, unit=unit, display_name=display,
                    is_demo=True, id=str(uuid.uuid5(_NS, f"user/{username}")))


def seed_demo(session: Session, with_hazards: bool = True) -> dict[str, int]:
    county = _unit(session, "county", "永川示范区", UnitKind.county, None)
    brigade = _unit(session, "brigade", "永川示范区消防救援大队", UnitKind.brigade, county)
    regulators = {
        code: _unit(session, code, name, UnitKind.sector_regulator, county, sector=sector)
        for code, name, sector in [
            ("regulator-education", "区教育委员会", "education"),
            ("regulator-health", "区卫生健康委员会", "health"),
            ("regulator-commerce", "区商务委员会", "commerce"),
            ("regulator-civil", "区民政局", "civil_affairs"),
        ]
    }
    _user(session, "admin", Role.admin, county, "系统管理员")
    _user(session, "brigade", Role.brigade, brigade, "大队防火监督员")
    places_before = session.exec(select(Place.id)).all()
    for town_code, (town_name, (lat0, lon0), enforcement) in TOWNS.items():
        t = town_code[-1]
        town = _unit(session, town_code, town_name, UnitKind.town, county, enforcement_power=enforcement)
        office = _unit(session, f"office-{t}", f"{town_name}综合行政执法和应急管理办公室", UnitKind.town_office, town)
        police = _unit(session, f"police-{t}", f"{town_name}派出所", UnitKind.police_station, town)
        grids: list[OrgUnit] = []
        for c, (cname, street) in COMMUNITIES.items():
            community = _unit(session, f"community-{t}-{c}", cname.format(town_name[:2]), UnitKind.community, town)
            for g in ("1", "2"):
                grids.append(_unit(session, f"grid-{t}-{c}-{g}", f"{community.name}第{g}网格", UnitKind.grid, community))
        _user(session, f"office-{t}", Role.town_office, office, f"{town_name}消防工作站")
        _user(session, f"police-{t}", Role.police_station, police, f"{town_name}派出所社区民警")
        _seed_places(session, town_code, town_name, (lat0, lon0), grids, regulators)
    _user(session, "worker-a1", Role.grid_worker, get_by_code(session, "grid-a-1-1"), "网格员 王芳")
    _user(session, "worker-a2", Role.grid_worker, get_by_code(session, "grid-a-2-1"), "网格员 李强")
    _user(session, "worker-b1", Role.grid_worker, get_by_code(session, "grid-b-1-1"), "网格员 陈红")
    session.flush()
    hazards = _seed_hazards(session) if with_hazards else 0
    return {"places_created": len(session.exec(select(Place.id)).all()) - len(places_before), "hazards_created": hazards}


# (town, place class, category, severity, violation, what the worker wrote, days ago)
DEMO_HAZARDS = [
    ("a", PlaceClass.rental, "ebike_indoor", "general", False, "一楼楼道停放3辆电动自行车并飞线充电", 0),
    ("a", PlaceClass.nine_small, "improvised_wiring", "general", False, "后厨电线私拉乱接，插座串联使用", 1),
    ("a", PlaceClass.three_in_one, "three_in_one_mix", "general", False, "二楼加工区与住人区未进行防火分隔", 2),
    ("a", PlaceClass.self_built, "blocked_exit", "general", True, "安全出口被货物堵塞", 0),
    ("a", PlaceClass.crowded, "insufficient_exits", "major", False, "二层营业区仅一个安全出口", 3),
    ("a", PlaceClass.key_unit_3, "missing_alarm_extinguisher", "general", False, "灭火器过期未更换", 1),
    ("b", PlaceClass.rental, "window_bars", "general", False, "防盗窗封闭，无逃生口", 0),
    ("b", PlaceClass.nine_small, "lpg_misuse", "general", False, "液化气钢瓶放置在营业厅", 2),
    ("b", PlaceClass.key_unit_2, "missing_sprinkler", "major", False, "客房区喷淋系统瘫痪", 4),
]


def _seed_hazards(session: Session) -> int:
    from datetime import timedelta

    from app.audit.service import Actor
    from app.db import utcnow
    from app.hazards.models import Hazard
    from app.referrals.policy import load_policy
    from app.referrals.service import HazardReport, Rules, load_calendar, report_hazard

    rules = Rules(load_policy(), load_calendar(session))
    now = utcnow()
    created = 0
    for i, (t, place_class, category, severity, violation, text, days_ago) in enumerate(DEMO_HAZARDS):
        hid = str(uuid.uuid5(_NS, f"demo-hazard/{i}"))
        if session.get(Hazard, hid) is not None:
            continue
        place = session.exec(select(Place).join(OrgUnit, OrgUnit.id == Place.town_id)
                             .where(OrgUnit.code == f"town-{t}", Place.place_class == place_class).order_by(Place.name)).first()
        worker = session.exec(select(User).where(User.username == f"worker-{t}1")).one()
        found = now - timedelta(days=days_ago, hours=2)
        report_hazard(session, rules, HazardReport(id=hid, place_id=place.id, category=category, severity=severity,
                                                   violation=violation, description=text, found_at=found),
                      place, Actor(worker.id, worker.org_unit_id, None), now)
        created += 1
    session.flush()
    return created


def _seed_places(session, town_code, town_name, center, grids, regulators) -> None:
    rng = random.Random(town_code)  # same premises every run: ids and coordinates are stable
    n = 0
    for place_class, templates in PLACE_TEMPLATES.items():
        for template in templates:
            grid = grids[n % len(grids)]
            street = COMMUNITIES[grid.code.split("-")[2]][1]
            name = template.format(town=town_name[:2], street=street)
            pid = str(uuid.uuid5(_NS, f"{town_code}/{place_class}/{name}"))
            n += 1
            if session.get(Place, pid) is not None:
                continue
            regulator = next((regulators[r] for key, r in REGULATOR_FOR.items() if key in name), None)
            session.add(Place(
                id=pid, name=name, address=f"{town_name}{street}{rng.randint(1, 300)}号", grid_id=grid.id,
                town_id=grid.town_id, community_id=grid.community_id, place_class=place_class,
                lat=round(center[0] + rng.uniform(-0.02, 0.02), 6), lon=round(center[1] + rng.uniform(-0.02, 0.02), 6),
                owner_name=rng.choice(OWNERS), owner_phone=f"1{rng.randint(3, 9)}{rng.randint(100000000, 999999999)}",
                sector_regulator_id=regulator.id if regulator else None,
            ))
