"""One's own API tokens: list them, create one (shown once), revoke one. Nobody else's."""

from __future__ import annotations

from flask import flash, redirect, render_template, url_for
from flask_babel import gettext as _
from flask_login import current_user

from ecrf.access.decorators import authenticated, refuse
from ecrf.api import tokens, tokens_bp
from ecrf.api.forms import ConfirmForm, TokenForm


def _page(form: TokenForm, status: int = 200):
    form.days.render_kw = {**(form.days.render_kw or {}), "max": tokens.max_days()}
    return render_template("api/tokens.html", tokens=tokens.tokens_of(current_user), form=form,
                           confirm=ConfirmForm(), state=tokens.state, max_days=tokens.max_days(),
                           openapi=url_for("api.openapi")), status


@tokens_bp.route("/")
@authenticated
def list_tokens():
    return _page(TokenForm(days=tokens.max_days()))


@tokens_bp.route("/", methods=["POST"])
@authenticated
def create_token():
    form = TokenForm()
    if form.validate_on_submit():
        try:
            row, raw = tokens.create_token(current_user, form.name.data, form.days.data)
        except tokens.TokenError as e:
            field = getattr(form, e.field)
            field.errors = [*field.errors, str(e)]
        else:
            return render_template("api/created.html", token=row, secret=raw,
                                   base_url=url_for("api.list_subjects", _external=True))
    return _page(form, 400)


@tokens_bp.route("/<int:token_id>/revoke", methods=["POST"])
@authenticated
def revoke_token(token_id: int):
    row = tokens.own_token(current_user, token_id)
    if row is None:
        refuse(404, f"API token {token_id} is not the user's own")
    if ConfirmForm().validate_on_submit():
        tokens.revoke_token(current_user, row)
        flash(_("The token %(name)s is revoked.", name=row.name), "info")
    return redirect(url_for("api_tokens.list_tokens"))
