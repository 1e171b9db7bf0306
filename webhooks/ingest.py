"""The ingestion pipeline of every source: parsed batch -> attribute -> count (warmup.counters) -> dead letters.

One counter-store call per batch (`count_grouped()`: de-duplicated and counted there by one script,
atomically; with Redis the batch's message references are written in the same round trip, ahead of the
counts), one round trip to read the references the batch needs (only for events without an IP or
source name), one query for the tenant's IPs per request (or per backfill; none with the web
processes' caches), and dead letters for what cannot be counted: events naming an IP the tenant does
not have (`unknown_ip`), events nothing attributes (`unattributed`), and invalid records (`invalid`).
Dead letters are unique per (tenant, event key), so a re-posted unattributed event is kept once, and
`reprocess_dead_letters` counts it (once, under the same key) after its IP appears.

Order matters for "never a 2xx for an event not durably counted": references and counts are written
first; if the counter store is unreachable, `CounterStoreUnavailable` propagates and no dead letter
is written: the sender retries the whole body, and whatever Redis counted before it became unreachable
(on a cluster, the slots already run) is found as duplicates then."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from django.db import transaction
from django.utils import timezone

from domains.models import MTASource, Tenant
from warmup.counters import BUCKET_SECONDS, GroupKey, References, Window, get_store
from webhooks import metrics, spikes
from webhooks.attribution import Attributor
from webhooks.deferrals import Classifier
from webhooks.events import DayOf, EventType, NormalisedEvent, event_key, provider_for, window_items
from webhooks.models import DeadLetter
from webhooks.parsers import Batch, Rejection, kumomta, mailwizz, normalised, powermta

DEFERRED = EventType.DEFERRED

logger = logging.getLogger(__name__)

# Sources and their record normalisers (a dead letter's raw record is re-read by these).
NORMALISERS = {
    powermta.SOURCE: powermta.normalise_record,
    kumomta.SOURCE: kumomta.normalise_record,
    mailwizz.SOURCE: mailwizz.normalise_record,
    normalised.SOURCE: normalised.normalise_record,
}


@dataclass
class IngestResult:
    """The figures of the webhook answer (PRODUCT.md section 6)."""

    accepted: int = 0
    duplicates: int = 0
    unattributed: int = 0
    ignored: int = 0
    rejected: list[dict] = field(default_factory=list)

    def as_json(self) -> dict:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "unattributed": self.unattributed,
            "ignored": self.ignored,
            "rejected": self.rejected,
        }

    def add(self, other: IngestResult) -> None:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.unattributed += other.unattributed
        self.ignored += other.ignored
        self.rejected.extend(other.rejected)


class TenantContext:
    """What attributing and counting need of a tenant, loaded once and reused across batches.

    The parts may be given ready-made: the webhook views take them from `webhooks.cache`, so that a
    request costs no query; by default they are loaded here (one query for the tenant's IPs).
    """

    def __init__(
        self,
        tenant: Tenant,
        *,
        attributor: Attributor | None = None,
        day_of: DayOf | None = None,
        providers: dict[str, str] | None = None,
    ):
        self.tenant = tenant
        self.attributor = attributor if attributor is not None else Attributor(tenant)
        self.day_of = day_of if day_of is not None else DayOf(tenant.zone)
        self.providers: dict[str, str] = providers if providers is not None else {}
        self.store = get_store()

    def provider(self, domain: str) -> str:
        provider = self.providers.get(domain)
        if provider is None:
            provider = self.providers[domain] = provider_for(domain)
        return provider


@dataclass
class Counted:
    """Outcome of attributing and counting a list of events."""

    counted: list[NormalisedEvent] = field(default_factory=list)  # credited to an IP (new or duplicate)
    accepted: int = 0  # of `counted`: counted now
    duplicates: int = 0  # of `counted`: counted before (or twice in the list)
    dead: list[tuple[NormalisedEvent, str, str]] = field(default_factory=list)  # (event, reason, error)


def count_events(ctx: TenantContext, events: Sequence[NormalisedEvent], window: Window | None = None) -> Counted:
    """Attribute each event to one of the tenant's IPs and count the attributed ones in one round trip.

    The counting is a hit of the rate-limit `window`: WindowFull, with nothing counted, when it is full.

    The hot path of ingestion: per event a few dictionary look-ups and one list append, grouping the
    events by what they add (IP, day, provider, counts) for `CounterStore.count_grouped()`. The counts
    include the throttling window counters of the event's 5-minute bucket (`window_items`); a deferral's
    reply is classified here, once per distinct reply, by the deferral rules (`webhooks.deferrals`). With Redis,
    the message references of the batch go in the same round trip as the counts, written first.
    Raises CounterStoreUnavailable (nothing counted) when the store or the reference store is down. An
    event naming an IP the tenant does not have (another tenant's included: a token credits only its
    tenant's IPs, and the answer does not tell whose an address is) is kept as an `unknown_ip` dead letter.
    """
    result = Counted()
    attributor = ctx.attributor
    attributed: list[tuple[NormalisedEvent, int]] = []  # (event, IP id)
    pending: list[NormalisedEvent] = []  # to attribute by their references
    remember: dict[str, int] = {}  # references to write with the counts: reference -> IP id
    dead = result.dead
    for event in events:
        try:
            ip_id = attributor.ip_for(event)
        except ValueError:
            dead.append((event, DeadLetter.Reason.INVALID, f"{event.ip_field}: {event.ip[:60]!r} is not an IP address"))
            continue
        if ip_id is None:
            if event.ip:
                reason = f"{event.ip_field}: {event.ip} is not an IP of this tenant"
                dead.append((event, DeadLetter.Reason.UNKNOWN_IP, reason))
            elif event.message_refs:
                pending.append(event)
            else:
                dead.append((event, DeadLetter.Reason.UNATTRIBUTED, "no sending IP, source name or message reference"))
            continue
        if event.remembers_refs:
            for ref in event.message_refs:
                remember[ref] = ip_id  # the last record of the body that names it wins
        attributed.append((event, ip_id))

    if pending:
        wanted = {ref for event in pending for ref in event.message_refs if ref not in remember}
        known = ctx.store.read_refs(ctx.tenant.pk, wanted) if wanted else {}
        known.update(remember)
        for event in pending:
            for ref in event.message_refs:
                ip_id = known.get(ref)
                if ip_id is not None:
                    attributed.append((event, ip_id))
                    break
            else:
                dead.append((event, DeadLetter.Reason.UNATTRIBUTED, "no delivery report names this message"))

    # The attributed events' de-duplication keys, grouped: (ip id, day, provider, kind) -> keys, the kind
    # being (type, bounce class, asynchronous, throttling classification, window bucket). Only deferrals
    # carry a reply to classify and a window bucket; the rest share one kind per type.
    groups: dict[tuple[int, date, str, Kind], list[str | None]] = {}
    day_of, days = ctx.day_of, ctx.day_of.cached
    provider_of, providers = ctx.provider, ctx.providers
    classify = Classifier()  # a deferral's reply, once per provider and distinct reply of the batch
    for event, ip_id in attributed:
        at = event.occurred_at
        provider = providers.get(event.recipient_domain) or provider_of(event.recipient_domain)
        if event.type == DEFERRED:
            reply = event.smtp_reply
            kind = (DEFERRED, "", False, classify(provider, reply) if reply else "", at // BUCKET_SECONDS)
        else:
            kind = (event.type, event.bounce_class, event.async_bounce, "", 0)
        group = (ip_id, days.get(at // 900) or day_of(at), provider, kind)
        keys = groups.get(group)
        if keys is None:
            keys = groups[group] = []
        keys.append(event.key)
    result.counted = [event for event, _ in attributed]

    # The references go with the counts, written first: if they cannot be written, nothing is counted
    # and the sender posts the batch again. A request with nothing to count is a hit of the window all
    # the same.
    if groups or window is not None:
        refs = References(ctx.tenant.pk, remember) if remember else None
        result.accepted = ctx.store.count_grouped(_by_counts(groups), refs, window)
        result.duplicates = len(attributed) - result.accepted
    return result


Kind = tuple[str, str, bool, str, int]


def _by_counts(groups: dict[tuple[int, date, str, Kind], list[str | None]]) -> dict[GroupKey, list[str | None]]:
    """The groups as the counter store takes them: by what their events add (kinds that add the same, a
    bounce of no class and a soft one, make one group)."""
    counted: dict[GroupKey, list[str | None]] = {}
    for (ip_id, day, provider, kind), keys in groups.items():
        key = (ip_id, day, provider, window_items(*kind))
        if key in counted:
            counted[key] += keys
        else:
            counted[key] = keys
    return counted


def ingest(ctx: TenantContext, batch: Batch, window: Window | None = None) -> IngestResult:
    """Count a parsed batch for the context's tenant; keep what cannot be counted as dead letters.

    With a rate-limit `window` that is full: WindowFull, and nothing counted or kept.
    """
    return finish(ctx, batch, count_events(ctx, batch.events, window))


def ingest_shared(
    source: MTASource,
    batch: Batch,
    context_for: Callable[[Tenant], TenantContext],
    window: Window | None = None,
) -> IngestResult:
    """Count a batch posted by an MTA source for several tenants: each event for the listed tenant that has
    its IP (or its source name); the rest, with the rejected and ignored records, for the home tenant,
    which keeps them as dead letters. One answer for the whole body; the window is hit once.
    """
    home = source.home_tenant
    contexts = {tenant.pk: context_for(tenant) for tenant in source.listed}
    contexts.setdefault(home.pk, context_for(home))
    listed = [contexts[tenant.pk] for tenant in source.listed]
    parts: dict[int, list[NormalisedEvent]] = {home.pk: []}
    for event in batch.events:
        owner = home.pk
        for ctx in listed:
            try:
                found = ctx.attributor.ip_for(event)
            except ValueError:  # not an IP address: the home tenant's pipeline rejects it
                break
            if found is not None:
                owner = ctx.tenant.pk
                break
        parts.setdefault(owner, []).append(event)
    result = IngestResult()
    for tenant_id, events in parts.items():  # the home tenant first: it takes the window's hit
        part = Batch(batch.source, events=events, raw_json=batch.raw_json)
        if tenant_id == home.pk:
            part.rejected, part.ignored, part.records = batch.rejected, batch.ignored, batch.records
        result.add(ingest(contexts[tenant_id], part, window if tenant_id == home.pk else None))
    result.rejected.sort(key=lambda entry: entry["record"])
    return result


def finish(ctx: TenantContext, batch: Batch, counted: Counted) -> IngestResult:
    """The answer for a batch whose events were counted: dead letters for the rest, and the metrics."""
    result = IngestResult(accepted=counted.accepted, duplicates=counted.duplicates, ignored=batch.ignored)

    letters: list[DeadLetter] = []
    unattributed: list[DeadLetter] = []
    for event, reason, error in counted.dead:
        letter = DeadLetter(
            tenant=ctx.tenant,
            source=event.source,
            reason=reason,
            error=clean_text(error),
            raw=jsonable(batch.raw_json(event.raw)),
            ip_address=_address_or_none(event.ip),
            event_key=event.key,
        )
        letters.append(letter)
        if reason == DeadLetter.Reason.INVALID:
            result.rejected.append({"record": event.record, "error": error})
        else:
            unattributed.append(letter)
    for rejection in batch.rejected:
        raw = jsonable(rejection.raw)
        letters.append(
            DeadLetter(
                tenant=ctx.tenant,
                source=batch.source,
                reason=DeadLetter.Reason.INVALID,
                error=clean_text(rejection.error),
                raw=raw,
                event_key=event_key("invalid", batch.source, json.dumps(raw, sort_keys=True)),
            )
        )
        result.rejected.append({"record": rejection.record, "error": rejection.error})
    result.rejected.sort(key=lambda entry: entry["record"])

    if letters:
        new_keys = _save_dead_letters(ctx.tenant, letters)
        for letter in unattributed:
            if letter.event_key in new_keys:
                new_keys.discard(letter.event_key)  # a second copy in the same batch is a duplicate
                result.unattributed += 1
            else:
                result.duplicates += 1
        if result.unattributed:
            spikes.check(ctx.tenant, _examples(counted.dead))

    metrics.count_outcomes(
        batch.source,
        accepted=result.accepted,
        duplicate=result.duplicates,
        unattributed=result.unattributed,
        ignored=result.ignored,
        rejected=len(result.rejected),
    )
    return result


def _examples(dead: Iterable[tuple[NormalisedEvent, str, str]], most: int = 5) -> list[str]:
    """What the unattributed events named (IP addresses, MTA source names), for the spike alert."""
    named: dict[str, None] = {}
    for event, reason, _ in dead:
        if reason != DeadLetter.Reason.INVALID and (event.ip or event.source_name):
            named.setdefault(event.ip or event.source_name)
            if len(named) == most:
                break
    return list(named)


def _save_dead_letters(tenant: Tenant, letters: list[DeadLetter]) -> set[str]:
    """Insert the letters not kept yet; returns the event keys that were new."""
    keys = {letter.event_key for letter in letters}
    with transaction.atomic():
        existing = set(
            DeadLetter.objects.filter(tenant=tenant, event_key__in=list(keys)).values_list("event_key", flat=True)
        )
        new, seen = [], set(existing)
        for letter in letters:
            if letter.event_key not in seen:
                seen.add(letter.event_key)
                new.append(letter)
        # ignore_conflicts: a concurrent request may have kept the same event a moment ago.
        DeadLetter.objects.bulk_create(new, ignore_conflicts=True)
    return keys - existing


def reprocess_dead_letters(dead_letters: Iterable[DeadLetter]) -> tuple[int, int]:
    """Re-read pending dead letters and count those that can now be attributed, once each.

    Returns (counted, still pending). A letter whose event had already been counted (the sender
    re-posted it after its IP appeared) is marked processed without counting it again: the counter
    store knows its key. Raises CounterStoreUnavailable with nothing marked when the store is down.
    """
    by_tenant: dict[int, list[DeadLetter]] = {}
    for letter in dead_letters:
        if letter.processed_at is None:
            by_tenant.setdefault(letter.tenant_id, []).append(letter)
    counted = pending = 0
    tenants = Tenant.objects.in_bulk(list(by_tenant))
    for tenant_id, letters in by_tenant.items():
        ctx = TenantContext(tenants[tenant_id])
        events: list[NormalisedEvent] = []
        owners: dict[int, DeadLetter] = {}
        failed: list[tuple[DeadLetter, str]] = []
        for letter in letters:
            event, error = _reread(letter)
            if event is None:
                failed.append((letter, error))
                continue
            owners[id(event)] = letter
            events.append(event)
        result = count_events(ctx, events)
        now = timezone.now()
        done = [owners[id(event)] for event in result.counted]
        for letter in done:
            letter.processed_at = now
        still = [(owners[id(event)], reason, error) for event, reason, error in result.dead]
        for letter, reason, error in still:
            letter.reason, letter.error = reason, clean_text(error)
        for letter, error in failed:
            letter.reason, letter.error = DeadLetter.Reason.INVALID, clean_text(error)
        with transaction.atomic():
            DeadLetter.objects.bulk_update(done, ["processed_at"])
            DeadLetter.objects.bulk_update(
                [letter for letter, _, _ in still] + [f for f, _ in failed], ["reason", "error"]
            )
        counted += len(done)
        pending += len(still) + len(failed)
    return counted, pending


def _reread(letter: DeadLetter) -> tuple[NormalisedEvent | None, str]:
    normalise = NORMALISERS.get(letter.source)
    if normalise is None:
        return None, f"unknown source {letter.source!r}"
    if not isinstance(letter.raw, dict):
        return None, letter.error or "record is not a JSON object"
    try:
        return normalise(letter.raw), ""
    except Exception as exc:  # whatever the record holds, the letter stays pending
        return None, str(exc) or exc.__class__.__name__


# --- Keeping raw records ---------------------------------------------------------------------------


def jsonable(raw: Any) -> Any:
    """The raw record as JSON PostgreSQL accepts: no NUL characters, no lone surrogates, no NaN/Infinity."""
    try:
        cleaned = _clean(raw)
    except RecursionError:
        return {"unreadable": repr(raw)[:1000]}
    # A record that is not an object (a JSON null, number, array) is kept wrapped: the column holds
    # an object, and JSON null would be stored as SQL NULL.
    return cleaned if isinstance(cleaned, dict) else {"record": cleaned}


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {clean_text(str(key)): _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    if value is None or isinstance(value, bool | int):
        return value
    return clean_text(str(value))


def clean_text(text: str) -> str:
    if text.isascii() and "\x00" not in text:
        return text
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _address_or_none(text: str) -> str | None:
    from domains.models import normalise_ip

    if not text:
        return None
    try:
        address = normalise_ip(text)
    except ValueError:
        return None
    return None if "%" in address else address


__all__ = [
    "ingest_shared",
    "IngestResult",
    "Rejection",
    "TenantContext",
    "count_events",
    "finish",
    "ingest",
    "reprocess_dead_letters",
]
