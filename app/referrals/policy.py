"""The routing policy: rules as DATA in a TOML file, loaded and validated here.

PURE: no database, no web framework. The file says which tier (town office,
police station, brigade) receives a hazard, who is copied, whether it goes on
listed supervision (挂牌督办), the default rectification time per hazard
category (限期整改) and the acknowledgement / re-inspection clocks. What the
laws leave to local practice lives here, not in code (see DOMAIN.md).

Rules are evaluated in order and the first match wins; the last rule must be a
catch-all (no match conditions). Every validation error is reported as
``PolicyError`` with a message naming the file, the rule (id or #index) and the
field, e.g.::

    policy.toml: rule 'major-to-brigade': field 'tier': must be one of town_office, police_station, brigade

A category taken out of use is moved from ``[[categories]]`` to ``[[retired_categories]]`` (same
fields), not deleted: phones stop offering it on their next pull (the pull sends a tombstone for it),
and a hazard a phone captured under it before it heard of the change is still accepted under it,
routed by the rules (which may go on naming it) with the rectification period ``rectification_workdays``
keeps for it, or the default. A code deleted outright is unknown: reports still on phones that name it
are refused (``unknown_category``), though phones are told it is gone too.
"""

from __future__ import annotations

import functools
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

__all__ = [
    "CC_SECTOR_REGULATOR",
    "DEFAULT_POLICY_PATH",
    "SEVERITIES",
    "TIERS",
    "Category",
    "Policy",
    "PolicyError",
    "Rule",
    "load_policy",
    "parse_policy",
]

DEFAULT_POLICY_PATH = Path(__file__).with_name("default_policy.toml")

TIERS: tuple[str, ...] = ("town_office", "police_station", "brigade")
SEVERITIES: tuple[str, ...] = ("general", "major")
CC_SECTOR_REGULATOR = "sector_regulator"

Tier = Literal["town_office", "police_station", "brigade"]
Severity = Literal["general", "major"]
CcTarget = Literal["town_office", "police_station", "brigade", "sector_regulator"]

_CODE_RE = r"^[a-z][a-z0-9_]*$"


