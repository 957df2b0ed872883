"""The requirements catalogue: what the regulations ask of an eCRF and how ecrf answers each.

Every requirement of 21 CFR Part 11, EU GMP Annex 11, the EMA 2023 guideline on computerised
systems, ICH E6(R3), ALCOA++ and the GDPR that a reviewer can check, with its status:

- ``claimed``: the software meets it, and tests carrying ``@pytest.mark.requirement(ID)`` show it;
- ``partial``: the software meets part of it (``how`` says which part, and what it does not do);
  the part it meets is shown by tests as for ``claimed``;
- ``operator``: a duty of the sponsor or the hosting organisation (an SOP, training, a contract);
  ``how`` says what the software offers to help;
- ``not applicable``: ``how`` says why (JAKAHDI is a single-arm open-label study; ecrf has no
  data import).

``ecrf validate report`` reads this catalogue and the JUnit XML of a test run, and fails when a
claimed or partial requirement has no passing test. The order is the order of the regulations.
IDs are ASCII (the range "A11-12.1–12.3" is written ``A11-12.1-12.3``) and hold no space, since
the JUnit property lists them separated by spaces.
"""

from __future__ import annotations

from dataclasses import dataclass

STATUSES = ("claimed", "partial", "operator", "not applicable")
SOURCES = ("21 CFR Part 11", "EU GMP Annex 11", "EMA 2023 guideline", "ICH E6(R3)", "ALCOA++", "GDPR")


@dataclass(frozen=True)
class Requirement:
    id: str
    source: str
    text: str
    status: str
    how: str


P11, A11, EMA, E6, ALCOA, GDPR = SOURCES

