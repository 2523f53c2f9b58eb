from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse


@login_required
def home(request):
    return HttpResponse("ok")


job_list = launch = job_detail = job_progress = job_items = cancel = retry = home
