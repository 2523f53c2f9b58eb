"""Middleware of the dashboard."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import resolve_url
from django_htmx.http import HttpResponseClientRedirect


class HtmxLoginRedirectMiddleware:
    """Send an htmx request whose session expired to the login page, as a whole page.

    `login_required` answers 302 to the login page; htmx would follow it and swap the login
    page into the polled region of the job page. Instead the browser goes to the login page,
    with `next` set to the page the user was on (HX-Current-URL), not to the partial.
    Comes after django_htmx's middleware, which sets `request.htmx`.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if not (request.htmx and response.status_code == 302):
            return response
        if urlsplit(response["Location"]).path != resolve_url(settings.LOGIN_URL):
            return response
        # The page's own URL when it is on this site; else the requested one.
        page = request.htmx.current_url_abs_path or request.get_full_path()
        login = redirect_to_login(page)
        return HttpResponseClientRedirect(login["Location"])
