"""Item types: each knows how to parse what a user typed, how it is stored, shown and exported.

A parse error is a ``ItemValueError`` whose message says what is wrong and what was found; nothing
is ever stored from a value that did not parse. French input is accepted: a decimal comma, and
dates as typed by a browser's date field (ISO).
"""

from __future__ import annotations

import csv
import functools
import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

#: storage columns of ItemValue, one per kind of value
COLUMNS = ("value_text", "value_int", "value_dec", "value_date", "value_dt")

#: codes are stored; labels are shown in the user's language
NULL_FLAVORS: dict[str, str] = {
    "NI": _l("Not done"),
    "UNK": _l("Unknown"),
    "NA": _l("Not applicable"),
    "ASKU": _l("Asked but unknown"),
}


class ItemValueError(ValueError):
    """A value that cannot be stored as typed; the message is shown next to the item (in the
    user's language: outside a request, English)."""


@dataclass(frozen=True)
class ItemType:
    """Base class. Subclasses set ``name``, ``odm`` (ODM 1.3.2 DataType) and ``column``."""

    name: ClassVar[str] = ""
    odm: ClassVar[str] = "text"
    column: ClassVar[str] = "value_text"
    input_type: ClassVar[str] = "text"

    def parse(self, raw: str) -> Any:
        """Text from the form -> the stored value (raw is stripped, never empty)."""
        return raw

    def text(self, value: Any) -> str:
        """The canonical text of a value: for audit digests, display and export."""
        return str(value)

    def from_text(self, text: str) -> Any:
        """Inverse of ``text`` (used to read back audit values and exports)."""
        return self.parse(text)

    def coerce(self, value: Any) -> Any:
        """A computed (derived) value in this type's storage form."""
        return value

    def is_empty(self, raw: Any) -> bool:
        return raw is None or (isinstance(raw, str) and not raw.strip()) or raw == []

    def choices(self) -> list[tuple[str, str]] | None:
        return None

    @property
    def multiple(self) -> bool:
        return False


@dataclass(frozen=True)
class Integer(ItemType):
    name: ClassVar[str] = "integer"
    odm: ClassVar[str] = "integer"
    column: ClassVar[str] = "value_int"
    # a text input (numeric keypad): a browser's number input drops what it cannot parse, and
    # the server could neither explain the error nor keep what was typed

    def parse(self, raw: str) -> int:
        if not re.fullmatch(r"[+-]?\d{1,15}", raw.strip()):
            raise ItemValueError(_("A whole number is expected; found %(found)s.", found=repr(raw)))
        return int(raw)

    def coerce(self, value) -> int:
        return int(Decimal(str(value)).to_integral_value(rounding=ROUND_HALF_UP))


@dataclass(frozen=True)
class DecimalNumber(ItemType):
    """A decimal with at most ``precision`` digits after the point (comma accepted)."""

    precision: int = 2
    name: ClassVar[str] = "decimal"
    odm: ClassVar[str] = "float"
    column: ClassVar[str] = "value_dec"

    def parse(self, raw: str) -> Decimal:
        text = raw.strip().replace(",", ".")
        if not re.fullmatch(r"[+-]?(\d{1,12}(\.\d*)?|\.\d+)", text):
            raise ItemValueError(
                _("A number is expected (e.g. 7.5 or 7,5); found %(found)s.", found=repr(raw)))
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise ItemValueError(_("A number is expected; found %(found)s.", found=repr(raw))) from None
        if -value.as_tuple().exponent > self.precision:
            raise ItemValueError(_("At most %(n)s decimal place(s) are allowed; found %(found)s.",
                                   n=self.precision, found=repr(raw)))
        return value

    def text(self, value) -> str:
        return format(Decimal(value).normalize(), "f") if value is not None else ""

    def coerce(self, value) -> Decimal:
        return Decimal(str(value)).quantize(Decimal(1).scaleb(-self.precision),
                                            rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Text(ItemType):
    max_length: int = 500
    name: ClassVar[str] = "text"
    odm: ClassVar[str] = "string"

    def parse(self, raw: str) -> str:
        if len(raw) > self.max_length:
            raise ItemValueError(_("At most %(n)s characters; found %(found)s.", n=self.max_length,
                                   found=len(raw)))
        if any(ord(c) < 32 and c not in "\t\n\r" for c in raw):
            raise ItemValueError(_("Control characters are not allowed."))
        return raw


@dataclass(frozen=True)
class Date(ItemType):
    name: ClassVar[str] = "date"
    odm: ClassVar[str] = "date"
    column: ClassVar[str] = "value_date"
    input_type: ClassVar[str] = "date"

    def parse(self, raw: str) -> date:
        text = raw.strip()
        m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})", text) or re.fullmatch(
            r"(\d{2})/(\d{2})/(\d{4})", text)
        if not m:
            raise ItemValueError(_("A date is expected as YYYY-MM-DD or DD/MM/YYYY; found %(found)s.",
                                   found=repr(raw)))
        y, mo, d = (m.group(1), m.group(2), m.group(3)) if "-" in text else (
            m.group(3), m.group(2), m.group(1))
        try:
            return date(int(y), int(mo), int(d))
        except ValueError:
            raise ItemValueError(_("%(found)s is not a date in the calendar.",
                                   found=repr(raw))) from None

    def text(self, value) -> str:
        return value.isoformat()


