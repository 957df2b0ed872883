"""Query pages: the lists with their filters, one query's conversation and the steps the user may
take, raising a query from the form page. The rules are in ``ecrf.review.queries``."""

from __future__ import annotations

from flask import abort, current_app, flash, g, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user

from ecrf import database
from ecrf.access.decorators import refuse, requires
from ecrf.access.grants import Access
from ecrf.access.scoping import sites_for
from ecrf.casebook import services as casebook
from ecrf.casebook.models import FormInstance
from ecrf.database import key, parse_key
from ecrf.extensions import db
from ecrf.i18n import tr, visit_title
from ecrf.queries import bp
from ecrf.review import queries as services
from ecrf.review.closure import DATA, REVIEW, refusal
from ecrf.review.models import QUERY_STATE_LABELS, Query, QueryState

PER_PAGE = 50


def form_url(instance: FormInstance, **args) -> str:
    return url_for("casebook.form_page", code=instance.subject.code, visit_key=instance.visit_key,
                   visit_repeat=instance.visit_repeat, crf_key=instance.crf_key,
                   form_repeat=instance.form_repeat, **args)


def state_label(code: str) -> str:
    return str(QUERY_STATE_LABELS.get(code, code))


def where(query: Query) -> dict[str, str]:
    """Visit, form and item of a query as users read them."""
    instance = query.form_instance
    crf = casebook.definition_for(instance.crf_key, instance)
    visit = casebook.registry().schedule.visit(instance.visit_key)
    form = tr(crf.title) + (f" #{instance.form_repeat}" if instance.form_repeat > 1 else "")
    return {"visit": visit_title(visit.title) + (f" #{instance.visit_repeat}"
                                                 if instance.visit_repeat > 1 else ""),
            "form": form,
            "item": tr(crf.item(query.item_key).label) if query.item_key else _("whole form")}


@bp.app_context_processor
def _helpers():
    """What the casebook pages show of the queries (counts, markers, the raise form)."""

    def counts_by_form(subject) -> dict:
        cache = g.setdefault("query_counts_by_form", {})
        if subject.id not in cache:
            cache[subject.id] = services.unresolved_by_form(subject.id)
        return cache[subject.id]

    def counts_by_item(instance) -> dict:
        if instance is None:
            return {}
        cache = g.setdefault("query_counts_by_item", {})
        if instance.id not in cache:
            cache[instance.id] = services.unresolved_by_item(instance.id)
        return cache[instance.id]

    def may(permission: str, site_id: int) -> bool:
        cache = g.setdefault("query_may", {})
        if (permission, site_id) not in cache:
            cache[permission, site_id] = current_user.is_authenticated and Access.for_user(
                current_user, permission).covers(site_id)
        return cache[permission, site_id]

    return {"query_counts_by_form": counts_by_form, "query_counts_by_item": counts_by_item,
            "query_may": may, "query_state_label": state_label}


def query_or_404(query_id: int) -> Query:
    """A query of the user's sites (another site's query looks like one that does not exist)."""
    query = db.session.get(Query, query_id)
    if query is None:
        refuse(404, f"query {query_id} not found")
    if not g.access.covers(query.subject.site_id):
        refuse(404, f"query {query_id} is on a site not granted")
    return query


def answering_query(instance: FormInstance | None) -> Query | None:
    """The query a form page corrects the data for (``?query=`` or the hidden ``query_id``)."""
    raw = request.values.get("query_id") or request.args.get("query") or ""
    if not raw:
        return None
    key = parse_key(raw)
    query = db.session.get(Query, key) if key is not None else None
    if query is None or instance is None or query.form_instance_id != instance.id:
        refuse(404, f"query {raw[:12]!r} is not on this form")
    return query


# --- lists -----------------------------------------------------------------------------------


def _filters() -> services.Filters:
    args = request.args
    site, form = args.get("site", ""), args.get("form", "")
    state = args.get("state", "")
    return services.Filters(
        site_id=parse_key(site),
        subject_code=args.get("subject", "").strip()[:16] or None,
        crf_key=args.get("crf", "").strip()[:64] or None,
        state=state if state in {s.value for s in QueryState} | {"unresolved"} else None,
        age=args.get("age") if args.get("age") in services.AGE_FILTERS else None,
        form_instance_id=parse_key(form),
        item_key=args.get("item", "").strip()[:64] or None)


