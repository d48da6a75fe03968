"""PostgreSQL: a phone's stale copy pushed while the premises is being reclassed. The stale-copy check is made
on the row as locked, so it sees the class the reclass committed: the class is kept, the rest applied
(before, it read the row unlocked: a worker's op was refused, an admin's undid the reclass)."""
import pytest
from sqlmodel import Session, select

from app.auth.models import Device, User
from app.auth.scope import scope_for
from app.places.models import Place, PlaceUpdate
from app.places.service import update_place
from app.sync import service as sync
from app.sync.schemas import Op
from tests.helpers import op, uid
from tests.referrals.test_relocation_races import NOW, pg  # noqa: F401 (fixture)


def _ctx(pg, session, username):
    user = session.exec(select(User).where(User.username == username)).one()
    dev = session.exec(select(Device).where(Device.device_key == f"rv-{username}")).first()
    if dev is None:
        dev = Device(id=uid(), user_id=user.id, device_key=f"rv-{username}")
        session.add(dev)
        session.flush()
    return sync.PushContext(session=session, rules=pg.rules, scope=scope_for(session, user), user=user,
                            device=dev, now=NOW)


@pytest.mark.parametrize("pusher", ["worker-a1", "admin"])
def test_a_stale_copy_pushed_during_a_reclass_keeps_the_new_class(pg, pusher):
    with Session(pg.engine) as s:
        p = s.get(Place, pg.place_id)
        assert (p.place_class, p.version, p.field_versions) == ("rental", 1, {})
        data = {"id": p.id, "name": p.name, "address": p.address, "grid_id": p.grid_id, "place_class": "rental",
                "owner_phone": "13800000009", "base_version": 1}
    # police-a raises it to key_unit_3 (version 2, the class's too), not yet committed
    held = pg.session()
    police = held.exec(select(User).where(User.username == "police-a")).one()
    update_place(held, scope_for(held, police), held.get(Place, pg.place_id), PlaceUpdate(place_class="key_unit_3"),
                 rules=pg.rules)
    held.flush()
    writer = pg.session()
    ctx = _ctx(pg, writer, pusher)
    ops = [Op.model_validate(op("place.upsert", data))]
    results = []
    pg.race(held, writer, lambda: results.extend(sync.apply_push(ctx, ops, None, writer)))
    [res] = results
    with Session(pg.engine) as s:
        p = s.get(Place, pg.place_id)
        state = (p.place_class, p.owner_phone, p.version, p.field_versions["place_class"][0])
    # the copy (version 1) predates the class change (version 2): the class must be kept, the phone applied
    assert res.status == "applied", (res, state)
    assert res.result.get("kept_why") == {"place_class": "stale_copy"}, (res, state)
    assert state[:2] == ("key_unit_3", "13800000009"), state
