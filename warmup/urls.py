"""The portal's API (v1): monitoring, statistics, plan actions, forecast, MTA configuration."""

urlpatterns: list = []
