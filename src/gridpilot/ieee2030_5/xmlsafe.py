"""Parsing IEEE 2030.5 XML from a peer without trusting it.

Every document a server returns (and every body the test server receives) is parsed here,
into the typed model the caller expects, or refused with ``XmlRejected``:

- larger than ``MAX_DOCUMENT_BYTES`` (a 2030.5 resource is a few kB; a paged list of
  events tens of kB) — refused before any parsing;
- not UTF-8 (2030.5 mandates it) — a declared other encoding could hide markup from the
  pre-scan below;
- any DOCTYPE or ENTITY declaration — 2030.5 documents never carry one, and it is how the
  billion-laughs expansion and external-entity (XXE) file reads get in. The parser is also
  configured never to resolve entities, load a DTD or touch the network, so a declaration
  that slipped past the scan still expands nothing;
- a root element outside the 2030.5 namespace or of another resource type;
- a document the model refuses: a required element missing, a value of the wrong type.

The message says which resource (``where``: method and URL), what was wrong and what to do
next; callers keep their last good copy of the resource (see client.py).
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from lxml import etree
from pydantic import ValidationError
from pydantic_xml import BaseXmlModel

from gridpilot.ieee2030_5.models import NAMESPACE

__all__ = ["MAX_DOCUMENT_BYTES", "XmlRejected", "parse_resource", "serialize"]

MAX_DOCUMENT_BYTES = 1024 * 1024
"""1 MiB: far above any real 2030.5 document, small enough to hold in memory safely."""

_MAX_REPORTED_ERRORS = 3

T = TypeVar("T", bound=BaseXmlModel)


class XmlRejected(ValueError):  # noqa: N818 -- the name the other modules were promised
    """A 2030.5 document that is not accepted; ``where`` names it, ``reason`` says why."""

    def __init__(self, where: str, resource: str, reason: str) -> None:
        self.where = where
        self.resource = resource
        self.reason = reason
        super().__init__(
            f"{where}: {resource} rejected: {reason}; the previous copy of this resource stays "
            "in force -- the server must serve a valid IEEE 2030.5 document "
            "(report it to the utility if it persists)"
        )


def _tag_of(model: type[BaseXmlModel]) -> str:
    tag = model.__xml_tag__
    return tag if tag is not None else model.__name__


def _hardened_parser() -> etree.XMLParser:
    # No entity resolution, no DTD, no network, no huge-tree escape hatch: even a document
    # that got past the declaration scan cannot expand or fetch anything.
    return etree.XMLParser(
        resolve_entities=False,
        load_dtd=False,
        dtd_validation=False,
        no_network=True,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:_MAX_REPORTED_ERRORS]:
        loc = ".".join(str(p) for p in err["loc"]) or "(document)"
        kind = err["type"]
        if kind == "missing":
            parts.append(f"required element {loc} is missing")
        else:
            parts.append(f"{loc}: {err['msg']} (got {err.get('input')!r:.60})")
    more = len(exc.errors()) - _MAX_REPORTED_ERRORS
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def parse_resource(body: bytes, model: type[T], *, where: str) -> T:
    """``body`` parsed into ``model``, or ``XmlRejected`` naming ``where`` and the reason."""
    resource = _tag_of(model)
    if len(body) > MAX_DOCUMENT_BYTES:
        raise XmlRejected(
            where,
            resource,
            f"document is {len(body)} bytes, over the {MAX_DOCUMENT_BYTES}-byte limit",
        )
    if not body.strip():
        raise XmlRejected(where, resource, "the body is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise XmlRejected(
            where, resource, f"not UTF-8 (byte {exc.start}); 2030.5 documents are UTF-8"
        ) from exc
    upper = text.upper()
    for declaration in ("<!DOCTYPE", "<!ENTITY"):
        if declaration in upper:
            raise XmlRejected(
                where,
                resource,
                f"it contains a {declaration[2:]} declaration, which 2030.5 documents never "
                "carry (entity expansion / external entity attack)",
            )
    try:
        root = etree.fromstring(body, parser=_hardened_parser())
    except etree.XMLSyntaxError as exc:
        raise XmlRejected(where, resource, f"not well-formed XML ({exc})") from exc
    qname = etree.QName(root)
    if qname.namespace != NAMESPACE:
        got = qname.namespace if qname.namespace is not None else "no namespace"
        raise XmlRejected(
            where,
            resource,
            f"root element <{qname.localname}> is in {got}, expected {NAMESPACE}",
        )
    if qname.localname != resource:
        raise XmlRejected(
            where, resource, f"root element is <{qname.localname}>, expected <{resource}>"
        )
    try:
        # pydantic-xml types its tree argument with its own backend alias of lxml's element.
        return model.from_xml_tree(cast(Any, root))
    except ValidationError as exc:
        raise XmlRejected(where, resource, _summarise(exc)) from exc


def serialize(resource: BaseXmlModel) -> bytes:
    """The UTF-8 XML of a resource to PUT/POST (absent optional elements left out)."""
    raw = resource.to_xml(skip_empty=True, exclude_none=True)
    return raw if isinstance(raw, bytes) else raw.encode("utf-8")
