"""The declarative CRF definition: one object per CRF module drives its page, storage, checks and
export (ODM ItemDef/CodeList/ItemData)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ecrf.forms.items import ItemType
from ecrf.i18n import Message, msg

Values = Mapping[str, Any]


class DefinitionError(ValueError):
    """A CRF definition or the schedule is inconsistent; the app refuses to start."""


@dataclass(frozen=True)
class Range:
    """Inclusive bounds; either may be None."""

    low: Decimal | int | None = None
    high: Decimal | int | None = None

    def contains(self, value) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def describe(self, unit: str | None = None) -> Message:
        """The bounds in words (with the unit, which is not translated)."""
        if self.low is not None and self.high is not None:
            text = msg("between %(low)s and %(high)s", low=self.low, high=self.high)
        elif self.low is not None:
            text = msg("at least %(low)s", low=self.low)
        else:
            text = msg("at most %(high)s", high=self.high)
        return msg("%(range)s %(unit)s", range=text, unit=unit) if unit else text


@dataclass(frozen=True)
class Item:
    """One question of a CRF.

    ``show_if`` is a predicate on the form's values: when false the item is hidden and must be
    empty. ``derive`` computes a derived item from the other values (the browser never sends it).
    ``critical`` marks data for source verification. ``sas_name`` is the <= 8-character name
    for SAS transport (default: the key upper-cased, when short enough).
    """

    key: str
    label: str
    type: ItemType
    help: str = ""
    unit: str | None = None
    required: bool = False
    hard: Range | None = None
    soft: Range | None = None
    show_if: Callable[[Values], bool] | None = None
    show_if_items: tuple[str, ...] = ()
    derive: Callable[[Values], Any] | None = None
    derive_from: tuple[str, ...] = ()
    #: the derivation also reads the casebook: ``derive(values, context)`` (e.g. an age at the
    #: inclusion date)
    derive_context: bool = False
    critical: bool = False
    sas_name: str | None = None

    @property
    def derived(self) -> bool:
        return self.derive is not None

    @property
    def short_name(self) -> str:
        return (self.sas_name or self.key).upper()

    def oid(self, crf_key: str) -> str:
        return f"I.{crf_key.upper()}.{self.key.upper()}"


@dataclass(frozen=True)
class Group:
    key: str
    title: str
    items: tuple[Item, ...]


@dataclass(frozen=True)
class Finding:
    """The result of an edit check that fired."""

    check_id: str
    severity: str  # "hard" blocks the save; "soft" asks for confirmation
    message: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class Check:
    """An edit check: a pure function of the form's values (and a context for cross-form checks).

    ``rule`` returns None when the values pass, or a message that states the rule and the value
    found. Checks run in the service, so the web, the CLI and loaders get the same rules.
    """

    id: str
    severity: str
    items: tuple[str, ...]
    rule: Callable[..., str | None]
    cross_form: bool = False

    def run(self, values: Values, context: Any = None) -> Finding | None:
        if any(values.get(k) is None for k in self.items):
            return None  # a check speaks about values that are there; "required" covers absence
        message = self.rule(values, context) if self.cross_form else self.rule(values)
        return Finding(self.id, self.severity, message, self.items) if message else None


@dataclass(frozen=True)
class CRF:
    key: str
    title: str
    version: int
    groups: tuple[Group, ...]
    checks: tuple[Check, ...] = ()
    repeating: bool = False
    description: str = ""
    oid: str = ""

    def __post_init__(self):
        if not self.oid:
            object.__setattr__(self, "oid", f"F.{self.key.upper()}")

    @property
    def items(self) -> tuple[Item, ...]:
        return tuple(i for g in self.groups for i in g.items)

    def item(self, key: str) -> Item:
        for i in self.items:
            if i.key == key:
                return i
        raise KeyError(key)

    def validate(self) -> None:
        """Fail fast on an inconsistent definition (unique keys, names, references)."""
        where = f"CRF {self.key!r} v{self.version}"
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.key):
            raise DefinitionError(f"{where}: the key must be lower snake case")
        keys = [i.key for i in self.items]
        dupes = {k for k in keys if keys.count(k) > 1}
        if dupes:
            raise DefinitionError(f"{where}: duplicate item keys {sorted(dupes)}")
        names = [i.short_name for i in self.items]
        for item in self.items:
            if len(item.short_name) > 8 or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", item.short_name):
                raise DefinitionError(
                    f"{where}: item {item.key!r} needs a SAS name of at most 8 letters/digits")
            if names.count(item.short_name) > 1:
                raise DefinitionError(f"{where}: SAS name {item.short_name} is not unique")
            for ref in (*item.show_if_items, *item.derive_from):
                if ref not in keys:
                    raise DefinitionError(
                        f"{where}: item {item.key!r} refers to unknown item {ref!r}")
            if item.show_if is not None and not item.show_if_items:
                raise DefinitionError(f"{where}: item {item.key!r} must name its show_if items")
        ids = [c.id for c in self.checks]
        if len(set(ids)) != len(ids):
            raise DefinitionError(f"{where}: duplicate check ids")
        for check in self.checks:
            if check.severity not in ("hard", "soft"):
                raise DefinitionError(f"{where}: check {check.id} severity must be hard or soft")
            for ref in check.items:
                if ref not in keys:
                    raise DefinitionError(
                        f"{where}: check {check.id} refers to unknown item {ref!r}")

    def fingerprint(self) -> str:
        """What identifies this definition's content, for change control."""
        parts = [self.key, self.oid, str(self.version)]
        for item in self.items:
            parts.append("|".join(map(str, (
                item.key, item.type.name, getattr(item.type, "precision", ""),
                getattr(item.type, "codelist", ""), item.unit, item.required, item.hard, item.soft,
                item.show_if_items, item.derive_from, item.critical, item.short_name))))
        parts.extend(f"{c.id}:{c.severity}:{c.items}" for c in self.checks)
        return "\n".join(parts)


def visible(item: Item, values: Values) -> bool:
    return item.show_if is None or bool(item.show_if(values))
