"""usernames are one account in any case: a unique index on lower(username)

Android keyboards capitalise the first letter: 'Zhangsan' and 'zhangsan' must be one account. The
username stays as typed (for display); logins find it by lower(username), and this index makes two
that differ only in case impossible, whatever writes them.

A database that already holds such a pair stops the upgrade, naming them: which account keeps the name
(the other renamed, or deactivated and renamed) is an administrator's decision, not a migration's.
Failed logins are kept under the lower-case username from now on; those of the last minutes move there.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 05:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def _clashes(conn) -> list[list[str]]:
    rows = conn.execute(sa.text(
        "SELECT username FROM users WHERE lower(username) IN "
        "(SELECT lower(username) FROM users GROUP BY lower(username) HAVING count(*) > 1) "
        "ORDER BY lower(username), username")).scalars().all()
    groups: dict[str, list[str]] = {}
    for name in rows:
        groups.setdefault(name.lower(), []).append(name)
    return list(groups.values())


def upgrade() -> None:
    clashes = _clashes(op.get_bind())
    if clashes:
        listed = "; ".join(", ".join(repr(n) for n in group) for group in clashes)
        raise RuntimeError(
            f"usernames are now the same account in any case, and these differ only in case: {listed}. "
            "Rename all but one of each group (UPDATE users SET username = '<new name>' WHERE username = "
            "'<old name>'; the user logs in with the new name, their devices and records stay theirs), then "
            "run the migration again. Nothing was changed.")
    op.create_index('uq_users_lower_username', 'users', [sa.text('lower(username)')], unique=True)
    op.execute("UPDATE login_failures SET username = lower(username)")


def downgrade() -> None:
    op.drop_index('uq_users_lower_username', table_name='users')
