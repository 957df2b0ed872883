"""The one audited unit of work (ALCOA+, 21 CFR 11.10(e), EMA-2/3)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from ecrf.audit import capture
from ecrf.audit.models import AuditRecord
from ecrf.audit.reasons import Reason
from ecrf.audit.unit_of_work import (
    AuditError,
    ReasonRequiredError,
    UnauditedWriteError,
    unit_of_work,
)
from ecrf.auth.services import system_actor
from ecrf.study.models import Site, Subject
from tests.factories import audit_rows


def _count(db, model) -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(model))


@pytest.mark.requirement("P11-10e-1", "EMA-2", "E6-4.2.2b")
def test_a_change_outside_the_unit_of_work_raises(make, db):
    site = make.site("01")
    site.name = "Renamed without audit"
    with pytest.raises(UnauditedWriteError):
        db.session.flush()
    db.session.rollback()


@pytest.mark.requirement("P11-10e-1", "EMA-2")
def test_negative_control_without_the_flush_listener_the_unaudited_change_goes_through(make, db):
    """The same write as above succeeds once the listener is removed: the listener is what stops it."""
    site = make.site("01")
    before = _count(db, AuditRecord)
    event.remove(sa.orm.Session, "before_flush", capture._before_flush)
    try:
        site.name = "Renamed without audit"
        db.session.flush()  # no exception: the mechanism is off
        assert _count(db, AuditRecord) == before
    finally:
        event.listen(sa.orm.Session, "before_flush", capture._before_flush)
        db.session.rollback()


@pytest.mark.requirement("P11-10e-1", "EMA-3", "ALCOA-attributable", "ALCOA-contemporaneous")
def test_every_changed_value_is_one_audit_row_with_old_and_new_value(make, db):
    site = make.site("01")
    with unit_of_work(system_actor(), Reason("entry_error", "typo in the name")):
        site.name = "Medical ICU, Paris"
    rows = audit_rows(action="site.update", field="name")
    assert len(rows) == 1
    row = rows[0]
    assert row.value.old_value == "Test site 01" and row.value.new_value == "Medical ICU, Paris"
    assert (row.reason_code, row.reason_text) == ("entry_error", "typo in the name")
    assert row.site == "01" and row.entity_type == "site" and row.entity_id == str(site.id)
    assert row.username == "system" and row.recorded_at.tzinfo is not None


@pytest.mark.requirement("A11-9", "E6-4.2.2a-ii")
def test_the_first_entry_needs_no_reason_but_a_change_of_a_saved_value_does(make, db):
    site = make.site("01")  # created without any reason
    with pytest.raises(ReasonRequiredError, match="reason for change"):
        with unit_of_work(system_actor()):
            site.name = "Another name"
    db.session.expire_all()
    assert site.name == "Test site 01"


@pytest.mark.requirement("P11-10e-1")
def test_a_failed_transaction_leaves_neither_data_nor_audit_rows(fresh_app):
    from ecrf.extensions import db
    from tests.factories import Factories

    Factories().site("01")
    sites, audits = _count(db, Site), _count(db, AuditRecord)
    with pytest.raises(RuntimeError, match="power cut"):
        with unit_of_work(system_actor()):
            db.session.add(Site(code="02", name="Never saved", timezone="UTC"))
            db.session.flush()  # the audit events are captured...
            raise RuntimeError("power cut")  # ...and the transaction fails before commit
    db.session.remove()
    assert (_count(db, Site), _count(db, AuditRecord)) == (sites, audits)
    assert db.session.scalar(sa.select(Site).where(Site.code == "02")) is None


@pytest.mark.requirement("P11-10e-1")
def test_audit_rows_are_committed_with_the_data_in_one_transaction(fresh_app):
    from ecrf.extensions import db
    from tests.factories import Factories

    code = Factories().subject("01").code
    db.session.remove()
    rows = db.session.scalars(sa.select(AuditRecord).where(AuditRecord.subject == code)).all()
    assert {r.field for r in rows} >= {"code", "status", "site_id"}


@pytest.mark.requirement("P11-10c", "ALCOA-complete")
def test_nothing_audited_is_physically_deleted(make, db):
    subject = make.subject("01")
    with pytest.raises(AuditError, match="never physically deleted"):
        with unit_of_work(system_actor(), Reason("other", "try to delete")):
            db.session.delete(subject)
    assert db.session.get(Subject, subject.id) is not None


@pytest.mark.requirement("EMA-2")
def test_bulk_update_on_an_audited_table_is_refused(make, db):
    make.subject("01")
    with pytest.raises(AuditError, match="bypasses the audit trail"):
        with unit_of_work(system_actor(), Reason("other", "bulk")):
            db.session.execute(sa.update(Subject).values(status="withdrawn"))


def test_secret_columns_are_recorded_as_changed_without_their_value(make, db):
    make.user("zoe", role="auditor")
    rows = audit_rows(field="password_hash")
    assert rows and all(r.value.new_value == capture.SECRET_MARK for r in rows)
    assert not any("argon2" in (r.value.new_value or "") for r in audit_rows())


@pytest.mark.requirement("P11-10h")
def test_the_audit_row_records_request_id_and_client_of_a_web_request(make, login, db):
    make.user("yan", role="auditor")
    login("yan")
    row = audit_rows(action="auth.login")[-1]
    assert row.client == "127.0.0.1" and len(row.request_id) == 36


def test_nested_units_of_work_commit_once_as_one_transaction(make, db):
    site = make.site("01")
    actor = system_actor()
    last = audit_rows()[-1].seq
    with unit_of_work(actor, Reason("administrative", "rename twice")) as outer:
        with unit_of_work(actor) as inner:
            assert inner is outer
            site.name = "First"
        site.timezone = "UTC"
    rows = [r for r in audit_rows(action="site.update") if r.seq > last]
    assert {r.field for r in rows} == {"name", "timezone"}
    assert len({r.request_id for r in rows}) == 1


def test_a_nested_unit_of_work_records_its_changes_with_its_own_reason(make, db):
    site = make.site("01")
    actor = system_actor()
    last = audit_rows()[-1].seq
    with unit_of_work(actor, Reason("administrative", "outer")):
        site.name = "Outer name"
        with unit_of_work(actor, Reason("entry_error", "inner")):
            site.timezone = "UTC"
        site.name = "Outer again"
    rows = {(r.field, r.value.new_value): r.reason_text for r in audit_rows(action="site.update")
            if r.seq > last}
    assert rows == {("name", "Outer name"): "outer", ("timezone", "UTC"): "inner",
                    ("name", "Outer again"): "outer"}
