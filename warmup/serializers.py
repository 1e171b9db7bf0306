"""Request and response shapes of the portal's API (v1), as PRODUCT.md section 7 defines them.

Input serializers validate and name the offending field; output serializers exist mainly so that the
OpenAPI schema (`/api/schema/`) documents the JSON the views return.
"""

from django.conf import settings
from rest_framework import serializers

from .models import DailyStat, WarmupPlan

# One request adds at most this much to one counter: well below the database's integer column, and
# far above any real day of one IP.
MAX_COUNT_PER_REQUEST = 100_000_000
# Ten years of days; anything longer is a typo, and the computation grows with it.
MAX_FORECAST_DAYS = 3650
MAX_FORECAST_IPS = 100_000


class StrictSerializer(serializers.Serializer):
    """A serializer that refuses fields it does not know (a typo must not be silently ignored)."""

    def validate(self, attrs):
        if hasattr(self, "initial_data") and hasattr(self.initial_data, "keys"):
            # The browsable API's HTML forms add their CSRF token to the body.
            unknown = sorted(set(self.initial_data.keys()) - set(self.fields) - {"csrfmiddlewaretoken"})
            if unknown:
                raise serializers.ValidationError(
                    {name: ["Unknown field; expected one of: " + ", ".join(self.fields) + "."] for name in unknown}
                )
        return attrs


# --- Monitoring ---------------------------------------------------------------------------------


class TenantQuerySerializer(serializers.Serializer):
    tenant = serializers.SlugField(required=False, help_text="Tenant slug; default: every tenant of the caller.")


class ProviderFiguresSerializer(serializers.Serializer):
    share = serializers.FloatField(help_text="Percent of the IP's daily quota for this provider.")
    daily_quota = serializers.IntegerField(help_text="The provider's part of the quota today; 0 while suspended.")
    sent_today = serializers.IntegerField(allow_null=True, help_text="Live count; null when the counters are down.")
    suspended_until = serializers.DateTimeField(
        allow_null=True, help_text="End of the provider's suspension for this IP; null when it may send."
    )


class MonitoredIPSerializer(serializers.Serializer):
    ip = serializers.IPAddressField()
    domain = serializers.CharField()
    tenant = serializers.SlugField(help_text="Tenant slug.")
    phase = serializers.ChoiceField(choices=WarmupPlan.Phase.choices, allow_null=True)
    status = serializers.CharField(help_text="The IP's status: pending, warming, paused, active.")
    plan_status = serializers.ChoiceField(choices=WarmupPlan.Status.choices, allow_null=True)
    start_date = serializers.DateField(allow_null=True, help_text="The day the plan started or will start.")
    daily_quota = serializers.IntegerField()
    sent_today = serializers.IntegerField(allow_null=True, help_text="Live count; null when the counters are down.")
    remaining_today = serializers.IntegerField(allow_null=True)
    warmup_duration_days = serializers.IntegerField()
    needs_attention = serializers.BooleanField(help_text="Paused with no end: waits for a person.")
    providers = serializers.DictField(
        child=ProviderFiguresSerializer(),
        help_text="Per mailbox provider (gmail, microsoft, yahoo, apple, other): share, quota, sent today, suspension.",
    )


class WarmupStatusSerializer(serializers.Serializer):
    ips = MonitoredIPSerializer(many=True)
    active_ips = serializers.IntegerField()
    warming_ips = serializers.IntegerField()
    paused_ips = serializers.IntegerField()
    scheduled_ips = serializers.IntegerField()
    total_daily_capacity = serializers.IntegerField()


# --- Statistics ---------------------------------------------------------------------------------


class StatsQuerySerializer(serializers.Serializer):
    """`from` and `to` (inclusive); `from` is a Python keyword, hence get_fields()."""

    def get_fields(self):
        return {
            "from": serializers.DateField(required=False, input_formats=["iso-8601"]),
            "to": serializers.DateField(required=False, input_formats=["iso-8601"]),
        }

    def validate(self, attrs):
        if attrs.get("from") and attrs.get("to") and attrs["from"] > attrs["to"]:
            raise serializers.ValidationError({"to": ["Must not be before 'from'."]})
        return attrs


class DailyStatSerializer(serializers.Serializer):
    date = serializers.DateField()
    sent = serializers.IntegerField()
    delivered = serializers.IntegerField()
    bounced = serializers.IntegerField()
    complaints = serializers.IntegerField()
    opens = serializers.IntegerField()
    clicks = serializers.IntegerField()
    bounce_rate = serializers.FloatField(help_text="Percent of sent.")
    complaint_rate = serializers.FloatField(help_text="Percent of delivered.")


