"""Ingestion endpoints, one per source (PRODUCT.md section 6)."""

urlpatterns: list = []
