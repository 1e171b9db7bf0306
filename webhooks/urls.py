"""Ingestion endpoints, one per source (PRODUCT.md section 6); included at api/v1/webhooks/."""

from django.urls import path

from webhooks import views

app_name = "webhooks"

urlpatterns = [
    path("powermta/", views.powermta_webhook, name="powermta"),
    path("mailwizz/", views.mailwizz_webhook, name="mailwizz"),
    path("kumomta/", views.kumomta_webhook, name="kumomta"),
    path("events/", views.events_webhook, name="events"),
]
