"""Languages: French and English (the sites are French ICUs). A user picks the language; it is
kept in the session; otherwise the browser's preference decides."""

from __future__ import annotations

from flask import Blueprint, redirect, request, session, url_for

from ecrf.access.decorators import public

LANGUAGES = {"en": "English", "fr": "Français"}

bp = Blueprint("i18n", __name__)


def select_locale() -> str:
    chosen = session.get("lang")
    if chosen in LANGUAGES:
        return chosen
    return request.accept_languages.best_match(list(LANGUAGES)) or "en"


@bp.route("/language/<lang>", methods=["POST"])
@public
def choose_language(lang: str):
    """Switch the language of the interface (kept in the session, also before login)."""
    if lang in LANGUAGES:
        session["lang"] = lang
    target = request.form.get("next", "")
    if not target.startswith("/") or target.startswith("//"):
        target = url_for("main.index")
    return redirect(target)