@bp.route("/")
@requires("crf.view")
def list_queries():
    filters = _filters()
    page = max(request.args.get("page", 1, type=key), 1)
    now = database.utcnow()
    queries = db.paginate(services.listing(filters, g.access.site_ids(), now), page=page,
                          per_page=current_app.config.get("QUERIES_PER_PAGE", PER_PAGE),
                          error_out=False)
    registry = casebook.registry()
    crfs = sorted(((key, registry.current(key).title) for key in registry.crfs),
                  key=lambda kv: tr(kv[1]))
    active = {k: v for k, v in request.args.items() if k != "page" and v}
    return render_template(
        "queries/list.html", queries=queries, filters=filters, active=active, now=now,
        sites=sites_for(), crfs=crfs, states=QUERY_STATE_LABELS, ages=services.AGE_FILTERS,
        age_days=services.age_days, local_time=casebook.local_time, where=where)


# --- one query -------------------------------------------------------------------------------


def _render(query: Query, status: int = 200, error: str | None = None,
            typed: dict[str, str] | None = None):
    instance, site_id = query.form_instance, query.subject.site_id
    user = g.access.user
    held = [p for p in (services.MANAGE, services.ANSWER) if Access.for_user(user, p).covers(site_id)]
    locked = refusal(query.subject, REVIEW)
    steps = [] if locked else services.available_steps(query, held)
    can_correct = ("answer" in steps and refusal(query.subject, DATA) is None
                   and Access.for_user(user, "crf.enter").covers(site_id))
    crf = casebook.definition_for(instance.crf_key, instance)
    item = crf.item(query.item_key) if query.item_key else None
    return render_template(
        "queries/view.html", query=query, instance=instance, crf=crf, item=item, steps=steps,
        can_correct=can_correct, locked=locked, error=error, typed=typed or {},
        tz=query.subject.site.timezone, local_time=casebook.local_time,
        age=services.age_days(query), form_url=form_url, where=where(query)), status


@bp.route("/<int:query_id>")
@requires("crf.view")
def view_query(query_id: int):
    return _render(query_or_404(query_id))


DONE = {
    "answer": lambda q: _("Query #%(id)s is answered.", id=q.id),
    "close": lambda q: _("Query #%(id)s is closed.", id=q.id),
    "cancel": lambda q: _("Query #%(id)s is cancelled.", id=q.id),
    "reopen": lambda q: _("Query #%(id)s is re-opened.", id=q.id),
}


def _step(query_id: int, action: str):
    query = query_or_404(query_id)
    text = request.form.get("text", "")
    version = request.form.get("row_version", "")
    try:
        services.take_step(g.access.actor(query.subject.site_id), query, action, text,
                           row_version=parse_key(version))
    except services.QueryError as e:
        return _render(query, e.status, error=tr(e.message), typed={action: text})
    flash(DONE[action](query), "info")
    return redirect(url_for("queries.view_query", query_id=query.id))


@bp.route("/<int:query_id>/answer", methods=["POST"])
@requires("query.answer")
def answer(query_id: int):
    return _step(query_id, "answer")


@bp.route("/<int:query_id>/close", methods=["POST"])
@requires("query.manage")
def close(query_id: int):
    return _step(query_id, "close")


@bp.route("/<int:query_id>/cancel", methods=["POST"])
@requires("query.manage")
def cancel(query_id: int):
    return _step(query_id, "cancel")


@bp.route("/<int:query_id>/reopen", methods=["POST"])
@requires("query.manage")
def reopen(query_id: int):
    return _step(query_id, "reopen")


# --- raising ---------------------------------------------------------------------------------


@bp.route("/forms/<int:form_instance_id>", methods=["POST"])
@requires("query.manage")
def raise_query(form_instance_id: int):
    """Raise a query on an item of a saved form (no item: on the whole form)."""
    instance = db.session.get(FormInstance, form_instance_id)
    if instance is None:
        refuse(404, f"form {form_instance_id} not found")
    if not g.access.covers(instance.subject.site_id):
        refuse(404, f"form {form_instance_id} is on a site not granted")
    item_key = request.form.get("item_key", "") or None
    if item_key is not None and len(item_key) > 64:
        abort(400)
    try:
        query = services.raise_query(g.access.actor(instance.subject.site_id), instance, item_key,
                                     request.form.get("text", ""))
    except services.QueryError as e:
        flash(tr(e.message), "error")
        return redirect(form_url(instance, **({"raise": item_key} if item_key else {}))
                        + "#raise-query")
    flash(_("Query #%(id)s is raised.", id=query.id), "info")
    return redirect(form_url(instance) + (f"#item-{item_key}" if item_key else ""))
