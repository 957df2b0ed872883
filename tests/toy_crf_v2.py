"""Amendment of the toy CRF: version 2 adds an item; version 1 stays for data entered against it."""

from dataclasses import replace

from ecrf.forms.definition import Group, Item, Range
from ecrf.forms.items import Integer
from tests import toy_crf

V1 = toy_crf.DEFINITION
DEFINITION = replace(V1, version=2, groups=(*V1.groups, Group("oxygen", "Oxygen", (
    Item("spo2", "SpO2", Integer(), unit="%", hard=Range(50, 100)),)),))
PREVIOUS = (V1,)
