"""HTTP conditional requests (RFC 9110 §13) for the desk's reads and writes of one record: the hazards' and
the premises' routers read If-Match and If-None-Match the same way. A record's ETag names its version, which
every change bumps; each router says how a tag of its records names one (``version_of``).

The routers take the headers as lists (``Header()`` typed ``list[str]``): a field sent on several lines is the
one list of them all (RFC 9110 §5.3)."""

import re
from collections.abc import Callable

from app.errors import Invalid

# RFC 9110 §8.8.3: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE
_TAG = re.compile(r'(W/)?"([\x21\x23-\x7e\x80-\xff]*)"')


def tag_versions(pattern: str) -> Callable[[str], int | None]:
    """A router's ``version_of``: the version a tag of its records names (the pattern's first group), or None."""
    regex = re.compile(pattern)

    def version_of(tag: str) -> int | None:
        m = regex.fullmatch(tag)
        return int(m[1]) if m else None
    return version_of


def etag_header(description: str) -> dict:
    """The ETag response header, for a route's OpenAPI ``responses``."""
    return {"ETag": {"description": description, "schema": {"type": "string"}}}


def _elements(lines: list[str] | None) -> list[str]:
    """The list's elements, empty ones left out (§5.6.1.2: a recipient MUST accept and ignore them)."""
    return [e.strip() for line in lines or () for e in line.split(",") if e.strip()]


def versions_named(if_match: list[str] | None, version_of: Callable[[str], int | None]) -> frozenset[int] | None:
    """The versions an If-Match header names; None when it is absent or ``*`` (which any existing record
    matches). ``version_of(opaque_tag)``: the version a tag of this kind of record names, None if it is not
    one. Anything else (not a list of tags, another kind's or a made-up one) is a 422 naming the header, not
    a 412: it could never match, and "read it again" would not help the client that sent it.

    A weak tag (``W/"…"``) names its version as the strong one does. RFC 9110 compares If-Match strongly, so a
    weak tag would never match; but the tag's version is what is compared here, and a proxy that compresses
    the answers (nginx's gzip) weakens the ETag the desk then sends back: refused, it could never write."""
    elements = _elements(if_match)
    if if_match is None or elements == ["*"]:
        return None
    versions = set()
    for element in elements:
        m = _TAG.fullmatch(element)
        version = version_of(m[2]) if m else None
        if version is None:
            raise Invalid('If-Match: must be * or the ETag (or a list of ETags) this server sent for the record, '
                          'in its double quotes', code="validation_error", field="If-Match")
        versions.add(version)
    if not versions:  # only commas: no tag at all
        raise Invalid("If-Match: names no ETag", code="validation_error", field="If-Match")
    return frozenset(versions)


def not_modified(if_none_match: list[str] | None, etag: str) -> bool:
    """If-None-Match is ``*`` or lists ``etag`` (weakly compared, §13.1.2): a GET answers 304. A header that
    cannot be read matches nothing: no reason to withhold the record."""
    elements = _elements(if_none_match)
    return elements == ["*"] or any(e.removeprefix("W/") == etag for e in elements)
