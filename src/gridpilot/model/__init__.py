"""Value types shared by every part: identities, samples, units, topics, register enums.

Nothing here does I/O or reads a clock.
"""

from gridpilot.model.identity import (
    IDENTIFIER_PATTERN,
    SeriesKey,
    is_valid_identifier,
)
from gridpilot.model.registers import ByteOrder, DataType, Table, WordOrder
from gridpilot.model.sample import Sample
from gridpilot.model.time import now_ms, parse_timestamp_ms, to_rfc3339
from gridpilot.model.topics import Topic, TopicKind, parse_topic
from gridpilot.model.units import UNIT_SUFFIXES, unit_of

__all__ = [
    "IDENTIFIER_PATTERN",
    "UNIT_SUFFIXES",
    "ByteOrder",
    "DataType",
    "Sample",
    "SeriesKey",
    "Table",
    "Topic",
    "TopicKind",
    "WordOrder",
    "is_valid_identifier",
    "now_ms",
    "parse_timestamp_ms",
    "parse_topic",
    "to_rfc3339",
    "unit_of",
]