def _count_field(required: bool = False) -> serializers.IntegerField:
    return serializers.IntegerField(min_value=0, max_value=MAX_COUNT_PER_REQUEST, required=required)


class RecordStatsSerializer(StrictSerializer):
    """Counts to add to one day of an IP (default: today in its tenant's zone); unknown fields are refused."""

    date = serializers.DateField(required=False, input_formats=["iso-8601"])
    sent = _count_field(required=True)

    def get_fields(self):
        fields = super().get_fields()
        for name in DailyStat.COUNTERS:
            fields.setdefault(name, _count_field())
        return fields

    def counts(self) -> dict[str, int]:
        return {name: value for name, value in self.validated_data.items() if name != "date" and value}


class RecordStatsResultSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    ip = serializers.IPAddressField()
    date = serializers.DateField(help_text="The day the counts were added to (the tenant's zone).")


# --- Onboarding ---------------------------------------------------------------------------------


class AddDomainSerializer(StrictSerializer):
    """A new sending domain with its IP; the IP's warmup plan is created in the same transaction."""

    tenant = serializers.CharField(max_length=50, help_text="Tenant slug or id.")
    domain = serializers.CharField(max_length=253)
    ip = serializers.CharField(max_length=64, help_text="IPv4 or IPv6 address.")
    hostname = serializers.CharField(max_length=253, required=False, allow_blank=True, default="")
    mta_source_name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    start = serializers.DateField(
        required=False,
        allow_null=True,
        default=None,
        input_formats=["iso-8601"],
        help_text="Day 1 of the plan; default: the earliest day the rotation rule allows.",
    )
    force = serializers.BooleanField(
        required=False, default=False, help_text="Accept a start date that breaks the rotation rule."
    )


# --- Plan actions -------------------------------------------------------------------------------


class PlanActionSerializer(StrictSerializer):
    """Why a person acts (recorded in the audit event); used by pause above all."""

    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class AuditEventSerializer(serializers.Serializer):
    kind = serializers.CharField()
    date = serializers.DateField()
    created_at = serializers.DateTimeField()
    from_phase = serializers.CharField()
    to_phase = serializers.CharField()
    from_status = serializers.CharField()
    to_status = serializers.CharField()
    reason = serializers.CharField()
    actor = serializers.CharField(source="actor_name")


class PlanActionResultSerializer(serializers.Serializer):
    action = serializers.CharField()
    event = AuditEventSerializer()
    ip = MonitoredIPSerializer(help_text="The IP's monitoring row after the action.")


# --- Forecast -----------------------------------------------------------------------------------


class ForecastQuerySerializer(serializers.Serializer):
    tenant = serializers.SlugField(required=False, help_text="Tenant slug; required when you have several.")
    days = serializers.IntegerField(min_value=1, max_value=MAX_FORECAST_DAYS, default=365)
    add_per_week = serializers.IntegerField(
        min_value=0,
        required=False,
        help_text="New IPs started per 7 days; default and maximum WARMUP_MAX_NEW_IPS_PER_WEEK.",
    )
    target_ips = serializers.IntegerField(
        min_value=0,
        max_value=MAX_FORECAST_IPS,
        required=False,
        help_text="Total non-retired IPs to reach; additions stop there.",
    )

    def validate_add_per_week(self, value: int) -> int:
        if value > settings.WARMUP_MAX_NEW_IPS_PER_WEEK:
            raise serializers.ValidationError(
                f"At most {settings.WARMUP_MAX_NEW_IPS_PER_WEEK} (WARMUP_MAX_NEW_IPS_PER_WEEK, the rotation rule)."
            )
        return value


class ForecastDaySerializer(serializers.Serializer):
    day = serializers.IntegerField(help_text="1 is today.")
    date = serializers.DateField()
    active = serializers.IntegerField()
    warming = serializers.IntegerField()
    paused = serializers.IntegerField()
    scheduled = serializers.IntegerField()
    total_daily_capacity = serializers.IntegerField()


class ForecastSerializer(serializers.Serializer):
    tenant = serializers.SlugField()
    target_ips = serializers.IntegerField()
    target_capacity = serializers.IntegerField()
    target_reached_on = serializers.DateField(allow_null=True)
    days = ForecastDaySerializer(many=True)


class PmtaConfigQuerySerializer(serializers.Serializer):
    tenant = serializers.SlugField(required=False, help_text="Tenant slug; required when you have several.")
