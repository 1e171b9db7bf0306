"""The portal's HTTP API (v1): thin DRF views over the monitoring, statistics, onboarding, engine,
forecast and MTA-configuration (PowerMTA and KumoMTA) modules (PRODUCT.md section 7).

Authentication is a DRF token or the admin session; every object is looked up among the caller's
tenants (`permissions.py`), so another tenant's IP is a 404. Errors name the offending field.
"""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import permissions
from .counters import CounterStoreUnavailable
from .engine import ACTIONS as PLAN_ACTIONS
from .engine import ActionRefused, perform
from .forecast import forecast
from .kumomta_config import generate_kumomta_config
from .monitoring import ip_entries, monitored_ips, warmup_status
from .mta_config import DryRunActive, generate_pmta_config
from .onboarding import add_domain_with_ip, resolve_tenant
from .serializers import (
    AddDomainSerializer,
    AuditEventSerializer,
    DailyStatSerializer,
    ForecastQuerySerializer,
    ForecastSerializer,
    MonitoredIPSerializer,
    PlanActionResultSerializer,
    PlanActionSerializer,
    PmtaConfigQuerySerializer,
    RecordStatsResultSerializer,
    RecordStatsSerializer,
    StatsQuerySerializer,
    TenantQuerySerializer,
    WarmupStatusSerializer,
)
from .stats import daily_stats, record_stats


class ServiceUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The counter store is unreachable; nothing was counted. Retry later."
    default_code = "counter_store_unavailable"


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "refused"


def _field_errors(error: DjangoValidationError) -> dict:
    """A Django ValidationError as DRF's `{field: [messages]}` body."""
    if hasattr(error, "error_dict"):
        return {
            ("non_field_errors" if field == "__all__" else field): msgs for field, msgs in error.message_dict.items()
        }
    return {"non_field_errors": error.messages}


def _query(serializer_class, request: Request) -> dict:
    serializer = serializer_class(data=request.query_params)
    # DRF reads an empty optional parameter (`?tenant=`) as an absent one; the schema says a given
    # parameter has a value, and a caller who typed `?tenant=` most likely forgot it: say so.
    blank = {
        name: ["May not be blank: give a value or leave the parameter out."]
        for name in serializer.fields
        if name in request.query_params and not request.query_params[name].strip()
    }
    if blank:
        raise ValidationError(blank)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


ERROR_RESPONSES = {
    400: OpenApiResponse(OpenApiTypes.OBJECT, description="Invalid input: `{field: [messages]}`."),
    401: OpenApiResponse(OpenApiTypes.OBJECT, description="Not authenticated."),
    404: OpenApiResponse(OpenApiTypes.OBJECT, description="Not found among the caller's tenants."),
}
ADDRESS = OpenApiParameter(
    "address", OpenApiTypes.STR, OpenApiParameter.PATH, description="The IP address (IPv4 or IPv6)."
)


class WarmupStatusView(APIView):
    @extend_schema(
        operation_id="warmup_status",
        tags=["monitoring"],
        summary="Monitoring view",
        parameters=[TenantQuerySerializer],
        responses={200: WarmupStatusSerializer, **ERROR_RESPONSES},
    )
    def get(self, request: Request) -> Response:
        query = _query(TenantQuerySerializer, request)
        tenant = permissions.tenant_from_query(request.user, query.get("tenant"), required=False)
        tenants = [tenant] if tenant else permissions.visible_tenants(request.user)
        return Response(warmup_status(tenants))


class IPStatsView(APIView):
    @extend_schema(
        operation_id="ip_stats",
        tags=["statistics"],
        summary="Consolidated daily stats of one IP",
        parameters=[
            ADDRESS,
            OpenApiParameter("from", OpenApiTypes.DATE, description="First day (inclusive)."),
            OpenApiParameter("to", OpenApiTypes.DATE, description="Last day (inclusive)."),
        ],
        responses={200: DailyStatSerializer(many=True), **ERROR_RESPONSES},
    )
    def get(self, request: Request, address: str) -> Response:
        ip = permissions.visible_ip(request.user, address)
        query = _query(StatsQuerySerializer, request)
        return Response(daily_stats(ip, query.get("from"), query.get("to")))

    @extend_schema(
        operation_id="ip_stats_record",
        tags=["statistics"],
        summary="Add counts to one day of an IP (record_warmup_stats)",
        parameters=[ADDRESS],
        request=RecordStatsSerializer,
        responses={
            200: RecordStatsResultSerializer,
            **ERROR_RESPONSES,
            503: OpenApiResponse(OpenApiTypes.OBJECT, description="Counter store unreachable; nothing counted."),
        },
    )
    def post(self, request: Request, address: str) -> Response:
        ip = permissions.visible_ip(request.user, address)
        serializer = RecordStatsSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            day = record_stats(ip, serializer.counts(), serializer.validated_data.get("date"))
        except CounterStoreUnavailable:
            raise ServiceUnavailable() from None
        except (DjangoValidationError, ValueError) as error:
            messages = error.messages if isinstance(error, DjangoValidationError) else [str(error)]
            raise ValidationError({"non_field_errors": messages}) from None
        return Response({"success": True, "ip": ip.address, "date": day.isoformat()})


