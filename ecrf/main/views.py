"""Home page (the study home of each role), the list of forms missing or overdue, and the health
check."""

from math import ceil

from flask import current_app, render_template, request
from flask_babel import gettext as _
from flask_login import current_user

from ecrf.access.decorators import authenticated, public, requires
from ecrf.access.grants import Access, active_grants
from ecrf.access.scoping import sites_for
from ecrf.auth.services import lockout_alerts
from ecrf.database import key, utcnow
from ecrf.main import bp
from ecrf.review import dashboard, queries, sdv, signatures
from ecrf.study.safety import serious_events


def _schedule():
    return current_app.extensions["ecrf.registry"].schedule


def _sites(permission: str) -> set[int] | None | bool:
    """The site ids a permission of the current user covers (None: all), False if not held."""
    access = Access.for_user(current_user, permission)
    return access.site_ids() if access else False


@bp.route("/")
@authenticated
def index():
    grants = active_grants(current_user)
    # data managers see every serious adverse event with its 24-hour reporting deadline
    alerts = serious_events() if any(g.role == "data_manager" for g in grants) else None
    home = {}
    subject_sites = _sites("subject.view")
    if subject_sites is not False:
        data = dashboard.enrolment(subject_sites)
        home["enrolment"] = data
        home["enrolment_svg"] = dashboard.enrolment_svg(
            data, _("Inclusions over time"),
            _("%(total)s of %(target)s subjects included; by site: %(sites)s.", total=data.total,
              target=data.target,
              sites=", ".join(f"{site.code} {n}" for site, n in data.by_site) or "-"))
    crf_sites = _sites("crf.view")
    if crf_sites is not False:
        today = utcnow().date()
        missing = dashboard.missing_forms(_schedule(), crf_sites, today)
        home["missing"] = dashboard.missing_by_visit(missing, _schedule())
        home["missing_total"] = (sum(1 for m in missing if m.state == "due"),
                                 sum(1 for m in missing if m.state == "overdue"))
        home["queries"] = queries.open_by_age(crf_sites, utcnow())
        home["sdv"] = sdv.backlog_by_site(crf_sites)
        signoff = signatures.pending_and_broken(crf_sites)
        home["signoff"] = (len(signoff.ready_unsigned), len(signoff.broken))
    if _sites("users.manage") is not False:
        # administrators are told of lockouts (P11-300d): who is locked now, who was this week
        home["locked"], home["lockouts"] = lockout_alerts(days=7)
    return render_template("main/index.html", grants=grants, alerts=alerts, home=home)


class ListPage:
    """A page of an in-memory list, with the attributes the pager macro reads."""

    def __init__(self, rows: list, page: int, per_page: int):
        self.total, self.page, self.per_page = len(rows), page, per_page
        self.pages = max(ceil(self.total / per_page), 1)
        self.items = rows[(page - 1) * per_page: page * per_page]
        self.has_prev, self.has_next = page > 1, page < self.pages
        self.prev_num, self.next_num = page - 1, page + 1


@bp.route("/missing-forms")
@requires("crf.view")
def missing_forms():
    """Forms expected by today that are not complete, by visit and state (due or overdue)."""
    filters = {k: request.args[k] for k in ("visit", "state", "site") if request.args.get(k)}
    rows = dashboard.missing_forms(_schedule(), _sites("crf.view"), utcnow().date())
    rows = [r for r in rows if r.visit_key == filters.get("visit", r.visit_key)
            and r.state == filters.get("state", r.state)
            and r.subject.site.code == filters.get("site", r.subject.site.code)]
    page = max(request.args.get("page", 1, type=key), 1)
    titles = {k: current_app.extensions["ecrf.registry"].current(k).title
              for k in {r.crf_key for r in rows}}
    return render_template("main/missing.html", rows=ListPage(rows, page, 50), filters=filters,
                           titles=titles, sites=sites_for(), visits=_schedule().visits)


@bp.route("/sign-off")
@requires("crf.view")
def sign_off():
    """Casebooks ready to sign but never signed, and signatures broken by a later change."""
    found = signatures.pending_and_broken(_sites("crf.view"))
    rows = [(subject, None) for subject in found.ready_unsigned] + found.broken
    page = max(request.args.get("page", 1, type=key), 1)
    return render_template("main/sign_off.html", rows=ListPage(rows, page, 50))


@bp.route("/health")
@public
def health():
    return {"status": "ok"}
