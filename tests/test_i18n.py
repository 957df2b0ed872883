"""French and English: the language is chosen per session (or taken from the browser), every text a
user reads is in the catalog, the French catalog is complete and compiled, and what the audit trail
keeps stays English whatever the user's language."""

from __future__ import annotations

import html
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po
from flask_babel import gettext

from ecrf.audit.reasons import REASON_CODES
from ecrf.auth.services import LOGIN_FAILED_MESSAGE
from ecrf.forms.items import NULL_FLAVORS, DecimalNumber, Integer, ItemValueError
from ecrf.i18n import crf_texts, visit_title
from tests import toy_crf
from tests.factories import audit_rows, without_csrf_token

ROOT = Path(__file__).resolve().parent.parent
TRANSLATIONS = ROOT / "ecrf" / "translations"
PO = TRANSLATIONS / "fr" / "LC_MESSAGES" / "messages.po"
MO = TRANSLATIONS / "fr" / "LC_MESSAGES" / "messages.mo"
FORM = "/subjects/{code}/visits/D1/1/forms/toy_vitals/1"


def _text(response) -> str:
    """The page with its HTML entities decoded (a translated text may hold an apostrophe)."""
    return html.unescape(response.get_data(as_text=True))


def _lang(page: str) -> str:
    return re.search(r'<html lang="([a-z]+)">', page).group(1)


def _french(client) -> None:
    response = client.post("/language/fr", data={"next": "/auth/login"})
    assert response.status_code == 302 and response.headers["Location"] == "/auth/login"


def _token(page: str) -> str:
    return re.search(r'name="submission_token" type="hidden" value="([^"]+)"', page).group(1)


def _post_form(client, code: str, data: dict, follow: bool = False):
    page = client.get(FORM.format(code=code)).get_data(as_text=True)
    return client.post(FORM.format(code=code), data={"submission_token": _token(page),
                                                      "row_version": "", **data},
                       follow_redirects=follow)


# --- (a) choosing the language -----------------------------------------------------------------


def test_the_login_page_is_english_by_default(client):
    page = client.get("/auth/login").get_data(as_text=True)
    assert _lang(page) == "en"
    assert "<h1>Log in</h1>" in page and 'for="username">Username</label>' in page
    assert "Your user name and password are your electronic identity" in page


def test_the_login_page_in_french_once_chosen(client):
    _french(client)
    page = _text(client.get("/auth/login"))
    assert _lang(page) == "fr"
    assert "<h1>Connexion</h1>" in page
    assert "Nom d'utilisateur</label>" in page and "Mot de passe</label>" in page
    assert "constituent votre identité électronique" in page
    assert "Log in" not in page and "Username" not in page


def test_the_browser_language_decides_until_the_user_chooses(client):
    french = client.get("/auth/login", headers={"Accept-Language": "fr-FR,fr;q=0.9,en;q=0.5"})
    page = french.get_data(as_text=True)
    assert _lang(page) == "fr" and "<h1>Connexion</h1>" in page
    german = client.get("/auth/login", headers={"Accept-Language": "de-DE"}).get_data(as_text=True)
    assert _lang(german) == "en" and "<h1>Log in</h1>" in german
    client.post("/language/en", data={"next": "/auth/login"})
    chosen = client.get("/auth/login", headers={"Accept-Language": "fr"}).get_data(as_text=True)
    assert _lang(chosen) == "en" and "<h1>Log in</h1>" in chosen


def test_the_language_switch_is_two_post_forms_with_the_current_one_marked(client):
    page = client.get("/auth/login").get_data(as_text=True)
    switch = page[page.index('<div class="lang"'):]
    switch = switch[:switch.index("</div>")]
    forms = re.findall(r'<form method="post" action="(/language/(?:en|fr))".*?</form>', switch, re.S)
    assert forms == ["/language/en", "/language/fr"]
    assert switch.count('name="csrf_token"') == 2
    assert switch.count('<input type="hidden" name="next" value="/auth/login">') == 2
    assert re.search(r'<button type="submit" lang="en" aria-current="true">English</button>', switch)
    assert re.search(r'<button type="submit" lang="fr">Français</button>', switch)
    assert 'aria-label="Language"' in switch
    _french(client)
    page = client.get("/auth/login").get_data(as_text=True)
    assert '<button type="submit" lang="fr" aria-current="true">Français</button>' in page
    assert 'aria-label="Langue"' in page


