"""Languages: French and English (the sites are French ICUs). A user picks the language; it is
kept in the session; otherwise the browser's preference decides.

Every text a user reads goes through Flask-Babel: ``_('...')`` in templates, ``gettext`` (or
``lazy_gettext`` for class-level labels and codelists) in Python. Texts that are data, not code
(the CRF definitions and the visit schedule), stay plain English where they are declared: their
content is part of the study definition's fingerprint. They are translated where they are shown
(``tr`` below) and extracted into the catalog by the extractors at the end of this module,
registered in babel.cfg. Audit records, CLI output, logs and developer errors stay English.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from flask import Blueprint, has_request_context, redirect, request, session, url_for
from flask_babel import gettext

from ecrf.access.decorators import public

LANGUAGES = {"en": "English", "fr": "Français"}

bp = Blueprint("i18n", __name__)


def select_locale() -> str | None:
    """The language of this request; outside a request (CLI, loaders) the default, English."""
    if not has_request_context():
        return None
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
    if not target.startswith("/") or target.startswith(("//", "/\\")):
        target = url_for("main.index")
    return redirect(target)


# --- translating texts that are data -----------------------------------------------------------


def N_(message: str) -> str:
    """Mark a constant for extraction (``N_`` is one of Babel's default keywords) and return it
    unchanged: it is translated with ``gettext`` where it is shown."""
    return message


def tr(text: str | None) -> str | None:
    """A text declared as data (CRF title, label, help, codelist label, visit title) in the
    user's language, English when no translation exists.

    Templates use this rather than Jinja's ``_(variable)``: Jinja's new-style gettext treats every
    message as a %-format string (a codelist label "%" would fail) and marks the result as safe
    HTML; here the text is not formatted and the template escapes it.
    """
    if not text:
        return text
    return text.translated() if isinstance(text, Message) else gettext(text)


_DAY = re.compile(r"Day (\d+)")


def visit_title(title: str) -> str:
    """A visit's title in the user's language ("Day 3" is one message for every day)."""
    m = _DAY.fullmatch(title)
    if m:
        return gettext("Day %(n)s", n=m.group(1))
    return tr(title)


# --- messages built by the rules (edit checks, eligibility) -----------------------------------


class Message(str):
    """A message built by a rule: as a string it is the English text, which is what the audit trail
    and the CLI keep; ``tr`` shows it in the user's language. Built by ``msg``, which
    ``make translations`` extracts (``-k msg``) like ``_``.

    Parameters that are themselves messages (a label from a codelist, a part of a list) are
    translated with it.
    """

    msgid: str
    params: dict[str, Any]

    def __new__(cls, msgid: str, params: dict[str, Any]) -> Message:
        obj = super().__new__(cls, msgid % params if params else msgid)
        obj.msgid, obj.params = msgid, params
        return obj

    def translated(self) -> str:
        params = {k: tr(v) if isinstance(v, Message) else v for k, v in self.params.items()}
        return gettext(self.msgid, **params)

    @classmethod
    def join(cls, separator: str, parts: Iterable[str]) -> Message:
        """Messages joined into one (each part translated on its own)."""
        parts = list(parts)
        msgid = separator.join(f"%(p{n})s" for n in range(len(parts)))
        return cls(msgid, {f"p{n}": part for n, part in enumerate(parts)})


def msg(text: str, **params: Any) -> Message:
    """A rule's message: ``%(name)s`` placeholders, filled with ``params``."""
    return Message(text, params)


# --- extraction (pybabel extract -F babel.cfg) -------------------------------------------------


def _import_file(path: Path):
    """Import the module of a file by its dotted name (its package folders hold __init__.py)."""
    parts, folder = [path.stem], path.parent
    while (folder / "__init__.py").exists():
        parts.insert(0, folder.name)
        folder = folder.parent
    name = ".".join(parts)
    try:
        if str(folder) not in sys.path:
            sys.path.append(str(folder))
        module = importlib.import_module(name)
        if Path(module.__file__).resolve() == path:
            return module
    except ImportError:
        pass
    spec = importlib.util.spec_from_file_location(f"_ecrf_extract_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _source_line(lines: list[str], text: str, default: int) -> int:
    """The first line of the source where ``text`` is written (a literal), else ``default``."""
    for quoted in (repr(text), f'"{text}"'):
        for n, line in enumerate(lines, 1):
            if quoted in line:
                return n
    return default


def _python_messages(fileobj, keywords, comment_tags, options) -> Iterator[tuple]:
    """What Babel's own Python extractor finds in the file (``_()`` calls and the like)."""
    from babel.messages.extract import extract_python

    fileobj.seek(0)
    yield from extract_python(fileobj, keywords, comment_tags, options)
    fileobj.seek(0)


def crf_texts(crf) -> Iterator[tuple[str, str]]:
    """(text, where) for every text of a CRF definition that a user reads."""
    where = f"CRF {crf.key} v{crf.version}"
    yield crf.title, f"{where}: title"
    for group in crf.groups:
        yield group.title, f"{where}: group {group.key}"
        for item in group.items:
            yield item.label, f"{where}: item {item.key}"
            if item.help:
                yield item.help, f"{where}: help of {item.key}"
            for _code, label in getattr(item.type, "codelist", ()):
                yield label, f"{where}: answer of {item.key}"


def extract_crfs(fileobj, keywords, comment_tags, options) -> Iterator[tuple]:
    """Babel extractor for CRF modules (babel.cfg: ``[ecrf.i18n:extract_crfs: ...]``).

    Imports the module and yields ``(lineno, funcname, message, comments)`` for the title, group
    titles, item labels, help texts and codelist labels of its ``DEFINITION`` and of its
    ``PREVIOUS`` versions, so the CRF modules keep plain English strings. Units are not
    translated. ``_()`` calls in the module are extracted as usual.
    """
    from ecrf.forms.definition import CRF

    yield from _python_messages(fileobj, keywords, comment_tags, options)
    path = Path(fileobj.name).resolve()
    module = _import_file(path)
    definition = getattr(module, "DEFINITION", None)
    if not isinstance(definition, CRF):
        return  # a helper module of the package, not a CRF
    encoding = options.get("encoding", "utf-8")
    lines = fileobj.read().decode(encoding).splitlines()
    start = next((n for n, line in enumerate(lines, 1) if line.startswith("DEFINITION")), 1)
    for crf in (definition, *getattr(module, "PREVIOUS", ())):
        for text, where in crf_texts(crf):
            if text and text.strip():
                yield _source_line(lines, text, start), None, text, [where]


def extract_schedule(fileobj, keywords, comment_tags, options) -> Iterator[tuple]:
    """Babel extractor for the visit schedule module: the titles of its ``SCHEDULE``'s visits
    ("Day n" titles are the single message "Day %(n)s" of ``visit_title``)."""
    yield from _python_messages(fileobj, keywords, comment_tags, options)
    module = _import_file(Path(fileobj.name).resolve())
    schedule = getattr(module, "SCHEDULE", None)
    if schedule is None:
        return
    lines = fileobj.read().decode(options.get("encoding", "utf-8")).splitlines()
    for visit in schedule.visits:
        if not _DAY.fullmatch(visit.title):
            yield _source_line(lines, visit.title, 1), None, visit.title, [f"visit {visit.key}"]
