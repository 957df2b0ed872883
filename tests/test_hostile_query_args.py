"""List pages read their page number and site filter from the query string: a hostile value
gives the first page (or nothing), never a server error. (Found by fuzzing: an integer beyond
what the database holds reached it as an OFFSET or an id.)"""

from __future__ import annotations

import pytest

LIST_PAGES = {"data_manager": ["/subjects/", "/queries/", "/exports/", "/audit/", "/audit/review",
                               "/missing-forms", "/sign-off", "/delegation/"],
              "monitor": ["/sdv/"]}


@pytest.mark.requirement("E6-4.3.3")
@pytest.mark.parametrize("role", LIST_PAGES)
@pytest.mark.parametrize("page", ["99999999999999999999", "\u00b2", "-3", "abc"])
def test_a_hostile_page_number_on_a_list_is_the_first_page_not_a_crash(make, login_as, client,
                                                                       role, page):
    login_as(role, site="01" if role == "monitor" else None)
    for url in LIST_PAGES[role]:
        for args in ({"page": page}, {"page": page, "site": page}):
            response = client.get(url, query_string=args)
            assert response.status_code in (200, 404), (url, args, response.status_code)