def test_the_switch_is_on_every_page_of_a_logged_in_user(make, login_as, client):
    subject = make.subject("01")
    login_as("investigator", site="01")
    for url in ("/", "/subjects/", f"/subjects/{subject.code}", f"/subjects/{subject.code}/casebook",
                FORM.format(code=subject.code), "/auth/password", "/no-such-page"):
        page = client.get(url).get_data(as_text=True)
        assert 'action="/language/fr"' in page and 'action="/language/en"' in page, url


@pytest.mark.parametrize("target", ["https://elsewhere.example/", "//elsewhere.example/",
                                    "/\\elsewhere.example/", ""])
def test_the_switch_only_returns_to_a_page_of_this_site(client, target):
    response = client.post("/language/fr", data={"next": target})
    assert response.status_code == 302 and response.headers["Location"] == "/"


def test_an_unknown_language_changes_nothing(client):
    client.post("/language/fr", data={"next": "/auth/login"})
    client.post("/language/xx", data={"next": "/auth/login"})
    assert _lang(client.get("/auth/login").get_data(as_text=True)) == "fr"


def test_the_switch_works_with_csrf_protection_on(app, client, monkeypatch):
    monkeypatch.setitem(app.config, "WTF_CSRF_ENABLED", True)
    page = client.get("/auth/login").get_data(as_text=True)
    assert client.post("/language/fr", data={"next": "/auth/login"}).status_code == 400
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    response = client.post("/language/fr", data={"next": "/auth/login", "csrf_token": token})
    assert response.status_code == 302
    assert _lang(client.get("/auth/login").get_data(as_text=True)) == "fr"


def test_the_chosen_language_survives_login_and_logout(make, login, client):
    user = make.user("lea", role="investigator", site="01", full_name="Léa Martin")
    _french(client)
    assert login(user.username).status_code == 302
    home = client.get("/").get_data(as_text=True)
    assert _lang(home) == "fr" and "Bienvenue, Léa Martin" in home
    assert "Investigateur du centre" in home and "Déconnexion</button>" in home
    logged_out = client.post("/auth/logout", follow_redirects=True).get_data(as_text=True)
    assert _lang(logged_out) == "fr" and "Déconnexion effectuée." in logged_out


def test_error_pages_are_translated_and_tell_nothing_of_the_url(make, login_as, client):
    login_as("investigator", site="01")
    _french(client)
    first = client.get("/subjects/99-001")
    second = client.get("/subjects/98-002")
    assert first.status_code == second.status_code == 404
    assert "Introuvable" in first.get_data(as_text=True)
    assert without_csrf_token(first) == without_csrf_token(second)


# --- (b) messages and CRF texts in French ------------------------------------------------------


def test_a_french_user_sees_french_flash_messages(make, login, client):
    make.user("odile", role="investigator", site="01")
    _french(client)
    refused = login("odile", "not-the-password")
    page = _text(refused)
    assert refused.status_code == 401
    assert "Nom d'utilisateur inconnu ou mot de passe erroné." in page
    assert LOGIN_FAILED_MESSAGE not in page
    assert login("odile").status_code == 302
    enrolled = client.post("/subjects/enrol", data={"site": str(make.site("01").id)},
                           follow_redirects=True).get_data(as_text=True)
    assert re.search(r"Le sujet 01-\d{3} est enregistré \(sélection\)\.", enrolled)
    assert "Statut</dt>" in enrolled and "sélection" in enrolled


def test_a_refused_status_change_is_explained_in_french(make, login_as, client):
    subject = make.subject("01")
    login_as("investigator", site="01")
    _french(client)
    page = _text(client.post(f"/subjects/{subject.code}/status", data={"status": "withdrawn"},
                             follow_redirects=True))
    assert "Le passage au statut « sorti de l'étude » nécessite un motif." in page
    page = _text(client.post(f"/subjects/{subject.code}/status", data={"status": "included"},
                             follow_redirects=True))
    assert "Le sujet n'est pas éligible : " in page
    assert "I5 pas encore connu : consentement non enregistré" in page  # the criteria too
    assert "not known" not in page and "consent not recorded" not in page
    assert '<dd id="subject-status">sélection</dd>' in page


