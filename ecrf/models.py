"""Imports every model so metadata (Alembic) and the mappers see all tables."""

from ecrf.access.models import Grant
from ecrf.audit import capture
from ecrf.audit.models import AuditRecord, AuditValue, ChainHead
from ecrf.auth.models import PasswordHistory, User, UserSession
from ecrf.casebook.models import FormInstance, ItemValue, Submission
from ecrf.exports.models import ApiToken, AuditReview, ExportJob
from ecrf.review import (
    closure,  # noqa: F401  (registers the freeze/lock rule)
    sdv,  # noqa: F401  (registers the clear-on-change rule)
)
from ecrf.review.models import (
    ClosureState,
    DelegationEntry,
    ItemVerification,
    Query,
    QueryMessage,
    SdvPlan,
    Signature,
)
from ecrf.study.change_control import StudyDefinition
from ecrf.study.models import ScreeningEntry, Site, Subject, SubjectCounter

capture.install()

__all__ = [
    "ApiToken", "AuditRecord", "AuditReview", "AuditValue", "ChainHead", "ClosureState",
    "DelegationEntry", "ExportJob", "FormInstance", "Grant", "ItemValue", "ItemVerification",
    "PasswordHistory", "Query", "QueryMessage", "ScreeningEntry", "SdvPlan", "Signature", "Site",
    "StudyDefinition", "Subject", "SubjectCounter", "Submission", "User", "UserSession",
]
