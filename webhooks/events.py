"""The normalised event every parser produces, and the rules that turn it into counts.

Owns: the event types, the counting rules of PRODUCT.md section 6 (which counters an event adds to),
bounce classification (hard / soft / block), the de-duplication key, and the small conversions every
parser shares (times, recipient domains, message references). Parsers know their sender's format;
this module knows nothing of any sender.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from xxhash import xxh3_128_hexdigest


class EventType(StrEnum):
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    DEFERRED = "deferred"
    COMPLAINED = "complained"
    OPENED = "opened"
    CLICKED = "clicked"
    UNSUBSCRIBED = "unsubscribed"


class BounceClass(StrEnum):
    HARD = "hard"
    SOFT = "soft"
    BLOCK = "block"


class InvalidRecord(ValueError):
    """A record that cannot be read; the message names the field and the reason."""


class Ignored(Exception):
    """A well-formed record that the counting rules do not count (PowerMTA `r`, KumoMTA `Reception` ...)."""


@dataclass(slots=True)
class NormalisedEvent:
    """One countable event, whatever its sender.

    `ip` is the sending IP as the record names it (canonical text), else `source_name` (PowerMTA vmta,
    KumoMTA egress_source), else `message_refs` to resolve through an earlier delivery report.
    `remembers_refs` marks delivery reports whose references attribute later complaints, opens, clicks.
    `raw` is the record as received (a dict, or a CSV row that the parser can turn into one).
    `smtp_reply` is set on deferrals only.
    """

    source: str
    type: EventType
    occurred_at: int  # Unix seconds
    key: str  # de-duplication key: identifies the event, not the message
    ip: str = ""
    ip_field: str = ""  # where the record named its IP, for error messages
    source_name: str = ""
    message_refs: tuple[str, ...] = ()
    remembers_refs: bool = False
    recipient_domain: str = ""
    bounce_class: str = ""
    async_bounce: bool = False
    raw: Any = field(default=None, repr=False)
    record: int = 0  # its number in the request (data records from 1), for the answer's "rejected"
    # A deferral's SMTP reply (enhanced code and text), classified when counted (`webhooks.deferrals`).
    smtp_reply: str = ""

    def counts(self) -> dict[str, int]:
        return dict(count_items(self.type, self.bounce_class, self.async_bounce))


# --- Counting rules ---------------------------------------------------------------------------------


def _build_counts() -> dict[tuple[str, str, bool], tuple[tuple[str, int], ...]]:
    table: dict[tuple[str, str, bool], dict[str, int]] = {}
    simple = {
        EventType.DELIVERED: {"sent": 1, "delivered": 1},
        EventType.DEFERRED: {"deferred": 1},
        EventType.COMPLAINED: {"complaints": 1},
        EventType.OPENED: {"opens": 1},
        EventType.CLICKED: {"clicks": 1},
        EventType.UNSUBSCRIBED: {"unsubscribes": 1},
    }
    for event_type, counts in simple.items():
        for async_bounce in (False, True):
            table[(event_type, "", async_bounce)] = counts
    for bounce_class in BounceClass:
        # A bounce reported while sending was a message sent; an asynchronous (remote) bounce arrives
        # after a delivery that was already counted as sent, so it adds to bounced only.
        table[(EventType.BOUNCED, bounce_class, False)] = {"sent": 1, "bounced": 1, f"bounced_{bounce_class}": 1}
        table[(EventType.BOUNCED, bounce_class, True)] = {"bounced": 1, f"bounced_{bounce_class}": 1}
    return {kind: tuple(sorted(counts.items())) for kind, counts in table.items()}


_COUNT_ITEMS = _build_counts()


def count_items(event_type: str, bounce_class: str = "", async_bounce: bool = False) -> tuple[tuple[str, int], ...]:
    """The counters one event adds to (PRODUCT.md section 6), as sorted (counter, amount) pairs: hashable,
    as the counter store groups events."""
    if event_type == EventType.BOUNCED:
        bounce_class = bounce_class or BounceClass.SOFT
    else:
        bounce_class = ""
    return _COUNT_ITEMS[(event_type, bounce_class, async_bounce)]


@lru_cache(maxsize=4096)
def window_items(
    event_type: str, bounce_class: str, async_bounce: bool, throttling: str, bucket: int
) -> tuple[tuple[str, int], ...]:
    """`count_items` and, for a deferral, its part of its throttling window bucket: a deferral, and a
    throttling one by classification ("rate_limited", "reputation"; "" for none). Cached: a batch asks
    for a few dozen kinds, over and over."""
    # Imported here: the parsers import this module, and the counter store needs the apps loaded.
    from warmup.counters import THROTTLING_COUNTERS, WINDOW_DEFERRALS, window_counter

    items = dict(count_items(event_type, bounce_class, async_bounce))
    if "deferred" not in items:
        return count_items(event_type, bounce_class, async_bounce)
    items[window_counter(WINDOW_DEFERRALS, bucket)] = 1
    if throttling in THROTTLING_COUNTERS:
        items[window_counter(THROTTLING_COUNTERS[throttling], bucket)] = 1
    return tuple(sorted(items.items()))


# --- Bounce classification --------------------------------------------------------------------------

# PowerMTA publishes no hard/soft split of its bounceCat values (PowerMTA User's Guide, accounting
# files); this one is the portal's, as PRODUCT.md section 6 states it.
POWERMTA_CATEGORY_CLASS = {
    "bad-mailbox": BounceClass.HARD,
    "bad-domain": BounceClass.HARD,
    "inactive-mailbox": BounceClass.HARD,
    "spam-related": BounceClass.BLOCK,
    "policy-related": BounceClass.BLOCK,
    "content-related": BounceClass.BLOCK,
    "virus-related": BounceClass.BLOCK,
}

KUMOMTA_CLASSIFICATION_CLASS = {
    "InvalidRecipient": BounceClass.HARD,
    "BadDomain": BounceClass.HARD,
    "InactiveMailbox": BounceClass.HARD,
    "SpamBlock": BounceClass.BLOCK,
    "SpamContent": BounceClass.BLOCK,
    "SpamRelated": BounceClass.BLOCK,
    "PolicyRelated": BounceClass.BLOCK,
    "ContentRelated": BounceClass.BLOCK,
    "VirusRelated": BounceClass.BLOCK,
    "ProhibitedAttachment": BounceClass.BLOCK,
}

# RFC 3463 subject.detail of the permanent mailbox/address failures.
_HARD_STATUS_DETAILS = frozenset({"1.1", "1.2", "1.3", "1.6", "2.1"})


def class_from_status(status: str) -> BounceClass | None:
    """Bounce class of an enhanced status code ("5.1.1", "4.7.0"); None when it is not one."""
    parts = status.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or parts[0] not in ("2", "4", "5"):
        return None
    if parts[1] == "7":
        return BounceClass.BLOCK
    if f"{parts[1]}.{parts[2]}" in _HARD_STATUS_DETAILS:
        return BounceClass.HARD
    return BounceClass.SOFT


def classify_bounce(powermta_category: str = "", kumomta_classification: str = "", status: str = "") -> BounceClass:
    """Hard, soft or block. Precedence: PowerMTA bounceCat, KumoMTA classification (when not
    Uncategorized), the enhanced status code; anything else is soft."""
    if powermta_category:
        return POWERMTA_CATEGORY_CLASS.get(powermta_category.strip().lower(), BounceClass.SOFT)
    if kumomta_classification and kumomta_classification != "Uncategorized":
        return KUMOMTA_CLASSIFICATION_CLASS.get(kumomta_classification, BounceClass.SOFT)
    if status:
        return class_from_status(status) or BounceClass.SOFT
    return BounceClass.SOFT


def status_code(dsn_status: str) -> str:
    """The leading enhanced code of a DSN status: "5.1.2 (bad destination system)" -> "5.1.2"."""
    return dsn_status.split(" ", 1)[0].strip() if dsn_status else ""


# --- Shared conversions -----------------------------------------------------------------------------


def event_key(*parts: object) -> str:
    """The de-duplication key of an event: a 128-bit XXH3 of its normalised fields, in hex.

    XXH3 is not a cryptographic hash: two events with the same key could be made on purpose, but only by a
    sender holding a tenant's token, who can post any count anyway; by accident they do not happen (128
    bits). It costs a sixth of BLAKE2b on the ingestion's hot path."""
    return key_of_text("\x1f".join("" if p is None else str(p) for p in parts))


