"""The audit trail for auditors and data managers: the filtered, paginated view in words, its
streamed downloads (each one audited), the data managers' review worklist (EMA-6) and their
redaction of a value entered by mistake (E6(R3) 4.2.2b, GDPR).
The rules are in ``ecrf.audit.viewer``, ``ecrf.audit.review`` and ``ecrf.audit.redaction``."""

from __future__ import annotations

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_babel import gettext as _

from ecrf.access.decorators import requires
from ecrf.access.scoping import sites_for
from ecrf.audit import redaction, viewer
from ecrf.audit import review as audit_review
from ecrf.audit.models import AuditRecord
from ecrf.audit.reasons import REASON_CODES, Reason
from ecrf.casebook.services import registry
from ecrf.database import MAX_SEQ, key, parse_key
from ecrf.extensions import db
from ecrf.i18n import tr

bp = Blueprint("audit", __name__, url_prefix="/audit")


def _page_number() -> int:
    return max(request.args.get("page", 1, type=key) or 1, 1)


def _per_page() -> int:
    return current_app.config.get("AUDIT_PER_PAGE", 50)


def item_title(form: str, item: str) -> str:
    """An item's label from the current CRF definition, or its key when unknown."""
    if not form or not item:
        return item
    try:
        return tr(registry().current(form.split("#")[0]).item(item).label)
    except KeyError:
        return item


@bp.route("/")
@requires("audit.view")
def trail():
    filters, errors = viewer.Filters.parse(request.args)
    records = viewer.page(filters, _page_number(), _per_page())
    return render_template("audit/trail.html", records=records, filters=filters, errors=errors,
                           args=filters.as_args(), actions=viewer.action_choices(filters.action),
                           sites=sites_for(), item_title=item_title)


def _download(fmt: str) -> Response:
    filters, errors = viewer.Filters.parse(request.args)
    if errors:
        abort(400)  # a download is exactly the view asked for, or nothing
    pieces = viewer.download(g.access.actor(), fmt, filters)  # recorded before streaming
    disposition = f'attachment; filename="{viewer.file_name(fmt, filters)}"'
    return Response(stream_with_context(pieces), content_type=viewer.FORMATS[fmt],
                    headers={"Content-Disposition": disposition})


@bp.route("/export.csv")
@requires("audit.view")
def export_csv():
    return _download("csv")


@bp.route("/export.jsonl")
@requires("audit.view")
def export_jsonl():
    return _download("jsonl")


# --- review worklist ---------------------------------------------------------------------------


def _worklist_args(source) -> dict[str, str]:
    """The worklist's own filters (state, flag, site, page) from a query string or a form."""
    args = {}
    state = source.get("state", "to_review")
    args["state"] = state if state in audit_review.STATES else "to_review"
    if source.get("flag") in audit_review.FLAGS:
        args["flag"] = source["flag"]
    if (source.get("site") or "").strip():
        args["site"] = source["site"].strip()[:8]
    page = source.get("page", "1")
    if (parse_key(page) or 1) > 1:
        args["page"] = page
    return args


@bp.route("/review")
@requires("audit.review")
def worklist():
    args = _worklist_args(request.args)
    work = audit_review.worklist(state=args["state"], flag=args.get("flag"), site=args.get("site"),
                                 number=int(args.get("page", 1)), per_page=_per_page())
    return render_template("audit/review.html", work=work, args=args, flags=audit_review.FLAGS,
                           states=audit_review.STATES, sites=sites_for(), item_title=item_title,
                           comment_max=audit_review.COMMENT_MAX,
                           pager_args={k: v for k, v in args.items() if k != "page"})


@bp.route("/review", methods=["POST"])
@requires("audit.review")
def review_record():
    seq = parse_key(request.form.get("seq"), MAX_SEQ)
    flag = request.form.get("flag", "")
    if seq is None:
        abort(400)
    try:
        audit_review.review(g.access.actor(), seq, flag, request.form.get("comment", ""))
    except audit_review.ReviewError as e:
        flash(str(e), "error")
    else:
        flash(_("Audit record #%(seq)s marked as reviewed (%(flag)s).", seq=seq,
                flag=audit_review.FLAGS[flag]), "info")
    back = {k[len("back_"):]: v for k, v in request.form.items() if k.startswith("back_")}
    return redirect(url_for("audit.worklist", **_worklist_args(back)))


# --- redaction ---------------------------------------------------------------------------------


@bp.app_context_processor
def _redaction_helpers():
    def redacted_items(instance) -> dict[str, int]:
        """Item key -> seq of the redaction, for the items of a form shown as redacted."""
        if instance is None:
            return {}
        return {v.item_key: v.redacted_seq for v in instance.values if v.redacted_seq}

    return {"redacted_items": redacted_items}


def _redaction_page(found: redaction.Redaction, status: int = 200, error: str | None = None):
    from ecrf.review.closure import refusal

    closed = None
    if found.current is not None:
        closed = refusal(found.current.form_instance.subject)
    row = db.session.execute(viewer._rows().where(AuditRecord.seq == found.seq)).one()
    entry = viewer.Entry.of(row, viewer.site_zones(), viewer.Words())
    return render_template("audit/redact.html", found=found, entry=entry, closed=closed,
                           error=error, reasons=REASON_CODES, item_title=item_title,
                           typed=request.form), status


@bp.route("/redact/<int(max=9223372036854775807):seq>/<side>", methods=["GET", "POST"])
@requires("audit.redact")
def redact_value(seq: int, side: str):
    """A data manager masks one value of the trail, after seeing what will be masked."""
    try:
        found = redaction.plan(seq, side)
    except redaction.RedactionError:
        abort(404)
    if request.method == "GET":
        return _redaction_page(found)
    text = request.form.get("reason_text", "").strip()
    code = request.form.get("reason_code", "entry_error")
    if code not in REASON_CODES or not text:
        return _redaction_page(found, 400, _("Give the reason for the redaction."))
    from ecrf.review.closure import ClosedError

    try:
        redaction.redact_value(g.access.actor(), seq, side, Reason(code, text[:500]))
    except ClosedError as e:
        return _redaction_page(found, 409, tr(e.message))
    except redaction.RedactionError as e:
        return _redaction_page(found, 409, tr(e.args[0]))
    flash(_("The value of audit record #%(seq)s is redacted.", seq=seq), "info")
    record = found.record
    where = {k: v for k, v in (("subject", record.subject), ("visit", record.visit),
                               ("form", record.form), ("item", record.item)) if v}
    return redirect(url_for("audit.trail", **where))
