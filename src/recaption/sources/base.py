"""What every reader yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recaption.errors import UserError


class SourceError(UserError, ValueError):
    """The source as a whole is unusable (missing path or column, wrong column type)."""


@dataclass
class RawRecord:
    """One image with its captions, as read from a source, not yet validated.

    `caption` may be bytes when the reader could not know the encoding; ingest
    decodes it strictly as UTF-8. `reject` is set when the reader already knows
    the record cannot enter the dataset (then `data` may be None).
    """

    key: str
    source: str
    data: bytes | None
    caption: str | bytes | None
    short: str | None = None
    descriptive: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    reject: tuple[str, str] | None = None
