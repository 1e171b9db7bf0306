"""One endpoint, at the path shape of the portal's webhooks."""

from django.urls import path

from . import views

urlpatterns = [path("api/v1/webhooks/events/", views.count_event)]