def test_the_toy_crf_page_is_in_french(make, login_as, client):
    subject = make.subject("01")
    login_as("investigator", site="01")
    _french(client)
    page = _text(client.get(FORM.format(code=subject.code)))
    assert _lang(page) == "fr"
    assert "<h1>Constantes vitales de test</h1>" in page
    assert f"Cahier d'observation {subject.code}</a> › Jour 1" in page
    for text in ("<legend>Mensurations</legend>", "Poids (kg)", "Température maximale (°C)",
                 "Indice de masse corporelle (kg/m2)", "Début de la fièvre", "Décubitus dorsal",
                 "Oxymètre de pouls", " Oui</label>", " Non</label>", "Non fait", "Inconnu",
                 "Demandé mais inconnu", "Non applicable", "Poids : manquant car",
                 "Pas de valeur ?", "Calculé par le système.", "Enregistrer</button>",
                 'placeholder="AAAA, AAAA-MM ou AAAA-MM-JJ"',
                 '<span class="visually-hidden">obligatoire</span>', "non commencé"):
        assert text in page, text
    for english in ("Weight", "Toy vital signs", "Supine", "No value?", "Save</button>"):
        assert english not in page, english


def test_a_french_user_gets_french_validation_messages_and_a_french_save_message(make, login_as,
                                                                                 client):
    subject = make.subject("01")
    login_as("investigator", site="01")
    _french(client)
    invalid = _post_form(client, subject.code, {"weight": "500", "height": "grand", "fever": "Y",
                                                "temperature": "38,9"})
    page = _text(invalid)
    assert invalid.status_code == 400
    assert "Rien n'a été enregistré : corrigez les valeurs signalées ci-dessous." in page
    assert "Un nombre entier est attendu ; valeur saisie : 'grand'." in page
    assert "Poids doit être entre 1 et 400 kg ; valeur saisie : 500." in page
    assert 'value="38,9"' in page  # what was typed is kept

    saved = _post_form(client, subject.code, {"weight": "72", "fever": "N"}, follow=True)
    text = _text(saved)
    assert '<p class="flash flash-info" role="status">Enregistré.</p>' in text
    assert "Historique : Poids" in text and "Motif de la modification" in text
    assert "Erreur de saisie" in text  # the reason codes' labels


def test_a_french_user_reads_the_edit_checks_in_french(make, login_as, client):
    subject = make.included("01")
    login_as("investigator", site="01")
    _french(client)
    refused = _post_form(client, subject.code, {"weight": "72", "fever": "Y", "temperature": "37,2",
                                                "measured_at": "2020-01-01T08:00"})
    page = _text(refused)
    assert refused.status_code == 400
    assert ("Fièvre « oui » mais la température est de 37.2 °C (la fièvre signifie >= 38 °C). "
            "[TOY-01]") in page
    assert f"Mesuré le 2020-01-01, avant l'inclusion le {subject.inclusion_date}. [TOY-02]" in page
    assert "Fever is 'yes'" not in page and "before inclusion" not in page


def test_a_french_user_reads_a_study_crfs_edit_checks_in_french(make, login_as, client):
    subject = make.included("01")
    login_as("investigator", site="01")
    _french(client)
    url = f"/subjects/{subject.code}/visits/D1/1/forms/sofa_daily/1"
    page = client.get(url).get_data(as_text=True)
    refused = client.post(url, data={"submission_token": _token(page), "row_version": "",
                                     "pao2": "80", "pao2_unit": "mmHg", "fio2": "0,5",
                                     "fio2_unit": "%", "bilirubin": "12"})
    page = _text(refused)
    assert refused.status_code == 400
    # the score library's reason rebuilt as a message, the unit's label a message of its own
    assert ("Le rapport PaO2/FiO2 ne peut pas être calculé : la FiO2 doit être comprise entre 0.21 "
            "et 1.0 (21-100 % ; air ambiant : 0,21), valeur saisie : 0.5 %, soit 0.005 en fraction "
            "(une fraction saisie avec l'unité « % » ?). [SOFA-01]") in page
    assert "Indiquez l'unité de la bilirubine (12). [SOFA-04]" in page
    assert "cannot be computed" not in page and "Decimal(" not in page
    assert "Give the unit" not in page


