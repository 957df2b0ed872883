"""Change control of the study definition (EU Annex 11 §10): when the CRF definitions, the
schedule or the study settings differ from the last ones deployed, one audit record "study
definition changed" stores their versions and hash."""

from __future__ import annotations

import json
from datetime import datetime

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import Mapped, mapped_column

from ecrf.audit.reasons import Reason
from ecrf.database import Base, UTCDateTime, utcnow
from ecrf.extensions import db
from ecrf.study import settings


class StudyDefinition(Base):
    """Each deployed definition, once (its audit record is the controlled copy)."""

    __tablename__ = "study_definition"

    id: Mapped[int] = mapped_column(primary_key=True)
    fingerprint: Mapped[str] = mapped_column(sa.String(64), index=True)
    versions: Mapped[str] = mapped_column(sa.Text)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def current_fingerprint() -> tuple[str, dict]:
    return current_app.extensions["ecrf.registry"].fingerprint(settings.as_dict())


def record_if_changed() -> bool:
    """Record the running definition if it differs from the last deployed; True when recorded.

    The chain head is locked first, so app servers starting together record it once.
    """
    from ecrf.audit import chain
    from ecrf.audit.unit_of_work import unit_of_work
    from ecrf.auth.services import system_actor

    fingerprint, versions = current_fingerprint()
    with unit_of_work(system_actor(), Reason.system("study definition deployed")) as uow:
        chain.lock(db.session)
        last = db.session.scalar(sa.select(StudyDefinition).order_by(StudyDefinition.id.desc()))
        if last is not None and last.fingerprint == fingerprint:
            return False
        db.session.add(StudyDefinition(fingerprint=fingerprint,
                                       versions=json.dumps(versions, sort_keys=True)))
        uow.record("study.definition_changed", "study", fingerprint[:16],
                   old=last.fingerprint if last else None,
                   new=json.dumps({"fingerprint": fingerprint, "crf_versions": versions},
                                  sort_keys=True))
    return True