class DomainsView(APIView):
    @extend_schema(
        operation_id="domains_create",
        tags=["onboarding"],
        summary="Add a domain with its IP (and the IP's warmup plan)",
        request=AddDomainSerializer,
        responses={201: MonitoredIPSerializer, 400: ERROR_RESPONSES[400], 401: ERROR_RESPONSES[401]},
    )
    def post(self, request: Request) -> Response:
        serializer = AddDomainSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        unknown = ValidationError({"tenant": [f"No tenant {data['tenant']!r} among yours (give its slug or id)."]})
        try:
            tenant = resolve_tenant(data["tenant"])
        except DjangoValidationError:
            raise unknown from None
        # Same answer for a tenant that exists but is not the caller's: nothing to learn from the API.
        if not permissions.visible_tenants(request.user).filter(pk=tenant.pk).exists():
            raise unknown
        try:
            plan = add_domain_with_ip(
                tenant=tenant,
                domain=data["domain"],
                ip=data["ip"],
                hostname=data["hostname"],
                start=data["start"],
                force=data["force"],
                mta_source_name=data["mta_source_name"],
                user=request.user,
            )
        except DjangoValidationError as error:
            raise ValidationError(_field_errors(error)) from None
        ip = monitored_ips([tenant]).get(pk=plan.ip_id)
        return Response(ip_entries([ip], live=False)[0], status=status.HTTP_201_CREATED)


class PlanActionView(APIView):
    @extend_schema(
        operation_id="plan_action",
        tags=["plans"],
        summary="A manual action on an IP's warmup plan, recorded with the acting user",
        parameters=[
            ADDRESS,
            OpenApiParameter("action", OpenApiTypes.STR, OpenApiParameter.PATH, enum=list(PLAN_ACTIONS)),
        ],
        request=PlanActionSerializer,
        responses={
            200: PlanActionResultSerializer,
            **ERROR_RESPONSES,
            409: OpenApiResponse(OpenApiTypes.OBJECT, description="Refused in the plan's state: `{detail}` says why."),
        },
    )
    def post(self, request: Request, address: str, action: str) -> Response:
        plan = permissions.visible_plan(request.user, address)
        if action not in PLAN_ACTIONS:
            raise ValidationError({"action": [f"Unknown action {action!r}; one of: {', '.join(PLAN_ACTIONS)}."]})
        serializer = PlanActionSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            event = perform(plan, action, user=request.user, reason=serializer.validated_data["reason"])
        except ActionRefused as refusal:
            raise Conflict(str(refusal)) from None
        except DjangoValidationError as error:
            raise ValidationError(_field_errors(error)) from None
        ip = monitored_ips([plan.ip.tenant]).get(pk=plan.ip_id)
        return Response({"action": action, "event": AuditEventSerializer(event).data, "ip": ip_entries([ip])[0]})


class ForecastView(APIView):
    @extend_schema(
        operation_id="forecast",
        tags=["capacity"],
        summary="Capacity forecast, assuming clean warmups from today",
        parameters=[ForecastQuerySerializer],
        responses={200: ForecastSerializer, **ERROR_RESPONSES},
    )
    def get(self, request: Request) -> Response:
        query = _query(ForecastQuerySerializer, request)
        tenant = permissions.tenant_from_query(request.user, query.get("tenant"), required=True)
        return Response(
            forecast(
                tenant, days=query["days"], add_per_week=query.get("add_per_week"), target_ips=query.get("target_ips")
            )
        )


class FirstRendererNegotiation(BaseContentNegotiation):
    """Always the view's first renderer: the configuration endpoint answers `text/plain` itself and
    JSON for errors, whatever the client's Accept header says (no 406 for `Accept: text/plain`)."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class PmtaConfigView(APIView):
    renderer_classes = [JSONRenderer]
    content_negotiation_class = FirstRendererNegotiation

    @extend_schema(
        operation_id="pmta_config",
        tags=["mta"],
        summary="PowerMTA configuration for today's quotas",
        parameters=[PmtaConfigQuerySerializer],
        responses={
            (200, "text/plain"): OpenApiResponse(OpenApiTypes.STR, description="PowerMTA configuration text."),
            **ERROR_RESPONSES,
            409: OpenApiResponse(OpenApiTypes.OBJECT, description="WARMUP_DRY_RUN is on: no quota reaches the MTA."),
        },
    )
    def get(self, request: Request) -> HttpResponse:
        return _mta_config(request, generate_pmta_config)


class KumomtaConfigView(APIView):
    """The KumoMTA counterpart of PmtaConfigView: same authentication, tenant rules and errors."""

    renderer_classes = [JSONRenderer]
    content_negotiation_class = FirstRendererNegotiation

    @extend_schema(
        operation_id="kumomta_config",
        tags=["mta"],
        summary="KumoMTA traffic-shaping file for today's quotas",
        parameters=[PmtaConfigQuerySerializer],
        responses={
            (200, "text/plain"): OpenApiResponse(
                OpenApiTypes.STR,
                description="KumoMTA shaping TOML: per egress source and provider domain, max_message_rate.",
            ),
            **ERROR_RESPONSES,
            409: OpenApiResponse(OpenApiTypes.OBJECT, description="WARMUP_DRY_RUN is on: no quota reaches the MTA."),
        },
    )
    def get(self, request: Request) -> HttpResponse:
        return _mta_config(request, generate_kumomta_config)


def _mta_config(request: Request, generate) -> HttpResponse:
    """A generated MTA configuration of the tenant the query names, as text (409 in dry run)."""
    query = _query(PmtaConfigQuerySerializer, request)
    tenant = permissions.tenant_from_query(request.user, query.get("tenant"), required=True)
    try:
        text = generate(tenant)
    except DryRunActive as exc:
        raise Conflict(str(exc)) from None
    return HttpResponse(text, content_type="text/plain; charset=utf-8")
