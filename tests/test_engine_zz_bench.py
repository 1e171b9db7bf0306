import time, resource
import pytest
from warmup.models import WarmupPlan
from .factories import TenantFactory
from .test_engine_performance import build

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime

@pytest.mark.django_db
def test_bench():
    for t in [TenantFactory() for _ in range(10)]:
        build(170, t)
    base = WarmupPlan.objects.select_related("ip__domain", "ip__tenant").order_by("pk")
    for label, qs in [("full", base), ("defer", base.defer("created_at", "schedule_id", "ip__created_at", "ip__domain__created_at", "ip__tenant__created_at", "ip__hostname", "ip__mta_source_name", "ip__tenant__webhook_signing_secret")), ("full", base)]:
        t0, c0 = time.perf_counter(), cpu()
        plans = list(qs.all())
        print("\nBENCH", label, len(plans), round(time.perf_counter() - t0, 3), round(cpu() - c0, 3))
