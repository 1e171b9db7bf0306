"""The baseline of the single-event webhook bench: the smallest Django view that parses one JSON event
and counts it in Redis, served by gunicorn exactly as the portal is (PRODUCT.md section 10)."""