def test_a_study_crfs_check_is_english_as_a_string_and_french_with_tr(app):
    from flask import session

    from ecrf.forms.crfs import consent
    from ecrf.i18n import tr

    [check] = [c for c in consent.DEFINITION.checks if c.id == "CONS-01"]
    message = check.rule({"consent_type": "RELATIVE"})
    assert str(message) == ("A consent signed by a relative or the trusted person needs the date "
                            "and time of the relative's signature (found none).")
    with app.test_request_context("/"):
        session["lang"] = "fr"
        assert tr(message) == ("Un consentement signé par un proche ou la personne de confiance "
                               "nécessite la date et l'heure de la signature du proche (non "
                               "renseignées).")


def test_the_eligibility_table_is_in_french_for_a_french_user(make, login_as, client):
    subject = make.included("01")
    login_as("investigator", site="01")
    _french(client)
    page = _text(client.get(f"/subjects/{subject.code}"))
    assert "Éligibilité, calculée à partir des données" in page
    details = re.findall(r"<td>([^<]*)</td></tr>", page)
    assert len(details) == 7, details
    assert re.fullmatch(r"âge \d+ ans \(plus de \d+\)", details[0]), details[0]
    assert re.fullmatch(r"HLH-2004 : (\d+|\?) critères \(\d+ requis\), HScore (\d+|\?) "
                        r"\(\d+ requis\)", details[1]), details[1]
    assert details[2].startswith("admis en réanimation le ")
    assert re.fullmatch(r"SOFA à J0 : \d+ \(\d+ ou plus requis\)", details[3]), details[3]
    assert details[4].startswith("consentement : ")
    assert details[6] == "réponse « non » à chaque critère de non-inclusion"
    for english in ("years", "needs", "admitted to the ICU", "consent:", "answered no"):
        assert english not in page, english


def test_french_input_accepts_the_decimal_comma(make, login_as, client):
    subject = make.subject("01")
    login_as("investigator", site="01")
    _french(client)
    response = _post_form(client, subject.code, {"weight": "72,5", "fever": "N"})
    assert response.status_code == 302
    page = client.get(FORM.format(code=subject.code)).get_data(as_text=True)
    assert 'id="weight"' in page and 'value="72.5"' in page
    [created] = audit_rows(action="item.create", item="weight")
    assert created.value.new_value == "72.5"


def test_what_the_audit_trail_keeps_stays_english_for_a_french_user(make, login_as, client):
    subject = make.subject("01")
    login_as("investigator", site="01")
    _french(client)
    asked = _post_form(client, subject.code, {"weight": "210", "fever": "N"})
    page = asked.get_data(as_text=True)
    assert "Valeurs à confirmer" in page
    assert ("Poids est habituellement entre 35 et 200 kg ; valeur saisie : 210. Confirmez que la "
            "valeur est juste.") in html.unescape(page)
    check_id = re.search(r'name="confirm" value="([^"]+)"', page).group(1)
    confirmed = _post_form(client, subject.code, {"weight": "210", "fever": "N", "confirm": check_id})
    assert confirmed.status_code == 302
    [record] = audit_rows(action="check.confirmed")
    assert record.value.new_value.startswith("Weight is usually between 35 and 200 kg; found 210")
    change = _post_form(client, subject.code, {"weight": "80", "fever": "N",
                                               "reason_code": "entry_error", "reason_text": "typo"})
    assert change.status_code == 302
    [update] = audit_rows(action="item.update", item="weight")
    assert (update.reason_code, update.reason_text) == ("entry_error", "typo")


def test_the_grid_shows_visits_titles_and_statuses_in_french(make, login_as, client):
    subject = make.included("01")
    login_as("investigator", site="01")
    _french(client)
    page = client.get(f"/subjects/{subject.code}/casebook").get_data(as_text=True)
    for text in ("Sélection / inclusion (J0)", "Jour 1", "Jour 14", "Jour 28", "Visite non programmée",
                 "Constantes vitales de test", "SOFA quotidien", "non commencé", "<th scope=\"col\">Visite"):
        assert text in page, text


