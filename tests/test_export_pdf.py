"""PDF casebooks: one PDF per subject, rendered from a template by WeasyPrint, in a ZIP per scope.

A casebook shows every form with its values (codelist labels, units), null flavors, each item's
history from the audit trail (old -> new, who, when, the reason), the form's queries, SDV marks and
the signatures (printed name, date and time, meaning, valid or broken); pages are numbered
"Page X of Y". The text is read back with pypdf. Rendering is slow: the tests are few and each
checks much.
"""

from __future__ import annotations

import io
import re
import zipfile
from datetime import timedelta
from types import SimpleNamespace

import pypdf
import pytest

from ecrf.access.grants import Access
from ecrf.audit.reasons import Reason
from ecrf.auth.services import system_actor
from ecrf.casebook.services import Slot, Submitted, mark_not_done, save_form
from ecrf.exports import jobs
from ecrf.exports.pdf import casebook_pdf
from ecrf.review import queries, sdv
from ecrf.review import signatures as sig
from ecrf.review.delegation import add_entry, site_today
from ecrf.review.models import SIGNATURE_MEANINGS
from tests.factories import PASSWORD

QUESTION = "Weight 72 kg: please check the nursing chart."
ANSWER = "Checked: 72 kg in the nursing chart."
REASON = "typo in the weight"
NULL_COMMENT = "chart lost"


def pdf_pages(data: bytes) -> list[str]:
    """The text of each page, whitespace collapsed (table cells wrap)."""
    assert data.startswith(b"%PDF-")
    return [" ".join(page.extract_text().split()) for page in pypdf.PdfReader(io.BytesIO(data)).pages]


def _actor(user, permission: str, site):
    return Access.for_user(user, permission).actor(site.id)


def _save(actor, subject, values, null_flavors=None, **kwargs):
    result = save_form(actor, subject, "toy_vitals", Slot("D1"),
                       Submitted(values, null_flavors or {}), **kwargs)
    assert result.ok, (result.outcome, result.errors)
    return result.instance


@pytest.fixture
def trial(make):
    """Subject 01-001 with everything a casebook shows; 01-002 with a bare form; 02-001 elsewhere."""
    site, other = make.site("01"), make.site("02")
    t = SimpleNamespace(site=site, other=other)
    t.investigator = make.user("inv01", role="investigator", site=site, full_name="Ines Investigator")
    t.monitor = make.user("mon01", role="monitor", site=site, full_name="Monique Monitor")
    t.pi = make.user("pi01", role="investigator", site=site, full_name="Paula Principal")
    add_entry(system_actor(), site, t.pi, "pi", site_today(site) - timedelta(days=30), None)
    enter = _actor(t.investigator, "crf.enter", site)

    t.subject = make.subject(site)
    first = _save(enter, t.subject, {"weight": "70", "fever": "N", "position": "SUP"},
                  null_flavors={"comment": ("UNK", NULL_COMMENT)})
    t.form = _save(enter, t.subject, {"weight": "72", "fever": "N", "position": "SUP"},
                   null_flavors={"comment": ("UNK", NULL_COMMENT)},
                   reason=Reason("entry_error", REASON))
    assert t.form.id == first.id
    mark_not_done(enter, t.subject, "sofa_daily", Slot("D1"), "not measured that day")
    query = queries.raise_query(_actor(t.monitor, "query.manage", site), t.form, "weight", QUESTION)
    queries.answer(_actor(t.investigator, "query.answer", site), query, ANSWER)
    queries.close(_actor(t.monitor, "query.manage", site), query, "Thank you.")
    t.query = query
    assert sdv.verify_scope(_actor(t.monitor, "sdv.verify", site), t.subject, instance=t.form) > 0
    sig.sign(t.pi, t.subject, sig.SignScope.visit("D1"), username=t.pi.username, password=PASSWORD)

    t.bare = make.subject(site)
    _save(system_actor(), t.bare, {"weight": "65", "fever": "N"})
    t.elsewhere = make.subject(other)
    _save(system_actor(), t.elsewhere, {"weight": "66", "fever": "N"})
    return t