class PolicyError(Exception):
    """The policy file cannot be used. ``errors`` holds one line per problem."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = list(errors)
        super().__init__("\n".join(f"{source}: {e}" for e in self.errors))


class _Model(BaseModel):
    # extra="forbid": a typo such as `teir = "brigade"` must fail, not be ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Category(_Model):
    """A hazard category (隐患类别) of the checklist."""

    # at most 64 characters: what a hazard's category column holds, and what the pull cursor keeps of each
    # code a phone was sent (app.sync.pull: a longer one made every cursor unservable, a 410 on each pull)
    code: str = Field(pattern=_CODE_RE, max_length=64)
    name_zh: str = Field(min_length=1)
    name_en: str = Field(min_length=1)
    default_severity: Severity | None = None  # a hint for the reporting form only


class Rule(_Model):
    """One routing rule. ``None`` conditions match anything."""

    id: str = Field(min_length=1)
    # match conditions
    place_class: list[str] | None = Field(default=None, min_length=1)
    severity: Severity | None = None
    violation: bool | None = None
    town_enforcement: bool | None = None  # the town was granted enforcement power
    category: list[str] | None = Field(default=None, min_length=1)
    # outcome
    tier: Tier
    cc: list[CcTarget] = Field(default_factory=list)
    listed_supervision: bool = False  # 挂牌督办
    reason_zh: str = Field(min_length=1)
    reason_en: str = Field(min_length=1)

    @property
    def is_catch_all(self) -> bool:
        return (
            self.place_class is None
            and self.severity is None
            and self.violation is None
            and self.town_enforcement is None
            and self.category is None
        )

    def matches(
        self,
        *,
        place_class: str,
        severity: str,
        violation: bool,
        town_enforcement: bool,
        category: str,
    ) -> bool:
        return (
            (self.place_class is None or place_class in self.place_class)
            and (self.severity is None or severity == self.severity)
            and (self.violation is None or violation == self.violation)
            and (self.town_enforcement is None or town_enforcement == self.town_enforcement)
            and (self.category is None or category in self.category)
        )


def _rule_label(index: int, rule_id: Any) -> str:
    if isinstance(rule_id, str) and rule_id:
        return f"rule '{rule_id}'"
    return f"rule #{index + 1}"


class Policy(_Model):
    """The whole routing policy. ``version`` is stored with every decision."""

    version: str = Field(min_length=1)
    ack_workdays: PositiveInt = 1  # 报到 (acknowledge) within N working days
    reinspection_workdays: PositiveInt = 3  # 复查 within N working days
    order_workdays: PositiveInt = 3  # written rectification order within N working days of accepting (令120号)
    # a major hazard's written order: the collective decision's handling opinion within 7 working days, the
    # notice within 3 more (令120号), counted from accepting as order_workdays is
    major_order_workdays: PositiveInt = 10
    # per category: the report is checked within N calendar hours when that comes before ack_workdays
    # (令120号: a blocked escape route within 24 hours, over a weekend or a holiday too)
    ack_hours: dict[str, PositiveInt] = Field(default_factory=dict)
    rectification_workdays: dict[str, PositiveInt]  # per category; must contain "default"
    categories: list[Category]
    # taken out of use: no longer offered to phones, still accepted in reports captured before (see above)
    retired_categories: list[Category] = Field(default_factory=list)
    place_classes: list[str] = Field(min_length=1)
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _cross_checks(self) -> Policy:
        problems: list[str] = []

        seen_pc: set[str] = set()
        for pc in self.place_classes:
            if pc in seen_pc:
                problems.append(f"field 'place_classes': duplicate place class '{pc}'")
            seen_pc.add(pc)

        seen_cat: set[str] = set()
        for i, cat in enumerate(self.categories):
            if cat.code in seen_cat:
                problems.append(f"category '{cat.code}' (#{i + 1}): field 'code': duplicate category code")
            seen_cat.add(cat.code)

        seen_retired: set[str] = set()
        for i, cat in enumerate(self.retired_categories):
            if cat.code in seen_cat:
                problems.append(f"retired category '{cat.code}' (#{i + 1}): field 'code': both in [[categories]] "
                                "and retired: a category is one or the other")
            elif cat.code in seen_retired:
                problems.append(f"retired category '{cat.code}' (#{i + 1}): field 'code': duplicate category code")
            seen_retired.add(cat.code)

        if "default" not in self.rectification_workdays:
            problems.append("field 'rectification_workdays': must contain a 'default' entry")
        for key in self.rectification_workdays:
            if key != "default" and key not in seen_cat and key not in seen_retired:
                problems.append(
                    f"field 'rectification_workdays.{key}': unknown category '{key}' "
                    "(not in [[categories]], [[retired_categories]] or 'default')"
                )

        for key in self.ack_hours:
            if key not in seen_cat and key not in seen_retired:
                problems.append(f"field 'ack_hours.{key}': unknown category '{key}' (not in [[categories]] or "
                                "[[retired_categories]])")

        seen_ids: dict[str, int] = {}
        catch_all_at: int | None = None
        for i, rule in enumerate(self.rules):
            label = _rule_label(i, rule.id)
            if rule.id in seen_ids:
                problems.append(
                    f"{label}: field 'id': duplicate rule id (also rule #{seen_ids[rule.id] + 1})"
                )
            else:
                seen_ids[rule.id] = i
            for pc in rule.place_class or ():
                if pc not in seen_pc:
                    problems.append(
                        f"{label}: field 'place_class': unknown place class '{pc}' "
                        f"(must be one of {', '.join(self.place_classes)})"
                    )
            for cat in rule.category or ():  # a retired category's late reports may still be routed apart
                if cat not in seen_cat and cat not in seen_retired:
                    problems.append(f"{label}: field 'category': unknown category '{cat}'")
            if catch_all_at is not None:
                problems.append(
                    f"{label}: unreachable: it comes after the catch-all "
                    f"{_rule_label(catch_all_at, self.rules[catch_all_at].id)}"
                )
            elif rule.is_catch_all:
                catch_all_at = i

        last = len(self.rules) - 1
        if not self.rules[last].is_catch_all:
            problems.append(
                f"{_rule_label(last, self.rules[last].id)}: the last rule must be a catch-all "
                "(no place_class, severity, violation, town_enforcement or category condition)"
            )

        if problems:
            raise ValueError(_JOIN.join(problems))
        return self

    # -- helpers ---------------------------------------------------------------

    @functools.cached_property
    def category_codes(self) -> frozenset[str]:
        # asked once per reported hazard; the policy never changes once loaded (frozen)
        return frozenset(c.code for c in self.categories)

    @functools.cached_property
    def retired_codes(self) -> frozenset[str]:
        return frozenset(c.code for c in self.retired_categories)

    def accepts_category(self, code: str) -> bool:
        """Whether a reported hazard may name this category: a current one, or one retired since the
        phone captured the report."""
        return code in self.category_codes or code in self.retired_codes

    def category(self, code: str) -> Category | None:
        for c in self.categories:
            if c.code == code:
                return c
        return None

    def rectify_days(self, category: str) -> int:
        """Default rectification period in working days; unknown categories use 'default'."""
        return self.rectification_workdays.get(category, self.rectification_workdays["default"])


# Separator used to pass several cross-check problems through pydantic's ValueError.
_JOIN = "\n\x1f"


def _format_loc(loc: tuple[Any, ...], raw: Any) -> str:
    """Turn a pydantic error location into 'rule 'id': field 'x'' using the raw data for ids."""
    if not loc:
        return ""
    head = loc[0]
    if head in ("rules", "categories", "retired_categories") and len(loc) >= 2 and isinstance(loc[1], int):
        index = loc[1]
        item: Any = None
        if isinstance(raw, dict) and isinstance(raw.get(head), list) and index < len(raw[head]):
            item = raw[head][index]
        if head == "rules":
            label = _rule_label(index, item.get("id") if isinstance(item, dict) else None)
        else:
            code = item.get("code") if isinstance(item, dict) else None
            kind = "retired category" if head == "retired_categories" else "category"
            label = f"{kind} '{code}' (#{index + 1})" if isinstance(code, str) else f"{kind} #{index + 1}"
        rest = [str(p) for p in loc[2:]]
        if rest:
            return f"{label}: field '{'.'.join(rest)}'"
        return label
    return f"field '{'.'.join(str(p) for p in loc)}'"


def _format_msg(err: Any) -> str:
    etype = err.get("type")
    ctx = err.get("ctx") or {}
    if etype == "literal_error":
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        if allowed:
            return "must be one of " + ", ".join(allowed) + f" (got {err.get('input')!r})"
    if etype == "missing":
        return "is required"
    if etype == "extra_forbidden":
        return "unknown field (not part of the policy format)"
    msg = str(err.get("msg", "invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg.replace("Input should be", "must be").replace("List should have", "must have")


def _errors_from_validation(exc: ValidationError, raw: Any) -> list[str]:
    lines: list[str] = []
    for err in exc.errors():
        where = _format_loc(tuple(err.get("loc", ())), raw)
        msg = _format_msg(err)
        if not err.get("loc") and err.get("type") == "value_error":
            # our own cross checks: already carry their location
            lines.extend(part for part in msg.split(_JOIN) if part)
            continue
        lines.append(f"{where}: {msg}" if where else msg)
    return lines


def parse_policy(text: str, source_name: str = "policy.toml") -> Policy:
    """Parse and validate policy TOML text; ``source_name`` appears in every error."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(source_name, [f"invalid TOML: {exc}"]) from exc
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        raise PolicyError(source_name, _errors_from_validation(exc, raw)) from exc


def load_policy(path: str | Path = DEFAULT_POLICY_PATH) -> Policy:
    """Read and validate a policy file (UTF-8 TOML)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(str(p), [f"cannot read policy file: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise PolicyError(str(p), [f"not UTF-8: {exc}"]) from exc
    return parse_policy(text, str(p))