@dataclass(frozen=True)
class PartialDate(ItemType):
    """YYYY, YYYY-MM or YYYY-MM-DD, stored at the precision known, never zero-filled (CDASH)."""

    name: ClassVar[str] = "partial_date"
    odm: ClassVar[str] = "partialDate"

    def parse(self, raw: str) -> str:
        text = raw.strip()
        m = re.fullmatch(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?", text)
        if not m:
            raise ItemValueError(_("A date is expected as YYYY, YYYY-MM or YYYY-MM-DD; found %(found)s.",
                                   found=repr(raw)))
        year, month, day = m.groups()
        if not 1900 <= int(year) <= 2100:
            raise ItemValueError(_("The year %(year)s is not plausible.", year=year))
        if month is not None and not 1 <= int(month) <= 12:
            raise ItemValueError(_("The month %(month)s does not exist (found %(found)s).", month=month,
                                   found=repr(raw)))
        if day is not None:
            try:
                date(int(year), int(month), int(day))
            except ValueError:
                raise ItemValueError(_("%(found)s is not a date in the calendar.",
                                       found=repr(raw))) from None
        return text


@dataclass(frozen=True)
class DateTime(ItemType):
    """Entered in the site's local time, stored in UTC, shown in local time with its offset."""

    name: ClassVar[str] = "datetime"
    odm: ClassVar[str] = "datetime"
    column: ClassVar[str] = "value_dt"
    input_type: ClassVar[str] = "datetime-local"

    def parse(self, raw: str, tz: str = "UTC") -> datetime:
        text = raw.strip().replace(" ", "T")
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ItemValueError(_("A date and time is expected as YYYY-MM-DD HH:MM; found %(found)s.",
                                   found=repr(raw))) from None
        if value.tzinfo is None:
            value = value.replace(tzinfo=ZoneInfo(tz))
        return value.astimezone(UTC)

    def text(self, value) -> str:
        return value.astimezone(UTC).isoformat(timespec="minutes").replace("+00:00", "Z")

    def from_text(self, text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Time(ItemType):
    name: ClassVar[str] = "time"
    odm: ClassVar[str] = "time"
    input_type: ClassVar[str] = "time"

    def parse(self, raw: str) -> str:
        text = raw.strip()
        if not re.fullmatch(r"\d{2}:\d{2}", text):
            raise ItemValueError(_("A time is expected as HH:MM; found %(found)s.", found=repr(raw)))
        try:
            time.fromisoformat(text)
        except ValueError:
            raise ItemValueError(_("%(found)s is not a time of day.", found=repr(raw))) from None
        return text


@dataclass(frozen=True)
class Choice(ItemType):
    """One code from a codelist: ``(code, label)`` pairs."""

    codelist: tuple[tuple[str, str], ...] = ()
    name: ClassVar[str] = "choice"
    odm: ClassVar[str] = "text"

    def parse(self, raw: str) -> str:
        codes = [c for c, _ in self.codelist]
        if raw not in codes:
            raise ItemValueError(_("Choose one of the listed answers; found %(found)s.", found=repr(raw)))
        return raw

    def choices(self):
        return list(self.codelist)

    def label(self, code: str) -> str:
        return dict(self.codelist).get(code, code)


@dataclass(frozen=True)
class MultiChoice(Choice):
    """Several codes from a codelist, stored as a JSON list in codelist order."""

    name: ClassVar[str] = "multi_choice"

    def parse(self, raw) -> list[str]:
        if isinstance(raw, list):
            values = raw
        elif raw.startswith("["):  # the stored form, a JSON list (CLI, loaders)
            try:
                values = json.loads(raw)
            except ValueError:
                values = None
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ItemValueError(_("Choose among the listed answers; found %(found)s.",
                                       found=repr(raw)))
        else:
            values = [raw]
        codes = [c for c, _ in self.codelist]
        unknown = [v for v in values if v not in codes]
        if unknown:
            raise ItemValueError(_("Choose among the listed answers; found %(found)s.",
                                   found=repr(unknown)))
        return [c for c in codes if c in values]

    def text(self, value) -> str:
        return json.dumps(list(value))

    @property
    def multiple(self) -> bool:
        return True


YES_NO = (("Y", "Yes"), ("N", "No"))


@dataclass(frozen=True)
class YesNo(Choice):
    codelist: tuple[tuple[str, str], ...] = YES_NO
    name: ClassVar[str] = "yes_no"


CTCAE_CSV = Path(__file__).resolve().parent / "data" / "ctcae_v5.0.csv"


@functools.cache
def ctcae_terms() -> dict[str, dict]:
    """The CTCAE v5.0 terms by MedDRA code, from the copy shipped in the package.

    Each row keeps its term and the grades it defines ("-" in the CSV = grade not defined).
    """
    with CTCAE_CSV.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {
        r["MedDRA Code"]: {
            "term": r["CTCAE Term"], "soc": r["MedDRA SOC"],
            "grades": tuple(g for g in range(1, 6) if r[f"Grade {g}"].strip() not in ("", "-")),
        }
        for r in rows
    }


@dataclass(frozen=True)
class CtcaeTerm(ItemType):
    """A CTCAE v5.0 term, stored by its MedDRA code."""

    name: ClassVar[str] = "ctcae_term"
    odm: ClassVar[str] = "text"

    def parse(self, raw: str) -> str:
        code = raw.strip()
        if code not in ctcae_terms():
            raise ItemValueError(_("Choose a CTCAE v5.0 term from the list; found %(found)s.",
                                   found=repr(raw)))
        return code

    def choices(self):
        return sorted(((c, r["term"]) for c, r in ctcae_terms().items()), key=lambda p: p[1])

    def label(self, code: str) -> str:
        row = ctcae_terms().get(code)
        return row["term"] if row else code


TYPES = {t.name: t for t in (Integer, DecimalNumber, Text, Date, PartialDate, DateTime, Time,
                             Choice, MultiChoice, YesNo, CtcaeTerm)}