CATALOGUE: tuple[Requirement, ...] = (
    # --- 21 CFR Part 11 ----------------------------------------------------------------------
    Requirement(
        "P11-10a", P11,
        "The system is validated and can discern invalid or altered records.",
        "claimed",
        "The audit trail is a SHA-256 hash chain; `ecrf audit verify` names the first altered, "
        "inserted, deleted or reordered row, also in an exported file. Requirements are traced to "
        "the tests by this catalogue and `ecrf validate report`."),
    Requirement(
        "P11-10b", P11,
        "Accurate and complete copies in human-readable and electronic form for inspection.",
        "claimed",
        "PDF casebooks (values, each item's history, queries, SDV marks, signatures) and CDISC ODM "
        "1.3.2 (Snapshot, and Transactional with an AuditRecord per change and the signatures), "
        "valid against the CDISC schema; the audit trail as JSON lines."),
    Requirement(
        "P11-10c", P11,
        "Records are protected and readily retrievable for the whole retention period.",
        "claimed",
        "Nothing audited is physically deleted (the flush refuses it; 'removed' and 'ended' are "
        "states); subject codes and usernames are never reused; `ecrf backup` writes a backup with "
        "a manifest and `ecrf backup restore` proves it restores. Keeping the backups is the "
        "operator's (docs/backup.md)."),
    Requirement(
        "P11-10d", P11,
        "System access is limited to authorised individuals.",
        "claimed",
        "Every endpoint declares an access rule, checked on the server against the user's grants in "
        "force (tested for every endpoint and role); personal accounts only; deactivated, locked "
        "and expired accounts cannot log in."),
    Requirement(
        "P11-10e-1", P11,
        "A secure, computer-generated, time-stamped audit trail records operator entries and "
        "actions that create, modify or delete records.",
        "claimed",
        "One audited unit of work appends one row per changed value or action in the data's "
        "transaction, with the authenticated user and the database's UTC time; a write outside it "
        "is refused at flush."),
    Requirement(
        "P11-10e-2", P11,
        "Changes do not obscure previously recorded information.",
        "claimed",
        "Each audit row keeps the old and the new value; the item history shows them; triggers "
        "refuse UPDATE and DELETE on the trail and the application's database role holds neither."),
    Requirement(
        "P11-10e-3", P11,
        "The audit trail is kept as long as the record and is available for review and copying.",
        "claimed",
        "No code path deletes audit rows; the trail is read and exported (CSV, JSON lines checkable "
        "offline, ODM Transactional) for any scope by auditors and data managers."),
    Requirement(
        "P11-10f", P11,
        "Operational checks enforce the permitted sequencing of steps.",
        "claimed",
        "State machines refuse illegal steps: subject status (inclusion only when eligible), query "
        "states, signing only complete visits without open queries, no data change when frozen, "
        "nothing when locked."),
    Requirement(
        "P11-10g", P11,
        "Authority checks: only authorised individuals use, sign, alter or operate the system.",
        "claimed",
        "Each action needs a named permission of a role granted on the site; a refusal is a 403 "
        "(or 404 for another site) and an `access.denied` audit record; signing also needs a line "
        "in the delegation log."),
    Requirement(
        "P11-10h", P11,
        "Device checks validate the source of data input, as appropriate.",
        "claimed",
        "Each audit row records the request id and the client address; API tokens belong to one "
        "user and act with that user's grants of the moment."),
    Requirement(
        "P11-10i", P11,
        "People who develop, maintain or use the system are trained.",
        "operator",
        "Training and its records are the sponsor's and the sites' (SOP). ecrf offers the README, "
        "the docs folder and the DEMO study (`ecrf demo`) to train on; it records no training."),
    Requirement(
        "P11-10j", P11,
        "A written policy holds individuals accountable for actions under their e-signatures.",
        "operator",
        "The policy and its acknowledgement are the sponsor's. ecrf shows the meaning and "
        "attestation text of the signature before each signing and stores it with the signature; "
        "it does not record a policy acknowledgement."),
    Requirement(
        "P11-10k", P11,
        "Controls over system documentation and its change history.",
        "operator",
        "Document control is the operator's. The docs are versioned with the code; the version "
        "(`ecrf.__version__`) and commit are stamped on the validation report; a change of the "
        "study definition is an audit record. The audit rows do not carry the software version."),
    Requirement(
        "P11-50a", P11,
        "Signed records show the signer's printed name, the date and time, and the meaning.",
        "claimed",
        "A signature stores the signer's full name as at signing, the UTC time, the meaning code "
        "and its English attestation text; the pages show all three."),
    Requirement(
        "P11-50b", P11,
        "Those items are under the same controls as the record and shown in every human-readable "
        "form.",
        "claimed",
        "Signatures are audited like the data and shown on the grid, the form page, the subject "
        "page and the PDF casebook (with their validity)."),
    Requirement(
        "P11-70", P11,
        "Signatures are linked to their records so they cannot be excised, copied or transferred.",
        "claimed",
        "A signature holds the SHA-256 of the canonical content it covers (documented format); a "
        "change of that content shows it broken; the signature table is insert-only."),
    Requirement(
        "P11-100a", P11,
        "Each e-signature is unique to one person and never reused or reassigned.",
        "claimed",
        "Usernames are unique and never reused; accounts are deactivated, never deleted; nobody "
        "signs with another user's username."),
    Requirement(
        "P11-100b", P11,
        "The individual's identity is verified before an e-signature is issued.",
        "operator",
        "Identity checks are the sites' and sponsor's. ecrf records who created each account and "
        "granted each role, and when; it does not record the identity check itself."),
    Requirement(
        "P11-100c", P11,
        "The organisation certifies to the FDA that its e-signatures are legally binding.",
        "operator",
        "A letter from the sponsor to the FDA, where the FDA receives the records; nothing for the "
        "software to do."),
    Requirement(
        "P11-200a1", P11,
        "Non-biometric signatures use at least two distinct components (ID and password).",
        "claimed",
        "The signing form asks for the username and the password; the username must be the "
        "signer's own."),
    Requirement(
        "P11-200a1i", P11,
        "Within one continuous session, later signings use at least one private component.",
        "claimed",
        "Every signing asks for the password again, also in the same session."),
    Requirement(
        "P11-200a1ii", P11,
        "Signings outside one continuous session use all components.",
        "claimed",
        "Every signing asks for both the username and the password, whatever the session."),
    Requirement(
        "P11-200a2/3", P11,
        "Only the genuine owner can use the signature; misuse would need two people colluding.",
        "claimed",
        "Administrators never see or choose a password (they force a reset to a temporary one that "
        "must be changed); a signing with another user's username is refused and audited."),
    Requirement(
        "P11-300a", P11,
        "Each combination of ID and password is unique.",
        "claimed",
        "Usernames are unique and never reused, even after deactivation."),
    Requirement(
        "P11-300b", P11,
        "ID and password issuances are periodically checked, recalled or revised.",
        "claimed",
        "The access review lists every account's grants, last login and flags (dormant, never "
        "logged in, locked, expired, second factor missing); there is no password expiry, the "
        "review is the periodic check, run at the interval the operator's SOP sets."),
    Requirement(
        "P11-300c", P11,
        "Lost or compromised credentials or tokens are de-authorised and replaced under control.",
        "claimed",
        "Administrators deactivate accounts (ending their sessions), force a password reset, "
        "remove a lost second factor and set end dates; users revoke their API tokens; each is "
        "audited with its reason."),
    Requirement(
        "P11-300d", P11,
        "Safeguards prevent unauthorised use and report attempts urgently.",
        "claimed",
        "Failed logins, codes and signings are audited and rate-limited; five in a row lock the "
        "account; each lockout is an audit record, a warning on the `ecrf.security` log and an "
        "alert on the administrators' home page."),
    Requirement(
        "P11-300e", P11,
        "Devices that generate credentials are tested initially and periodically.",
        "claimed",
        "A second factor (TOTP) is in use only after a first code confirms its enrolment, and each "
        "login checks a code; a lost one is removed by an administrator with a reason. No hardware "
        "token is used."),
    # --- EU GMP Annex 11 ---------------------------------------------------------------------
    Requirement(
        "A11-1", A11,
        "Risk management drives validation and data-integrity controls.",
        "operator",
        "The risk assessment is the regulated user's. ecrf offers this catalogue, the traceability "
        "report from a test run (`ecrf validate report`) and the installation check "
        "(`ecrf validate install`); it ranks no risks itself."),
    Requirement(
        "A11-4.8", A11,
        "Data transferred keep their value and meaning (checks).",
        "partial",
        "Exports keep value and meaning: the ODM metadata rebuild every CRF version, every dataset "
        "format reads back with the same rows, names and labels. ecrf has no data import, so there "
        "is no import round trip to test."),
    Requirement(
        "A11-5", A11,
        "Built-in checks for correct and secure data exchange (imports validated).",
        "not applicable",
        "ecrf has no data import: data enter only through the forms, the CLI and the loaders, all "
        "through the same parsing and edit checks. Exports are checked (A11-4.8, EMA-11)."),
    Requirement(
        "A11-6", A11,
        "An additional accuracy check for critical data entered manually.",
        "claimed",
        "Items flagged critical must be source-verified by a monitor for every subject, whatever "
        "the SDV plan; hard and soft edit checks run at entry. There is no double data entry."),
    Requirement(
        "A11-7", A11,
        "Data are secured against damage; backups are made and their restore is tested.",
        "claimed",
        "`ecrf backup` writes a backup with a manifest (SHA-256, table counts, audit head) and "
        "records it in the trail; `ecrf backup restore` and `check` prove a restore. Scheduling "
        "(cron), off-site copies and drill records are the operator's (docs/backup.md)."),
    Requirement(
        "A11-8.1/8.2", A11,
        "Clear printed copies, which show whether data changed since their original entry.",
        "claimed",
        "The PDF casebook prints every item with its history (old -> new, who, when, why), "
        "queries, SDV marks and signatures."),
    Requirement(
        "A11-9", A11,
        "An audit trail of all changes, with the reason documented; available, intelligible and "
        "regularly reviewed.",
        "claimed",
        "Changing or clearing a saved value needs a reason; the trail is read in words and "
        "exported; the data managers' review worklist records who reviewed which record, when, "
        "with what comment."),
    Requirement(
        "A11-10", A11,
        "Changes to the system are made under change control.",
        "claimed",
        "The schema comes only from the migrations (checked against the models); CRF definitions "
        "are versioned and data keep their version; a changed definition or study setting is an "
        "audit record. Deployment settings (environment) are under the operator's change control."),
    Requirement(
        "A11-11", A11,
        "The system is evaluated periodically.",
        "operator",
        "A periodic review by the operator. ecrf offers the access review, `ecrf audit verify`, "
        "the backup check and the installation check report."),
    Requirement(
        "A11-12.1-12.3", A11,
        "Physical and logical access control; creating, changing and cancelling access rights is "
        "recorded.",
        "claimed",
        "Role grants per user and site with a validity window; grants, revocations, account "
        "creation, deactivation and end dates are audit records with actor, time and reason."),
    Requirement(
        "A11-12.4", A11,
        "The identity of operators entering, changing, confirming or deleting data is recorded "
        "with date and time.",
        "claimed",
        "Every audit row has the user, the role and site of the grant used, and the UTC time; "
        "confirmations (SDV, signatures, freeze and lock, check confirmations) are audited too."),
    Requirement(
        "A11-13", A11,
        "Incidents are reported and assessed.",
        "operator",
        "The incident process is the operator's. ecrf offers the `ecrf.security` and "
        "`ecrf.database` logs, the request id in audit rows, and the lockouts on the "
        "administrators' home page; it keeps no incident register."),
    Requirement(
        "A11-14", A11,
        "E-signatures are permanently linked to their record and include the date and time.",
        "claimed",
        "As P11-50a and P11-70: the signature holds the content hash of what it covers and its UTC "
        "time, and is insert-only."),
    Requirement(
        "A11-16", A11,
        "Business continuity for a system failure.",
        "operator",
        "The fallback (paper CRF) and recovery objectives are the operator's. ecrf offers backups "
        "with a restore drill (docs/backup.md) and a clear 503 page when the database is away."),
    Requirement(
        "A11-17", A11,
        "Archived data are checked for accessibility, readability and integrity, also after system "
        "changes.",
        "partial",
        "Each export file's SHA-256 is recorded in the trail, the datasets carry a manifest that "
        "`verify_manifest` checks, ODM files validate against the CDISC schema and the audit export "
        "verifies offline. ecrf has no archive command that bundles ODM and PDF under one manifest; "
        "regenerating and checking the archive after upgrades is the operator's."),
    # --- EMA 2023 guideline on computerised systems ------------------------------------------
    Requirement(
        "EMA-1", EMA,
        "ALCOA++: every value is traceable from its first entry through each change to an export.",
        "claimed",
        "The audit trail holds every entry and change with its reason; the ODM Transactional file "
        "carries one ItemData per change with its AuditRecord (SourceID = the audit seq)."),
    Requirement(
        "EMA-2", EMA,
        "The audit trail covers original creation and every modification, and cannot be switched "
        "off.",
        "claimed",
        "A first entry is audited like a change; a write outside the audited unit of work is "
        "refused at flush, bulk statements on audited tables too; no setting disables it."),
    Requirement(
        "EMA-3", EMA,
        "Audit entries say what changed, by whom (user, role, organisation), when and why.",
        "claimed",
        "Each row has the key path (site, subject, visit, form, item, field), the user with the "
        "role, site and grant used, the UTC time, the old and new value and the reason."),
    Requirement(
        "EMA-4", EMA,
        "Changes made in answer to queries are in the audit trail.",
        "claimed",
        "A value corrected from a query records the query's number in its audit rows (reason "
        "'query_response') and answers the query with the changes listed."),
    Requirement(
        "EMA-5", EMA,
        "Blinding-sensitive information is not visible in audit trails to blinded users.",
        "not applicable",
        "JAKAHDI is a single-arm open-label study: there is no allocation to hide and no blinded "
        "role."),
    Requirement(
        "EMA-6", EMA,
        "Risk-based audit-trail review, tool-assisted, focused on critical data, with sign-off.",
        "partial",
        "The data managers' worklist flags late entries, changes after SDV or signature, many "
        "changes to one item and out-of-hours entries; each review is recorded with its comment. "
        "It cannot filter by critical items; the review plan is the sponsor's."),
    Requirement(
        "EMA-7", EMA,
        "Investigators can navigate the audit trail of their own data.",
        "claimed",
        "Every item of a form has a history page (who, when, old -> new, why) for the users of its "
        "site; guidance on reading it is the sponsor's training."),
    Requirement(
        "EMA-8", EMA,
        "The investigator can obtain a certified copy of their data without advanced skills, "
        "independently of the sponsor.",
        "claimed",
        "Investigators export their sites' ODM (with audit records) and PDF casebooks from the web "
        "at any time; each request, file (with its SHA-256) and download is audited. Hosting "
        "independent of the sponsor is the operator's choice."),
    Requirement(
        "EMA-9", EMA,
        "User access matches duties, is revoked when no longer needed and periodically reviewed; "
        "the history of grants is kept.",
        "claimed",
        "Grants have valid-from and valid-to times and are revoked, never deleted; accounts can "
        "have an end date; the access review report lists grants, last logins and dormant "
        "accounts."),
    Requirement(
        "EMA-10", EMA,
        "Cloud or service providers are qualified; contracts and data location are addressed.",
        "operator",
        "Hosting, contracts and data residency are the sponsor's; ecrf runs on the operator's own "
        "PostgreSQL and loads nothing from other hosts."),
    Requirement(
        "EMA-11", EMA,
        "Data transfers and exports are validated and keep their metadata, audit trail included.",
        "claimed",
        "ODM files validate against the CDISC schema and carry audit records and signatures; the "
        "datasets carry a manifest of rows, bytes and SHA-256 per file; every export's digest is "
        "recorded in the trail."),
    Requirement(
        "EMA-12", EMA,
        "Edit access is restricted at data lock; unlocking needs a privileged role and a reason.",
        "claimed",
        "Data managers lock the study, a site or a subject (nothing changes, by any path); "
        "unlocking needs the permission and a reason; both are audited."),
    # --- ICH E6(R3) ---------------------------------------------------------------------------
    Requirement(
        "E6-4.1", E6,
        "Blinding is protected in data access and transfers; unblinding is documented.",
        "not applicable",
        "JAKAHDI is a single-arm open-label study: there is no allocation and no unblinding."),
    Requirement(
        "E6-4.2.1", E6,
        "Verification proportional to criticality; captured data carry metadata; automated checks "
        "at capture.",
        "partial",
        "Items flagged critical are source-verified for every subject, the others by the SDV plan; "
        "hard and soft edit checks run at each save. An edit check's severity is set per check, "
        "not derived from the criticality flag."),
    Requirement(
        "E6-4.2.2a-i", E6,
        "The system logs account creation, changes of roles and permissions, and user access.",
        "claimed",
        "Logins, failed logins, lockouts, time-outs, logouts, accounts, grants and revocations are "
        "audit records."),
    Requirement(
        "E6-4.2.2a-ii", E6,
        "Initial entry and every change or deletion is documented, with its reason where "
        "appropriate.",
        "claimed",
        "Every value's first entry and each change is an audit row; changing or clearing a saved "
        "value needs a reason."),
    Requirement(
        "E6-4.2.2a-iii", E6,
        "Workflow actions are recorded, not only data changes.",
        "claimed",
        "Form status, SDV, signatures, queries' steps, freeze and lock, subject status and exports "
        "are audit records."),
    Requirement(
        "E6-4.2.2b", E6,
        "Audit trails are never disabled; modified only rarely (personal data entered by mistake) "
        "with a logged justification.",
        "claimed",
        "No switch disables the audit; a data manager's redaction masks a value with a reason, is "
        "itself an audit record, and `ecrf audit verify` still passes."),
    Requirement(
        "E6-4.2.2c", E6,
        "Audit trails are interpretable and reviewable.",
        "claimed",
        "The audit trail viewer shows actions, reasons and values in words, with filters and "
        "downloads."),
    Requirement(
        "E6-4.2.2d", E6,
        "Timestamps are unambiguous (e.g. UTC).",
        "claimed",
        "Times are stored in UTC (the database clock for the audit), written with a Z, and shown "
        "in UTC and in the site's time with its offset."),
    Requirement(
        "E6-4.2.3", E6,
        "Planned, risk-based review of data, audit trails and metadata.",
        "partial",
        "Queries, SDV with a plan, the study home's figures and the audit review worklist support "
        "the review; the worklist cannot filter by critical items (EMA-6); the plan is the "
        "sponsor's."),
    Requirement(
        "E6-4.2.4", E6,
        "Corrections are attributed, justified, supported by source and timely.",
        "partial",
        "Corrections are attributed and need a reason; a correction made from a query names it. "
        "No report gives the time from a query to its correction (queries are listed by age)."),
    Requirement(
        "E6-4.2.5", E6,
        "Transfers and migrations keep data and metadata; counts are reconciled.",
        "partial",
        "The datasets' manifest gives the rows, bytes and SHA-256 of each file and "
        "`verify_manifest` reconciles them; a backup's manifest gives each table's count and "
        "`ecrf backup check` compares them after a restore. ecrf has no data import."),
    Requirement(
        "E6-3.16.1(n,o)", E6,
        "Investigators are instructed on the systems; their endorsement of the data is sought at "
        "milestones.",
        "claimed",
        "Principal investigators and delegates sign visits or whole casebooks (username and "
        "password); the sign-off page lists casebooks ready to sign and broken signatures. "
        "Instructing investigators is the sponsor's."),
    Requirement(
        "E6-3.16.1(p,q)", E6,
        "Data-management steps before analysis are defined; interim access to data is managed.",
        "partial",
        "Freeze (no data change, review goes on) and lock, per study, site or subject. Exports are "
        "not tagged with a freeze: they state their time and scope."),
    Requirement(
        "E6-3.16.1(r)", E6,
        "Before final analysis, edit access to the data acquisition tools is restricted.",
        "claimed",
        "A locked study, site or subject takes no change by any path (forms, derived values, "
        "queries, signatures); a frozen one no data change."),
    Requirement(
        "E6-3.16.1(t,v,w)", E6,
        "Participants' privacy; protection against unauthorised access and loss; incident "
        "reporting.",
        "partial",
        "No direct identifier is stored (pseudonymous codes); access control and backups as above; "
        "security events go to the audit trail and the `ecrf.security` log. Encryption at rest and "
        "the incident process are the operator's; ecrf keeps no incident register."),
    Requirement(
        "E6-4.3.3", E6,
        "Security across the life cycle: user management, authentication, patching, monitoring, "
        "backups, periodically tested.",
        "partial",
        "User and grant management, password policy, lockout, rate limits, second factor, hostile "
        "input refused, backups with a restore check: all tested. Patching, monitoring, "
        "penetration tests and disaster recovery are the operator's."),
    Requirement(
        "E6-4.3.4", E6,
        "Risk-based validation of standard functions and of the trial-specific configuration, "
        "under change control.",
        "claimed",
        "The JAKAHDI CRFs' edit checks, derivations and scores have tests of their own; the study "
        "definition is validated at start-up, versioned and its changes audited. The sponsor's "
        "acceptance of the build is theirs."),
    Requirement(
        "E6-4.3.5", E6,
        "A site gets the trial-specific system only after its approvals.",
        "claimed",
        "A site enrols only once an administrator has activated it; enrolment is refused before."),
    Requirement(
        "E6-4.3.6/4.3.7", E6,
        "Contingency for system failure; help-desk issue tracking and trend review.",
        "operator",
        "Fallback procedures and the help desk are the operator's. ecrf offers backups, a clear "
        "503 page when the database is away, and the security policy for reporting issues."),
    Requirement(
        "E6-4.3.8a-c", E6,
        "Access is limited and attributable; granted by duty and organisation; revoked when not "
        "needed; reviewed; documented with timestamps.",
        "claimed",
        "Per-user, per-site role grants with valid-from and valid-to, revoked with a reason and "
        "audited; the access review report."),
    # --- ALCOA++ ------------------------------------------------------------------------------
    Requirement(
        "ALCOA-attributable", ALCOA,
        "Every value and change carries its unique user and time.",
        "claimed",
        "Audit rows name the user, role, site and grant of each change; CLI writes need a named "
        "user (`--as`) or a named system account; never nobody."),
    Requirement(
        "ALCOA-legible", ALCOA,
        "Values and audit trail render in human-readable form, on screen and on paper.",
        "claimed",
        "The audit viewer, item histories and the PDF casebook show labels, decoded codes, units "
        "and reasons in words."),
    Requirement(
        "ALCOA-contemporaneous", ALCOA,
        "Server-side timestamps at save; late entries are detectable.",
        "claimed",
        "The database clock stamps each audit row; the review worklist flags entries made more "
        "than AUDIT_LATE_ENTRY_DAYS after the visit."),
    Requirement(
        "ALCOA-original", ALCOA,
        "The first-entered value is retained, even after correction.",
        "claimed",
        "Each change keeps the old value in its audit row, shown in the item history, the PDF "
        "casebook and the ODM Transactional file."),
    Requirement(
        "ALCOA-accurate", ALCOA,
        "Edit checks, SDV and queries; derived values computed by the server.",
        "claimed",
        "Typed parsing, hard and soft checks at entry, derived values never taken from input, SDV "
        "and queries."),
    Requirement(
        "ALCOA-complete", ALCOA,
        "Missing values are explained; deletions leave a tombstone.",
        "claimed",
        "Null flavors with a comment, forms marked not done with a reason, form status following "
        "its data; nothing is physically deleted."),
    Requirement(
        "ALCOA-consistent", ALCOA,
        "One timestamp source and format; the order of audit events is total.",
        "claimed",
        "The database clock in UTC, one canonical time format; `seq` is gap-free under one chain "
        "lock, and a gap or a reordering fails `ecrf audit verify`."),
    Requirement(
        "ALCOA-enduring", ALCOA,
        "Storage and archive formats survive the system (ODM XML, PDF/A).",
        "partial",
        "ODM 1.3.2 valid against the CDISC schema, CSV, SAS transport, and an audit export "
        "checkable with the standard library. The PDF casebooks are plain PDF, not PDF/A."),
    Requirement(
        "ALCOA-available", ALCOA,
        "Data and audit trail are retrievable for monitors, auditors and inspectors.",
        "claimed",
        "Read access by role (monitors their sites, auditors everything), the audit viewer and "
        "exports, the read-only API."),
    Requirement(
        "ALCOA-traceable", ALCOA,
        "A value in an export traces to its audit history and the query or reason that changed it.",
        "claimed",
        "ODM Transactional AuditRecords carry the audit seq, user, time and reason; a correction "
        "from a query names the query."),
    # --- GDPR ---------------------------------------------------------------------------------
    Requirement(
        "GDPR-1", GDPR,
        "Subjects are identified only by a system-generated study code, never by name.",
        "claimed",
        "The subject code is the site code and a sequence number, allocated by the system; the "
        "subject and screening tables have no identifying column."),
    Requirement(
        "GDPR-2", GDPR,
        "Direct identifiers, if stored, are kept apart, encrypted, with their own permission.",
        "not applicable",
        "ecrf stores no direct identifier of a participant (GDPR-1); the identification log stays "
        "with the investigator, outside the eCRF."),
    Requirement(
        "GDPR-3", GDPR,
        "Free-text fields warn against personal data; a privileged, reasoned, audited redaction "
        "exists.",
        "claimed",
        "Every free-text item of a form warns against writing anything that identifies the "
        "patient. Data managers redact a value entered by mistake, with a reason, audited, masked "
        "in every view and export, the chain still verifying."),
    Requirement(
        "GDPR-4", GDPR,
        "Access to identification data is site-scoped; sponsor roles see pseudonymised data only.",
        "claimed",
        "Everyone sees pseudonymised data only (nothing identifying is stored); site roles see "
        "their sites only, another site's subject answers 404."),
    Requirement(
        "GDPR-5", GDPR,
        "Data minimisation: dates of birth can be partial where the protocol allows.",
        "claimed",
        "JAKAHDI collects the age in years, not the birth date (a study setting); partial dates "
        "are kept at the precision known."),
    Requirement(
        "GDPR-6", GDPR,
        "A withdrawn subject's collection stops while collected data and audit remain.",
        "partial",
        "Withdrawal is a status with a reason, audited, and the data and audit remain. It does not "
        "stop collection: forms stay open and expected; a data manager may freeze the subject."),
)

REQUIREMENTS: dict[str, Requirement] = {r.id: r for r in CATALOGUE}


def claimed() -> list[Requirement]:
    """The requirements the software claims, fully or in part: each needs a passing test."""
    return [r for r in REQUIREMENTS.values() if r.status in ("claimed", "partial")]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_matrix() -> str:
    """The catalogue as Markdown tables, one per source, for docs/compliance.md."""
    lines: list[str] = []
    for source in SOURCES:
        lines += [f"### {source}", "",
                  "| ID | requirement | status | how ecrf meets it, or the operator's duty |",
                  "|---|---|---|---|"]
        lines += [f"| {r.id} | {_cell(r.text)} | {r.status} | {_cell(r.how)} |"
                  for r in CATALOGUE if r.source == source]
        lines.append("")
    return "\n".join(lines)
