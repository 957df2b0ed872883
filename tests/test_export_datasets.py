"""Analysis datasets: one table per CRF (one row per form instance, coded values with their labels,
null flavors in their own column, dates as dates) and a data dictionary, as CSV, SAS transport v5,
SPSS and Stata, zipped with a manifest whose digests detect any changed file."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from datetime import date, datetime

import pandas as pd
import pyreadstat
import pytest

from ecrf.access.grants import Access
from ecrf.auth.services import system_actor
from ecrf.casebook.services import Slot, Submitted, mark_not_done, save_form
from ecrf.exports import datasets, jobs
from ecrf.exports.datasets import layout, short_name, verify_manifest
from ecrf.forms import registry
from ecrf.forms.definition import CRF, Group, Item
from ecrf.forms.items import Choice, Integer, YesNo

READERS = {"xpt": pyreadstat.read_xport, "sav": pyreadstat.read_sav, "dta": pyreadstat.read_dta}
#: 184 characters, 224 bytes: more than SAS transport v5 keeps
COMMENT = ("Pesée à côté du lit, réévaluée à J1; " * 5).strip()


@pytest.fixture
def study(make):
    """Two included subjects at site 01 (one with the toy CRF: a null flavor, a multiple choice,
    a date-time, a long comment; a second toy form not done), one at site 02."""
    first, second = make.included("01", seed=1), make.included("01", seed=2)
    other = make.included("02", seed=3)
    saved = save_form(system_actor(), first, "toy_vitals", Slot("D1"), Submitted(
        {"weight": "70.5", "fever": "Y", "temperature": "38.5", "onset": "2026-01",
         "measured_at": f"{first.inclusion_date.isoformat()} 12:30", "position": "SUP",
         "devices": ["SPO2", "ECG"], "comment": COMMENT},
        null_flavors={"height": ("UNK", "scale broken")}))
    assert saved.ok, saved.errors
    mark_not_done(system_actor(), second, "toy_vitals", Slot("D1"), "Transferred")
    return {"first": first, "second": second, "other": other}


@pytest.fixture
def exporter(make):
    user = make.user("dm-export", role="data_manager")
    return user, Access.for_user(user, "export.run").actor(None)


def _export(exporter, scope=None):
    job = jobs.export_now(exporter[1], "datasets", scope or jobs.Scope())
    return job, jobs.file_path(job)


def _manifest(path) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("manifest.json"))


def _member(path, name) -> str:
    with zipfile.ZipFile(path) as z:
        return z.read(name).decode("utf-8")


def _csv(path, name) -> list[dict]:
    return list(csv.DictReader(io.StringIO(_member(path, f"csv/{name.lower()}.csv"))))


def _read(path, tmp_path, table, ext):
    folder = {"xpt": "sas", "sav": "spss", "dta": "stata"}[ext]
    target = tmp_path / f"{table.lower()}.{ext}"
    with zipfile.ZipFile(path) as z:
        target.write_bytes(z.read(f"{folder}/{table.lower()}.{ext}"))
    return READERS[ext](str(target))


def _table(crf_key):
    return next(t for t in layout() if t.crf_key == crf_key)


def test_the_zip_holds_every_crf_in_four_formats_with_a_dictionary_and_a_manifest(study, exporter):
    job, path = _export(exporter)
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
    tables = [t.name for t in layout()] + ["DATADICT", "CODELIST"]
    assert "TOYVITAL" in tables and "DEMOGRAP" in tables and "SUBJECTS" in tables
    for table in tables:
        for folder, ext in (("csv", "csv"), ("sas", "xpt"), ("spss", "sav"), ("stata", "dta")):
            assert f"{folder}/{table.lower()}.{ext}" in names
    assert {"manifest.json", "README.txt"} <= names
    manifest = _manifest(path)
    assert manifest["exported_by"]["username"] == "dm-export"
    assert manifest["exported_by"]["export_job"] == job.id
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest["exported_at"])
    assert manifest["scope"] == {"label": "study", "site": None, "subject": None, "subjects": 3}
    definition = manifest["study_definition"]
    assert len(definition["fingerprint"]) == 64 and definition["crf_versions"]["toy_vitals"] == [1]
    files = {f["path"]: f for f in manifest["files"]}
    assert set(files) == names - {"manifest.json"}
    assert files["csv/subjects.csv"]["rows"] == 3
    assert files["csv/toyvital.csv"]["rows"] == 2 and files["sas/toyvital.xpt"]["rows"] == 2
    assert all(len(f["sha256"]) == 64 for f in files.values())
    assert "NAME_NF" in _member(path, "README.txt")


@pytest.mark.requirement("A11-17", "EMA-11", "E6-4.2.5")
def test_the_manifest_digests_match_and_a_changed_file_is_detected(study, exporter, tmp_path):
    _job, path = _export(exporter)
    assert verify_manifest(path) == []

    def rewrite(target, change):
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(target, "w") as dst:
            for info in src.infolist():
                data = change(info.filename, src.read(info.filename))
                if data is not None:
                    dst.writestr(info.filename, data)
        return target

    tampered = rewrite(tmp_path / "tampered.zip", lambda name, data: data.replace(
        b"SUP", b"SIT", 1) if name == "csv/toyvital.csv" else data)
    assert verify_manifest(tampered) == ["csv/toyvital.csv: SHA-256 differs from the manifest"]
    missing = rewrite(tmp_path / "missing.zip", lambda name, data: None if name == "stata/demograp.dta"
                      else data)
    assert verify_manifest(missing) == ["stata/demograp.dta: listed in the manifest but missing"]
    extra = rewrite(tmp_path / "extra.zip", lambda name, data: data)
    with zipfile.ZipFile(extra, "a") as z:
        z.writestr("csv/extra.csv", "A\n1\n")
    assert verify_manifest(extra) == ["csv/extra.csv: in the zip but not in the manifest"]

    def lie_about_rows(name, data):  # a manifest re-written to match a file with a row removed
        if name == "manifest.json":
            manifest = json.loads(data)
            for entry in manifest["files"]:
                if entry["path"] == "csv/subjects.csv":
                    entry["rows"] = 4
            return json.dumps(manifest)
        return data

    assert verify_manifest(rewrite(tmp_path / "rows.zip", lie_about_rows)) == [
        "csv/subjects.csv: 3 rows, the manifest says 4"]


@pytest.mark.requirement("A11-4.8", "E6-4.2.5", "ALCOA-enduring")
def test_every_format_reads_back_with_the_same_rows_names_and_labels(study, exporter, tmp_path):
    _job, path = _export(exporter)
    manifest = _manifest(path)
    rows = {f["path"]: f["rows"] for f in manifest["files"]}
    dictionary = _csv(path, "DATADICT")
    for table in ("SUBJECTS", "DEMOGRAP", "TOYVITAL", "SOFADAIL", "ADVEEVEN", "DATADICT"):
        header = next(csv.reader(io.StringIO(_member(path, f"csv/{table.lower()}.csv"))))
        labels = {d["COLUMN"]: d["LABEL"] for d in dictionary if d["TABLE"] == table}
        sas_labels = {d["COLUMN"]: d["SASLABEL"] for d in dictionary if d["TABLE"] == table}
        columns = {c.name: c for t in layout() if t.name == table for c in t.columns}
        for ext in ("xpt", "sav", "dta"):
            frame, meta = _read(path, tmp_path, table, ext)
            folder = {"xpt": "sas", "sav": "spss", "dta": "stata"}[ext]
            assert len(frame) == rows[f"{folder}/{table.lower()}.{ext}"] == rows[f"csv/{table.lower()}.csv"]
            assert list(frame.columns) == header
            if table == "DATADICT":
                continue
            for column, label in meta.column_names_to_labels.items():
                if ext == "xpt":
                    assert label == sas_labels[column] and len(label.encode()) <= 40
                elif ext == "dta":  # Stata keeps 80 bytes
                    assert label == columns[column].label_in(80) and labels[column].startswith(label[:30])
                else:
                    assert label == labels[column]
        _frame, meta = _read(path, tmp_path, table, "xpt")
        assert meta.table_name == table
    assert rows["csv/demograp.csv"] == 3 and rows["csv/adveeven.csv"] == 0


@pytest.mark.requirement("A11-4.8")
def test_coded_values_come_with_labels_null_flavors_apart_and_dates_as_dates(study, exporter, tmp_path):
    _job, path = _export(exporter)
    demographics = {r["SUBJID"]: r for r in _csv(path, "DEMOGRAP")}
    assert set(demographics) == {s.code for s in study.values()}
    for row in demographics.values():
        assert (row["SEX"], row["SEX_LBL"]) in {("M", "Male"), ("F", "Female")}
        assert row["VISIT"] == "D0" and row["CRFVER"] == "1" and row["FORMSTAT"] == "complete"
        assert re.fullmatch(r"\d+", row["AGE"]) and row["AGE_NF"] == ""

    toy = {r["SUBJID"]: r for r in _csv(path, "TOYVITAL")}
    done, not_done = toy[study["first"].code], toy[study["second"].code]
    assert (done["HEIGHT"], done["HEIGH_NF"]) == ("", "UNK")  # a null flavor: no value, its code apart
    assert (done["WEIGHT"], done["WEIGH_NF"]) == ("70.5", "")
    assert (done["FEVER"], done["FEVER_L"]) == ("Y", "Yes")
    assert (done["POSITION"], done["POSITI_L"]) == ("SUP", "Supine")
    assert (done["DEVICES"], done["DEVICE_L"]) == ("ECG|SPO2", "ECG | Pulse oximeter")
    assert (done["DEVICE_1"], done["DEVICE_2"], done["DEVICE_3"]) == ("1", "1", "0")
    assert done["ONSET"] == "2026-01" and done["COMMENT"] == COMMENT
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:00Z", done["MEASAT"])
    assert (not_done["FORMSTAT"], not_done["NDREASON"], not_done["WEIGHT"]) == ("not_done", "Transferred", "")

    for ext in ("xpt", "sav", "dta"):
        frame, meta = _read(path, tmp_path, "TOYVITAL", ext)
        row = frame[frame["SUBJID"] == study["first"].code].iloc[0]
        assert row["WEIGHT"] == 70.5 and pd.isna(row["HEIGHT"]) and row["HEIGH_NF"] == "UNK"
        assert (row["DEVICE_1"], row["DEVICE_3"]) == (1, 0)
        assert isinstance(row["MEASAT"], datetime)
        assert row["MEASAT"].strftime("%Y-%m-%dT%H:%M:%SZ") == done["MEASAT"]
        kept = COMMENT if ext != "xpt" else datasets._fit(COMMENT, 200).rstrip()  # SAS pads with blanks
        assert row["COMMENT"] == kept
        subjects, _meta = _read(path, tmp_path, "SUBJECTS", ext)
        assert all(isinstance(d, date) for d in subjects["INCLDT"])
        if ext == "sav":
            assert meta.variable_value_labels["POSITION"] == {"SUP": "Supine", "SIT": "Sitting"}
    assert len(datasets._fit(COMMENT, 200).encode()) <= 200
    xpt = next(f for f in _manifest(path)["files"] if f["path"] == "sas/toyvital.xpt")
    assert xpt["values_cut_to_200_bytes"] == {"COMMENT": 1}

    dictionary = {(d["TABLE"], d["COLUMN"]): d for d in _csv(path, "DATADICT")}
    sex = dictionary["DEMOGRAP", "SEX"]
    assert (sex["ITEM"], sex["TYPE"], sex["CODELIST"], sex["VERSIONS"]) == (
        "sex", "text", "M=Male; F=Female", "1")
    assert dictionary["DEMOGRAP", "WEIGHT"]["UNIT"] == "kg"
    assert dictionary["TOYVITAL", "MEASAT"]["TYPE"] == "datetime"
    assert dictionary["TOYVITAL", "HEIGH_NF"]["ROLE"] == "null_flavor"
    assert dictionary["TOYVITAL", "DEVICE_2"]["OPTION"] == "SPO2"
    codes = {(c["TABLE"], c["COLUMN"], c["CODE"]): c["LABEL"] for c in _csv(path, "CODELIST")}
    assert codes["DEMOGRAP", "SEX", "F"] == "Female"


def test_sas_names_are_at_most_8_characters_unique_and_the_items_own(db):
    tables = layout()
    assert len({t.name for t in tables}) == len(tables)
    reg_items = {t.crf_key: t.items for t in tables if t.crf_key}
    for table in tables:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]{0,7}", table.name)
        assert len(set(table.names)) == len(table.names), table.name
        assert all(re.fullmatch(r"[A-Z_][A-Z0-9_]{0,7}", n) for n in table.names), table.names
        values = {c.item: c.name for c in table.columns if c.role == "value"}
        for key, versions in reg_items.get(table.crf_key, {}).items():
            assert values[key] == versions[max(versions)].short_name  # sas_name where given


def test_names_that_clash_are_made_unique_deterministically(db):
    assert short_name("PREGTEST", {"PREGTEST"}, "_L") == "PREGTE_L"
    assert short_name("DOSE_MG", set(), "_NF") == "DOSE_NF"
    used = {"STATUS", "HLHF_LBL"}
    assert short_name("STATUS", used) == "STATUS2" and short_name("HLHFEVER", used, "_LBL") == "HLH2_LBL"
    clash = CRF(key="a_rather_long_form", title="Clash", version=1, groups=(Group("g", "G", (
        Item("subjid", "Clashes with the subject code", Integer()),
        Item("pregtest", "Pregnancy test", YesNo()), Item("pregtype", "Test type", Choice((("U", "Urine"),))),
        Item("x", "X", YesNo(), sas_name="PREGTE_L"),
    )),))
    used_tables = {"SUBJECTS"}
    first = datasets.crf_table({1: clash}, used_tables)
    again = datasets.crf_table({1: clash}, {"SUBJECTS"})
    assert first.name == again.name == "ARALOFO" and first.names == again.names
    assert len(set(first.names)) == len(first.names) and max(map(len, first.names)) <= 8
    assert "SUBJID2" in first.names and "PREGTE_L" in first.names and "PREGT2_L" in first.names
    assert datasets.crf_table({1: clash}, used_tables).name == "ARALOFO2"  # a second table, numbered


def test_a_site_or_subject_export_holds_that_scope_only(study, exporter, make):
    site = make.site("02")
    _job, path = _export(exporter, jobs.Scope(site=site))
    assert verify_manifest(path) == []
    manifest = _manifest(path)
    assert manifest["scope"] == {"label": "site 02", "site": "02", "subject": None, "subjects": 1}
    for table in ("SUBJECTS", "DEMOGRAP", "SOFADAIL", "TOYVITAL"):
        rows = _csv(path, table)
        assert all(r["SUBJID"].startswith("02-") and r["SITEID"] == "02" for r in rows)
    assert [r["SUBJID"] for r in _csv(path, "DEMOGRAP")] == [study["other"].code]
    assert _csv(path, "TOYVITAL") == []
    _job, path = _export(exporter, jobs.Scope(subject=study["second"]))
    assert verify_manifest(path) == [] and _manifest(path)["scope"]["subject"] == study["second"].code
    assert [r["SUBJID"] for r in _csv(path, "TOYVITAL")] == [study["second"].code]


def test_reading_in_chunks_gives_the_same_tables(study, exporter, monkeypatch):
    _job, whole = _export(exporter)
    monkeypatch.setattr(datasets, "CHUNK", 1)
    _job, chunked = _export(exporter)
    for table in ("SUBJECTS", "DEMOGRAP", "SOFADAIL", "TOYVITAL", "DATADICT"):
        assert _csv(whole, table) == _csv(chunked, table)
    sofa = _csv(chunked, "SOFADAIL")
    assert [r["SUBJID"] for r in sofa] == sorted(r["SUBJID"] for r in sofa)


def test_every_crf_version_shares_its_table(make, exporter, app, monkeypatch):
    old = make.subject("01")
    assert save_form(system_actor(), old, "toy_vitals", Slot("D1"), Submitted({"height": "170"})).ok
    amended = registry.load(None, app.extensions["ecrf.registry"].schedule, ["tests.toy_crf_v2"])
    monkeypatch.setitem(app.extensions, "ecrf.registry", amended)
    new = make.subject("01")
    assert save_form(system_actor(), new, "toy_vitals", Slot("D1"),
                     Submitted({"spo2": "97", "fever": "N", "weight": "60"})).ok
    _job, path = _export(exporter)
    rows = {r["SUBJID"]: r for r in _csv(path, "TOYVITAL")}
    assert (rows[old.code]["CRFVER"], rows[old.code]["SPO2"], rows[old.code]["HEIGHT"]) == ("1", "", "170")
    assert (rows[new.code]["CRFVER"], rows[new.code]["SPO2"]) == ("2", "97")
    dictionary = {(d["TABLE"], d["COLUMN"]): d["VERSIONS"] for d in _csv(path, "DATADICT")}
    assert dictionary["TOYVITAL", "SPO2"] == "2" and dictionary["TOYVITAL", "WEIGHT"] == "1, 2"
    assert _manifest(path)["study_definition"]["crf_versions"]["toy_vitals"] == [1, 2]


def test_the_command_exports_a_scope_for_a_user_who_may(study, make, runner, tmp_path):
    make.user("inv-02", role="investigator", site="02")
    output = tmp_path / "site02.zip"
    result = runner.invoke(args=["export", "datasets", "--site", "02", "--as", "inv-02", "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert verify_manifest(output) == []
    assert _manifest(output)["exported_by"]["username"] == "inv-02"
    refused = runner.invoke(args=["export", "datasets", "--site", "01", "--as", "inv-02",
                                  "-o", str(tmp_path / "site01.zip")])
    assert refused.exit_code != 0 and "does not hold export.run on site 01" in refused.output
    assert not (tmp_path / "site01.zip").exists()