def key_of_text(text: str) -> str:
    """`event_key` of fields already joined with the unit separator (the hot path builds the text itself)."""
    return xxh3_128_hexdigest(text.encode("utf-8", "surrogatepass"))


def parse_time(value: object, field_name: str) -> int:
    """Unix seconds from Unix seconds (number or digits), "2016-05-29 01:10:51+0200" or ISO 8601.

    A time without a zone is taken as UTC.
    """
    if isinstance(value, bool) or value is None or value == "":
        raise InvalidRecord(f"{field_name}: missing time")
    if isinstance(value, int | float):
        seconds = value
    elif isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():
            seconds = int(text)
        else:
            try:
                seconds = float(text)
            except ValueError:
                seconds = _parse_datetime_text(text, field_name)
    else:
        raise InvalidRecord(f"{field_name}: expected a time, got {type(value).__name__}")
    if seconds != seconds or not 0 <= seconds < 32503680000:  # NaN, or outside years 1970..2999
        raise InvalidRecord(f"{field_name}: time {value!r} is out of range")
    return int(seconds)


# "YYYY-MM-DD HH:MM" + zone -> Unix seconds of that minute (see `powermta_time`).
POWERMTA_MINUTES: dict[str, int] = {}
SECONDS = {f"{second:02d}": second for second in range(60)}  # "00" ... "59" -> 0 ... 59


