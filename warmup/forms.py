"""Forms of the warmup admin: adding a domain with its IP, editing schedules, the plan actions' reason box.

The forms validate input shape only; the rules (rotation, duplicates, tenant) belong to
`warmup.onboarding`, whose ValidationError is mapped back onto these fields.
"""

from __future__ import annotations

import json
import re

from django import forms
from django.contrib.admin.helpers import ActionForm
from django.core.exceptions import ValidationError

from domains.models import Tenant

from .models import WarmupPlan, WarmupSchedule, validate_steps

# week_1 .. week_6: a plan has at most one step per phase the model knows.
MAX_STEPS = len(WarmupPlan.Phase.choices) - 1


class AddDomainForm(forms.Form):
    """One form for a new domain, its IP and the IP's warmup plan."""

    tenant = forms.ModelChoiceField(queryset=Tenant.objects.none(), empty_label=None)
    domain = forms.CharField(max_length=253, help_text="Sending domain, e.g. mail6.example.com.")
    ip = forms.CharField(label="IP address", max_length=45, help_text="IPv4 or IPv6 sending address.")
    hostname = forms.CharField(max_length=253, required=False, help_text="rDNS / EHLO name; empty: the domain is used.")
    mta_source_name = forms.CharField(
        label="MTA source name",
        max_length=100,
        required=False,
        help_text="PowerMTA virtual-mta or KumoMTA egress_source name; empty: derived from the address.",
    )
    start = forms.DateField(
        label="Start date",
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Empty: the earliest date the rotation rule allows (one new IP per week by default).",
    )
    force = forms.BooleanField(required=False, help_text="Start on the given date even if it breaks the rotation rule.")

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        # Only the tenants the user belongs to (all for a superuser); an id outside them is "not a valid choice".
        self.fields["tenant"].queryset = Tenant.objects.visible_to(user)

    def add_onboarding_errors(self, error: ValidationError) -> None:
        """Put the onboarding's errors on the fields they name; anything else above the form."""
        if not hasattr(error, "error_dict"):
            self.add_error(None, error)
            return
        for field, field_errors in error.error_dict.items():
            self.add_error(field if field in self.fields else None, field_errors)


class StepsField(forms.CharField):
    """Daily quotas typed as "50, 200, 500" (a JSON list is accepted too)."""

    def prepare_value(self, value):
        if isinstance(value, list):
            return ", ".join(str(step) for step in value)
        if isinstance(value, str) and value.startswith("["):
            try:
                return self.prepare_value(json.loads(value))
            except ValueError:
                return value
        return value

    def to_python(self, value):
        text = (super().to_python(value) or "").strip().strip("[]")
        if not text:
            return []
        steps = []
        for part in re.split(r"[\s,;]+", text):
            if not part:
                continue
            if not part.isdigit():
                raise ValidationError(f"{part!r} is not a whole number; write the quotas like 50, 200, 500.")
            steps.append(int(part))
        return steps

    def validate(self, value):
        super().validate(value)
        validate_steps(value)
        if len(value) > MAX_STEPS:
            raise ValidationError(f"At most {MAX_STEPS} steps (one per phase, week 1 to week {MAX_STEPS}).")
        for previous, step in zip(value, value[1:], strict=False):
            if step < previous:
                raise ValidationError(f"A ramp only goes up: {step} comes after {previous}.")


class WarmupScheduleForm(forms.ModelForm):
    steps = StepsField(help_text="Daily quota of each phase, in order, e.g. 50, 200, 500, 1500, 5000, 10000.")

    class Meta:
        model = WarmupSchedule
        fields = ("name", "steps", "phase_days", "is_default")

    def clean_phase_days(self):
        days = self.cleaned_data["phase_days"]
        if not days:
            raise ValidationError("A phase needs at least one qualifying day.")
        return days


class PlanActionForm(ActionForm):
    """The changelist's action bar, with the reason a manual pause records."""

    reason = forms.CharField(
        required=False,
        max_length=500,
        widget=forms.TextInput(attrs={"placeholder": "Reason (required to pause)", "size": 30}),
    )
