"""A toy CRF, declared in one module: the engine tests add it with one line in the schedule."""

from decimal import Decimal

from ecrf.forms.definition import CRF, Check, Group, Item, Range
from ecrf.forms.items import Choice, DateTime, DecimalNumber, Integer, MultiChoice, PartialDate, Text, YesNo
from ecrf.i18n import msg


def _bmi(v):
    if v.get("weight") is None or v.get("height") is None:
        return None
    return (Decimal(v["weight"]) / (Decimal(v["height"]) / 100) ** 2).quantize(Decimal("0.1"))


def _fever_needs_temperature(v):
    if v.get("fever") == "Y" and v.get("temperature") is not None and v["temperature"] < 38:
        return msg("Fever is 'yes' but the temperature is %(temperature)s °C (fever means >= 38 °C).",
                   temperature=v["temperature"])
    return None


def _not_before_inclusion(v, context):
    """A cross-form check: the measurement is not before the subject's inclusion (D0)."""
    d0 = context.subject.inclusion_date
    measured = v.get("measured_at")
    if d0 is not None and measured is not None and measured.date() < d0:
        return msg("Measured on %(measured)s, before inclusion on %(d0)s.", measured=measured.date(), d0=d0)
    return None


DEFINITION = CRF(
    key="toy_vitals",
    title="Toy vital signs",
    version=1,
    groups=(
        Group("body", "Body", (
            Item("weight", "Weight", DecimalNumber(1), unit="kg", required=True,
                 hard=Range(Decimal(1), Decimal(400)), soft=Range(Decimal(35), Decimal(200)),
                 critical=True, sas_name="WEIGHT"),
            Item("height", "Height", Integer(), unit="cm", hard=Range(50, 250)),
            Item("bmi", "Body mass index", DecimalNumber(1), unit="kg/m2", derive=_bmi,
                 derive_from=("weight", "height")),
        )),
        Group("fever", "Fever", (
            Item("fever", "Fever", YesNo(), required=True),
            Item("temperature", "Highest temperature", DecimalNumber(1), unit="°C",
                 hard=Range(Decimal(30), Decimal(45)),
                 show_if=lambda v: v.get("fever") == "Y", show_if_items=("fever",),
                 sas_name="TEMP"),
            Item("onset", "Onset of fever", PartialDate(), show_if=lambda v: v.get("fever") == "Y",
                 show_if_items=("fever",)),
        )),
        Group("other", "Other", (
            Item("measured_at", "Measured at", DateTime(), sas_name="MEASAT"),
            Item("position", "Position", Choice((("SUP", "Supine"), ("SIT", "Sitting")))),
            Item("devices", "Devices", MultiChoice((("ECG", "ECG"), ("SPO2", "Pulse oximeter"),
                                                   ("ART", "Arterial line")))),
            Item("comment", "Comment", Text(200)),
        )),
    ),
    checks=(
        Check("TOY-01", "hard", ("fever", "temperature"), _fever_needs_temperature),
        Check("TOY-02", "hard", ("measured_at",), _not_before_inclusion, cross_form=True),
    ),
)