@pytest.mark.requirement("P11-10b", "P11-50b", "A11-8.1/8.2", "ALCOA-legible")
def test_the_casebook_shows_values_history_queries_verification_and_signatures(trial, db):
    pages = pdf_pages(casebook_pdf(trial.subject))
    text = " ".join(pages)
    for n, page in enumerate(pages, 1):  # header, footer and "Page X of Y" on every page
        assert f"Page {n} of {len(pages)}" in page
        assert "Subject 01-001" in page and "JAKAHDI" in page
        assert re.search(r"Exported \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page)
    # the forms in visit order, then the visit's form order (the daily SOFA, then the toy form)
    assert text.index("Daily SOFA") < text.index("Toy vital signs")
    assert "Not done: not measured that day" in text
    # values with their units and codelist labels; the null flavor with its code and comment
    assert "Weight 72 kg" in text and "Supine (SUP)" in text and "No (N)" in text
    assert f"[UNK] Unknown · {NULL_COMMENT}" in text
    # the item's history: old -> new, who, when (UTC and local with its offset), the reason
    assert "(empty) → 70 kg" in text and "70 kg → 72 kg" in text
    assert re.search(r"\d\d:\d\d:\d\d UTC \(\d{4}-\d\d-\d\d \d\d:\d\d [+-]\d\d:\d\d\) · inv01 "
                     rf"\(investigator, 01\) · 70 kg → 72 kg · reason: Data entry error: {REASON}", text)
    # the query and its conversation, SDV marks, the signature (21 CFR 11.50)
    assert f"Query #{trial.query.id} on Weight" in text
    assert QUESTION in text and ANSWER in text
    assert "Verified by Monique Monitor (mon01)" in text
    assert "Paula Principal" in text and SIGNATURE_MEANINGS["approval"] in text
    assert "valid: the data are unchanged since the signing" in text and "broken" not in text

    # a change after the signing: the same casebook now shows the signature broken
    _save(_actor(trial.investigator, "crf.enter", trial.site), trial.subject,
          {"weight": "73", "fever": "N", "position": "SUP"},
          null_flavors={"comment": ("UNK", NULL_COMMENT)}, reason=Reason("new_information", "re-weighed"))
    text = " ".join(pdf_pages(casebook_pdf(trial.subject)))
    assert "broken: the data changed after the signing" in text and "valid:" not in text
    assert "72 kg → 73 kg" in text and "Verified by Monique Monitor (mon01), " not in text.split(
        "Weight 73 kg")[1].split("Height")[0]  # the change cleared the weight's SDV


def _zip_texts(path) -> dict[str, str]:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        return {name: " ".join(pdf_pages(archive.read(name))) for name in archive.namelist()}


@pytest.mark.requirement("P11-10b")
def test_a_site_export_holds_one_pdf_per_subject_of_the_site_only(trial, make, db):
    data_manager = make.user("dm", role="data_manager")
    actor = Access.for_user(data_manager, "export.run").actor(trial.site.id)
    seen = []
    job = jobs.export_now(actor, "pdf", jobs.Scope(site=trial.site),
                          progress=lambda done, total: seen.append((done, total)))
    assert job.state == "done" and job.file_name.endswith(".zip")
    texts = _zip_texts(jobs.file_path(job))
    assert sorted(texts) == ["01-001.pdf", "01-002.pdf"]  # not 02-001: another site
    assert seen[-1] == (2, 2)
    assert "Subject 01-001" in texts["01-001.pdf"] and "Paula Principal" in texts["01-001.pdf"]
    bare = texts["01-002.pdf"]  # negative control: the first casebook's contents are its own
    assert "Subject 01-002" in bare and "Weight 65 kg" in bare and "Page 1 of 1" in bare
    assert "01-001" not in bare and "Paula Principal" not in bare and QUESTION not in bare
    assert "This casebook has no electronic signature." in bare


@pytest.mark.requirement("EMA-8")
def test_ecrf_export_pdf_writes_the_zip_of_one_subject(trial, make, runner, db, tmp_path):
    make.user("inv02", role="investigator", site=trial.other)
    output = tmp_path / "casebooks.zip"
    refused = runner.invoke(args=["export", "pdf", "--subject", trial.bare.code, "--as", "inv02",
                                  "-o", str(output)])
    assert refused.exit_code != 0 and "does not hold export.run" in refused.output
    assert not output.exists()
    result = runner.invoke(args=["export", "pdf", "--subject", trial.elsewhere.code, "--as", "inv02",
                                 "-o", str(output)])
    assert result.exit_code == 0, result.output
    texts = _zip_texts(output)
    assert list(texts) == ["02-001.pdf"] and "Weight 66 kg" in texts["02-001.pdf"]
