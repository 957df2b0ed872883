"""The primary endpoint is derived from the daily SOFA by its setting; the trajectory is plotted."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from ecrf.study.endpoint import primary_endpoint, svg_plot

SERIES = {0: 11, 1: 10, 2: 9, 3: 9, 5: 8, 7: 7}


def test_the_default_is_the_change_from_d0_at_d7():
    e = primary_endpoint(SERIES)
    assert (e.kind, e.day, e.value) == ("change", 7, -4) and e.text.endswith("-4")


def test_the_value_at_a_day():
    assert primary_endpoint(SERIES, {"kind": "value", "day": 3}).value == 9


@pytest.mark.parametrize("points, expected", [(4, True), (5, False)])
def test_a_response_is_a_decrease_of_at_least_k_points_by_day_d(points, expected):
    e = primary_endpoint(SERIES, {"kind": "response", "day": 7, "points": points})
    assert e.value is expected


def test_missing_days_leave_the_endpoint_not_available_rather_than_guessed():
    assert primary_endpoint({0: 11, 1: 10}).value is None
    assert primary_endpoint({1: 10, 7: 8}).value is None
    assert primary_endpoint({0: 11, 1: 11}, {"kind": "response", "day": 7, "points": 2}).value \
        is None


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown primary endpoint kind"):
        primary_endpoint(SERIES, {"kind": "mean", "day": 7})


def test_the_plot_is_an_accessible_svg_with_d0_and_the_endpoint_marked():
    svg = svg_plot(SERIES, primary_endpoint(SERIES))
    root = ET.fromstring(svg)  # noqa: S314 (our own output)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.get("role") == "img"
    assert "D0 11" in root.find(f"{ns}desc").text and "-4" in root.find(f"{ns}desc").text
    classes = [c.get("class") for c in root.iter(f"{ns}circle")]
    assert classes.count("d0") == 1 and classes.count("endpoint") == 1 and len(classes) == 6
    assert "http://" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")
