"""HTTP conditional requests (RFC 9110 §13) for the desk's reads and writes of one record: the hazards' and
the premises' routers read If-Match and If-None-Match the same way. A record's ETag names its version, which
every change bumps; each router says how a tag of its records names one (``version_of``)."""

import re
from collections.abc import Callable

from app.errors import Invalid

# RFC 9110 §8.8.3: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; the headers list them, comma-separated
_TAG = re.compile(r'[ \t]*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"[ \t]*')


def versions_named(if_match: str | None, version_of: Callable[[str], int | None]) -> frozenset[int] | None:
    """The versions an If-Match header names; None when it is absent or ``*`` (which any existing record
    matches). ``version_of(opaque_tag)``: the version a tag of this kind of record names, None if it is not
    one. Anything else (no list of tags, a weak tag, another kind's or a made-up one) is a 422 naming the
    header, not a 412: it could never match, and "read it again" would not help the client that sent it."""
    if if_match is None or if_match.strip() == "*":
        return None
    versions, pos = set(), 0
    while True:
        m = _TAG.match(if_match, pos)
        version = version_of(m[2]) if m and not m[1] else None
        if version is None:
            raise Invalid('If-Match: must be * or the ETag (or a list of ETags) this server sent for the record, '
                          'in its double quotes', code="validation_error", field="If-Match")
        versions.add(version)
        pos = m.end()
        if pos == len(if_match):
            return frozenset(versions)
        if if_match[pos] != ",":
            raise Invalid("If-Match: entity tags are separated by commas", code="validation_error", field="If-Match")
        pos += 1


def not_modified(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match lists ``etag`` (weakly compared, §13.1.2) or is ``*``: a GET answers 304. A header that
    cannot be read matches nothing: no reason to withhold the record."""
    return if_none_match is not None and any(
        t.strip() in ("*", etag) or t.strip().removeprefix("W/") == etag for t in if_none_match.split(","))
