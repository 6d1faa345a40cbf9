"""The search page: query, domain, dates and mode; results with highlighted snippets and,
on demand, why each ranked where it did."""

from __future__ import annotations

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from search.curation import audit
from search.portal.common import access_of, refuse_nul, staff_domains
from search.retrieval.search import SearchError, SearchFilters, search

PER_PAGE = 10


class SearchForm(forms.Form):
    q = forms.CharField(label="Search for", max_length=1000, strip=True,
                        validators=[refuse_nul])
    domain = forms.ChoiceField(label="Domain")
    mode = forms.ChoiceField(label="Mode", initial="hybrid", required=False, choices=[
        ("hybrid", "Hybrid"), ("bm25", "Keywords (BM25)"), ("dense", "Meaning (dense)")])
    after = forms.DateField(label="Changed from", required=False,
                            widget=forms.DateInput(attrs={"type": "date"}))
    before = forms.DateField(label="to", required=False,
                             widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args, domains, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["domain"].choices = [(d.slug, d.name) for d in domains]


@login_required
def search_page(request: HttpRequest) -> HttpResponse:
    domains = staff_domains(request)
    form = SearchForm(request.GET if "q" in request.GET else None, domains=domains,
                      initial={"domain": domains[0].slug if domains else ""})
    response, error = None, ""
    if form.is_valid():
        data = form.cleaned_data
        try:
            response = search(data["q"], domain=data["domain"], access=access_of(request),
                              mode=data["mode"] or "hybrid", k=PER_PAGE,
                              filters=SearchFilters.for_days(data["after"], data["before"]))
        except SearchError as exc:
            error = str(exc)
        else:
            audit.record(request.user, "search", "portal", domain=data["domain"],
                         query=data["q"], shown=audit.hits_shown(response.documents))
    return render(request, "portal/search.html", {
        "form": form, "response": response, "error": error, "domains": domains,
        "nav": "search"})