def powermta_time(text: str, field_name: str) -> int:
    """`parse_time` with a cache for PowerMTA's own form "2016-05-29 01:10:51+0200".

    Accounting records come in time order, so most share a minute with an earlier record: the minute (the
    text with "00" for its seconds) is converted by `parse_time` once and cached, and a record of a minute
    already seen needs only its seconds read. A text shares its minute's key (all but its seconds) only
    with texts of the same form.
    """
    minute_key = text[:16] + text[19:]
    minute = POWERMTA_MINUTES.get(minute_key)
    seconds = SECONDS.get(text[17:19]) if text[16:17] == ":" else None
    if minute is not None and seconds is not None:
        return minute + seconds
    # Between ":" and the zone nothing but seconds: ISO 8601 would read "01+10:51.0530" otherwise.
    if seconds is None or len(text) != 24 or text[13] != ":" or text[19] not in "+-":
        return parse_time(text, field_name)
    try:
        minute = parse_time(text[:17] + "00" + text[19:], field_name)
    except InvalidRecord:
        return parse_time(text, field_name)  # the error names the text as it came
    if len(POWERMTA_MINUTES) > 50_000:
        POWERMTA_MINUTES.clear()
    POWERMTA_MINUTES[minute_key] = minute
    return minute + seconds


def _parse_datetime_text(text: str, field_name: str) -> float:
    # fromisoformat (3.11) takes "2016-05-29 01:10:51+02:00" and "...Z" but not "+0200": add the colon.
    candidate = text
    if len(candidate) > 5 and candidate[-5] in "+-" and candidate[-4:].isdigit() and candidate[-6] != ":":
        candidate = f"{candidate[:-2]}:{candidate[-2:]}"
    try:
        moment = datetime.fromisoformat(candidate)
    except ValueError:
        raise InvalidRecord(
            f"{field_name}: {text[:40]!r} is not a time (Unix seconds, 'YYYY-MM-DD HH:MM:SS+zzzz' or ISO 8601)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def recipient_domain(address: object) -> str:
    """The lower-case domain of a recipient address ("" when there is none)."""
    if not isinstance(address, str) or "@" not in address:
        return ""
    return address.rpartition("@")[2].strip().strip(">").lower()


def message_refs(message_id: object = "", campaign_uid: object = "", subscriber_uid: object = "") -> tuple[str, ...]:
    """The references kept for a message, each when given: its Message-Id ("mid:"; angle brackets and
    spaces do not matter) and MailWizz's (campaign, subscriber) pair ("mw:")."""
    refs: tuple[str, ...] = ()
    if message_id and isinstance(message_id, str):
        value = message_id.strip(" \t\r\n<>")
        if value:
            refs = ("mid:" + value,)
    if campaign_uid and subscriber_uid and isinstance(campaign_uid, str) and isinstance(subscriber_uid, str):
        campaign_uid, subscriber_uid = campaign_uid.strip(), subscriber_uid.strip()
        if campaign_uid and subscriber_uid:
            refs += ("mw:" + campaign_uid + "/" + subscriber_uid,)
    return refs


class DayOf:
    """Date of a Unix time in a zone, cached per quarter hour.

    Every zone offset in use today is a multiple of 15 minutes (India +05:30, Nepal +05:45) and DST
    changes fall on those boundaries, so a quarter hour never straddles midnight; events of a batch
    cluster in a few quarter hours, so the zone arithmetic runs a handful of times per batch.
    """

    __slots__ = ("cached", "zone")

    def __init__(self, zone: ZoneInfo):
        self.zone = zone
        # Quarter hour (Unix seconds // 900) -> date: hot loops may read it directly before calling.
        self.cached: dict[int, date] = {}

    def __call__(self, seconds: int) -> date:
        slot = seconds // 900
        day = self.cached.get(slot)
        if day is None:
            day = self.cached[slot] = datetime.fromtimestamp(slot * 900, self.zone).date()
        return day


# --- Mailbox providers ---------------------------------------------------------------------------------

_provider_map: tuple[object, dict[str, str]] = (None, {})


def provider_for(recipient_domain: str) -> str:
    """The mailbox provider of a recipient domain (settings.WARMUP_PROVIDER_DOMAINS), else "other"."""
    global _provider_map
    source, mapping = _provider_map
    # Rebuilt only when the setting is replaced (override_settings in tests); this runs per event.
    if source is not settings.WARMUP_PROVIDER_DOMAINS:
        source = settings.WARMUP_PROVIDER_DOMAINS
        mapping = {domain: provider for provider, domains in source.items() for domain in domains}
        _provider_map = (source, mapping)
    return mapping.get(recipient_domain.strip().lower().rstrip("."), "other")