# --- outside a request: English ----------------------------------------------------------------


def test_messages_built_outside_any_app_context_are_english():
    with pytest.raises(ItemValueError, match=r"A whole number is expected; found 'x'\."):
        Integer().parse("x")
    with pytest.raises(ItemValueError, match=r"found '7,555'"):
        DecimalNumber(2).parse("7,555")
    assert str(NULL_FLAVORS["ASKU"]) == "Asked but unknown"
    assert str(REASON_CODES["other"]) == "Other (explain)"
    assert visit_title("Day 3") == "Day 3"


def test_messages_built_in_an_app_context_without_a_request_are_english(app):
    with app.app_context():
        assert gettext("Saved.") == "Saved."
        assert visit_title("Screening / inclusion (D0)") == "Screening / inclusion (D0)"
        with pytest.raises(ItemValueError, match="A whole number is expected"):
            Integer().parse("x")


# --- (c) the catalog ---------------------------------------------------------------------------


def test_the_crf_extractor_yields_every_text_of_a_definition():
    texts = {text for text, _where in crf_texts(toy_crf.DEFINITION)}
    assert {"Toy vital signs", "Body", "Weight", "Body mass index", "Fever", "Onset of fever",
            "Supine", "Pulse oximeter", "Yes", "No"} <= texts
    assert "kg" not in texts  # units are not translated


@pytest.fixture(scope="module")
def fresh_template(tmp_path_factory) -> Path:
    """A template extracted now from the sources, as `make translations` does."""
    out = tmp_path_factory.mktemp("i18n") / "messages.pot"
    pybabel = Path(sys.executable).with_name("pybabel")
    subprocess.run([str(pybabel), "extract", "-F", "babel.cfg", "-k", "_l", "-k", "lazy_gettext", "-k", "msg",
                    "-o", str(out), "."], cwd=ROOT, check=True, capture_output=True, text=True)
    return out


def _read_po(path: Path):
    with path.open("rb") as f:
        return read_po(f)


def test_the_template_covers_the_interface_the_crfs_and_the_schedule(fresh_template):
    ids = {m.id for m in _read_po(fresh_template) if m.id}
    assert {"Log in", "Welcome, %(name)s", "Reason for change",
            "Not done", "Asked but unknown", "Site investigator", "Monitor (CRA)",
            "A whole number is expected; found %(found)s.", "between %(low)s and %(high)s",
            LOGIN_FAILED_MESSAGE, "Daily SOFA", "Toy vital signs", "Pulse oximeter",
            "Screening / inclusion (D0)", "Day %(n)s", "screen failure", "not started"} <= ids
    assert "Day 1" not in ids


def test_the_french_catalog_translates_every_message(fresh_template):
    catalog = _read_po(PO)
    entries = {m.id: m for m in catalog if m.id}
    problems = []
    for message in _read_po(fresh_template):
        if not message.id:
            continue
        entry = entries.get(message.id)
        if entry is None or not all(_forms(entry.string)) or "fuzzy" in entry.flags:
            problems.append(message.id)
    assert problems == [], f"{len(problems)} message(s) without a French translation " \
                           f"(run `make translations`, then translate them): {problems}"
    assert [error for error in catalog.check()] == []  # the placeholders match


def _forms(text) -> tuple[str, ...]:
    """A message's text, or its singular and plural forms."""
    return tuple(text) if isinstance(text, list | tuple) else (text,)


def test_the_french_placeholders_are_the_english_ones():
    def names(text: str) -> list[str]:
        return sorted(re.findall(r"%\((\w+)\)[sd]", text))

    for message in _read_po(PO):
        if message.id:
            english = {tuple(names(t)) for t in _forms(message.id)}
            french = {tuple(names(t)) for t in _forms(message.string)}
            assert french == english, message.id


def test_the_compiled_catalog_is_up_to_date_with_the_po():
    compiled = io.BytesIO()
    write_mo(compiled, _read_po(PO))
    compiled.seek(0)
    with MO.open("rb") as f:
        shipped = read_mo(f)
    fresh = read_mo(compiled)
    assert {_forms(m.id): _forms(m.string) for m in shipped if m.id} == \
        {_forms(m.id): _forms(m.string) for m in fresh if m.id}
