"""The one table of roles and their permissions (21 CFR 11.10(d)(g); E6(R3) 4.3.8).

Every view declares the permission it needs (``ecrf.access.decorators``); the roles table in the
docs is generated from this module (``ecrf access table``).
"""

from __future__ import annotations

from dataclasses import dataclass

from flask_babel import lazy_gettext as _l

PERMISSIONS: dict[str, str] = {
    "subject.view": "See the subjects of one's sites and their status",
    "subject.enrol": "Enrol a subject at one's site (gives the pseudonymous code)",
    "subject.status": "Change a subject's status (inclusion, screen failure, withdrawal, ...)",
    "crf.view": "Read the casebooks (forms, values and each item's history) of one's sites",
    "crf.enter": "Enter and change CRF data, mark an expected form not done",
    "query.manage": "Raise queries on the data; close, cancel and re-open them",
    "query.answer": "Answer queries on the data of one's sites",
    "sdv.verify": "Verify items against the source (SDV) and un-verify them with a reason",
    "sdv.plan": "Set the SDV plan for items not flagged critical",
    "casebook.sign": "Sign visits and casebooks (needs the PI or signing task in the delegation log)",
    "delegation.manage": "Keep the sites' delegation logs",
    "closure.freeze": "Freeze the study, a site or a subject (no data change)",
    "closure.unfreeze": "Unfreeze (with a reason)",
    "closure.lock": "Lock the study, a site or a subject (no change at all)",
    "closure.unlock": "Unlock (with a reason)",
    "export.run": "Export the data of one's sites: CDISC ODM, analysis datasets, PDF casebooks",
    "audit.view": "Read the audit trail and export it (CSV, JSON lines)",
    "audit.review": "Review the audit trail's flagged records (late entries, changes after SDV...)",
    "audit.redact": "Redact a value entered by mistake, with a reason (masked in views and exports)",
    "users.manage": "Create, deactivate and unlock accounts; reset passwords; grant roles",
    "sites.manage": "Create and activate sites",
}


@dataclass(frozen=True)
class Role:
    name: str
    #: shown in the user's language (lazy: translated where it is rendered)
    title: str
    #: site-scoped roles act only on the sites they are granted; others are study-wide
    site_scoped: bool
    permissions: frozenset[str]


ROLES: dict[str, Role] = {
    r.name: r
    for r in (
        Role("investigator", _l("Site investigator"), True,
             frozenset({"subject.view", "subject.enrol", "subject.status", "crf.view",
                        "crf.enter", "query.answer", "casebook.sign", "export.run"})),
        Role("monitor", _l("Monitor (CRA)"), True,
             frozenset({"subject.view", "crf.view", "query.manage", "sdv.verify"})),
        Role("data_manager", _l("Data manager"), False,
             frozenset({"subject.view", "crf.view", "query.manage", "sdv.plan", "delegation.manage",
                        "closure.freeze", "closure.unfreeze", "closure.lock", "closure.unlock",
                        "export.run", "audit.view", "audit.review", "audit.redact"})),
        Role("auditor", _l("Auditor / inspector"), False,
             frozenset({"subject.view", "crf.view", "audit.view", "export.run"})),
        # Administrators manage accounts and sites; they neither enter nor view clinical data.
        Role("admin", _l("System administrator"), False, frozenset({"users.manage", "sites.manage"})),
    )
}

assert all(p in PERMISSIONS for r in ROLES.values() for p in r.permissions)


def roles_with(permission: str) -> list[str]:
    return [r.name for r in ROLES.values() if permission in r.permissions]


def markdown_table() -> str:
    """The roles x permissions table for the docs, generated from ROLES."""
    names = list(ROLES)
    lines = ["| permission | meaning | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for perm, meaning in PERMISSIONS.items():
        marks = ["yes" if perm in ROLES[n].permissions else "" for n in names]
        lines.append(f"| `{perm}` | {meaning} | " + " | ".join(marks) + " |")
    scope = ["site" if ROLES[n].site_scoped else "study" for n in names]
    lines.append("| *scope* | sites the role acts on | " + " | ".join(scope) + " |")
    return "\n".join(lines) + "\n"
