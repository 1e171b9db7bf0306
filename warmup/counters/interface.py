"""The counter store's interface and what both backends share: increments, groups, fields, errors."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache

from xxhash import xxh3_128_digest

from ..models import DailyStat, Provider

COUNTERS: tuple[str, ...] = DailyStat.COUNTERS
PROVIDERS: tuple[str, ...] = tuple(Provider.values)
_COUNTER_SET = frozenset(COUNTERS)
_PROVIDER_SET = frozenset(PROVIDERS)

# --- Throttling windows ------------------------------------------------------------------------------
# Besides its day's counters, a deferral adds to its IP's short-lived window counters: per provider and
# BUCKET_SECONDS bucket of its time, the deferrals and, by classification, the throttling ones, so that the
# share of throttling replies among the last hour's deferrals can be read (`warmup.throttling`). Only
# deferrals: a delivery adds nothing there, so the hot path's groups are not split by bucket. They travel in
# the same counting call as the day's counters, as counters named "@<kind><bucket>" ("@d5891234":
# deferrals of the bucket starting at 5891234 * 300 s), and never reach
# `DailyStat`: Redis keeps them in a hash of their own that expires by itself, the database backend in
# `CounterCell` rows that consolidation leaves alone and retention prunes.
BUCKET_SECONDS = 300
WINDOW_PREFIX = "@"
WINDOW_DEFERRALS = "@d"
WINDOW_RATE_LIMITED = "@r"
WINDOW_REPUTATION = "@p"
WINDOW_KINDS = {WINDOW_DEFERRALS: "deferrals", WINDOW_RATE_LIMITED: "rate_limited", WINDOW_REPUTATION: "reputation"}
# A throttling classification (webhooks' `DeferralRule.Classification`) -> its window counter.
THROTTLING_COUNTERS = {"rate_limited": WINDOW_RATE_LIMITED, "reputation": WINDOW_REPUTATION}
_WINDOW_COUNTER = re.compile(r"@[dpr][0-9]{1,12}")


def bucket_of(seconds: int) -> int:
    """The window bucket of a Unix time."""
    return seconds // BUCKET_SECONDS


def window_counter(kind: str, bucket: int) -> str:
    """The counter name of a window kind (WINDOW_DEFERRALS ...) in a bucket: "@d5891234"."""
    return f"{kind}{bucket}"


def parse_window_field(field: str) -> tuple[str, int, str] | None:
    """``"@r5891234:gmail"`` -> ("rate_limited", 5891234, "gmail"); None for any other field."""
    if not field.startswith(WINDOW_PREFIX):
        return None
    name, _, provider = field.partition(":")
    kind = WINDOW_KINDS.get(name[:2])
    if kind is None or not name[2:].isdigit():
        return None
    return kind, int(name[2:]), provider or "other"


@dataclass(slots=True)
class WindowFigures:
    """One IP and provider over a window of buckets."""

    deferrals: int = 0
    rate_limited: int = 0
    reputation: int = 0

    @property
    def throttled(self) -> int:
        return self.rate_limited + self.reputation

    def add(self, kind: str, value: int) -> None:
        setattr(self, kind, getattr(self, kind) + value)


def window_figures(
    fields: Iterable[tuple[int, str, int]], first: int, last: int
) -> dict[tuple[int, str], WindowFigures]:
    """{(ip id, provider): WindowFigures} summed from (ip id, field, value) for buckets first..last."""
    found: dict[tuple[int, str], WindowFigures] = {}
    for ip_id, field, value in fields:
        parsed = parse_window_field(field)
        if parsed is None:
            continue
        kind, bucket, provider = parsed
        if first <= bucket <= last:
            found.setdefault((ip_id, provider), WindowFigures()).add(kind, int(value))
    return found


@dataclass(frozen=True, slots=True)
class Increment:
    """Counts to add to one IP's day (a date in its tenant's zone) for one mailbox provider."""

    ip_id: int
    day: date
    counts: Mapping[str, int]
    provider: str = "other"
    dedup_key: str | None = None  # None: always counted


# A group of events that add the same counts to the same IP-day hash field set:
# (ip id, day, provider, counts as sorted (counter, amount) pairs).
GroupKey = tuple[int, date, str, tuple[tuple[str, int], ...]]


@dataclass(frozen=True, slots=True)
class References:
    """Message references of a tenant (reference -> IP id) to remember with a batch's counts: a later
    complaint, asynchronous bounce, open or click naming the message is attributed through them."""

    tenant_id: int
    refs: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Window:
    """A fixed window of requests (the webhooks' rate limit): each counting call is one hit of `name`,
    at most `limit` hits while the window lasts (`seconds`)."""

    name: str
    limit: int
    seconds: int


class WindowFull(Exception):
    """The window has had its `limit` hits: nothing was counted."""


class CounterStoreUnavailable(Exception):
    """The counter store cannot be reached; nothing of the batch was counted."""


@dataclass(frozen=True, slots=True)
class Batch:
    """An IP-day's counts set aside by consolidation under its own key, waiting to reach `DailyStat`."""

    batch_id: str
    ip_id: int
    day: date


def split_field(field: str) -> tuple[str, str]:
    """``"sent:gmail"`` -> ``("sent", "gmail")``."""
    counter, _, provider = field.partition(":")
    return counter, provider or "other"


def totals(fields: Mapping[str, int]) -> dict[str, int]:
    """Every counter's total over the providers (zero when absent)."""
    result = dict.fromkeys(COUNTERS, 0)
    for field, value in fields.items():
        counter, _ = split_field(field)
        if counter in result:
            result[counter] += int(value)
    return result


def group_increments(increments: Sequence[Increment]) -> tuple[dict[GroupKey, list[str | None]], list[tuple]]:
    """Increments as `count_grouped()` groups, and where each increment went: (group key, position)."""
    groups: dict[GroupKey, list[str | None]] = {}
    places = []
    for inc in increments:
        check_increment(inc)  # here, not per group: 1 and True are the same group key
        key = (inc.ip_id, inc.day, inc.provider, tuple(sorted(inc.counts.items())))
        keys = groups.get(key)
        if keys is None:
            keys = groups[key] = []
        places.append((key, len(keys)))
        keys.append(inc.dedup_key)
    return groups, places


@lru_cache(maxsize=4096)
def _fields_of(provider: str, counts: tuple[tuple[str, int], ...]) -> tuple[str | int, ...]:
    """The hash fields and amounts of a group, checked once (batches repeat a few combinations)."""
    check_increment(Increment(0, date.min, dict(counts), provider))
    fields: list[str | int] = []
    for name, value in counts:
        fields += (f"{name}:{provider}", value)
    return tuple(fields)


def check_increment(inc: Increment) -> None:
    """ValueError naming the problem when an increment names an unknown counter or provider."""
    unknown = {name for name in set(inc.counts) - _COUNTER_SET if not _WINDOW_COUNTER.fullmatch(name)}
    if unknown:
        raise ValueError(f"unknown counter {sorted(unknown)[0]!r} (expected one of {', '.join(COUNTERS)})")
    if inc.provider not in _PROVIDER_SET:
        raise ValueError(f"unknown provider {inc.provider!r} (expected one of {', '.join(PROVIDERS)})")
    for name, value in inc.counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative whole number, not {value!r}")


class CounterStore:
    """What both backends offer; see the module docstring."""

    def apply(self, increments: Sequence[Increment]) -> list[bool]:
        """De-duplicate and count a batch atomically; True = counted, False = duplicate."""
        if not increments:
            return []
        groups, places = group_increments(increments)
        duplicates = self.count_batch(groups)
        return [place not in duplicates for place in places]

    def count_grouped(
        self,
        groups: Mapping[GroupKey, Sequence[str | None]],
        refs: References | None = None,
        window: Window | None = None,
    ) -> int:
        """`count_batch()`, answering how many events were counted (the rest were duplicates)."""
        return sum(map(len, groups.values())) - len(self.count_batch(groups, refs, window))

    def count_batch(
        self,
        groups: Mapping[GroupKey, Sequence[str | None]],
        refs: References | None = None,
        window: Window | None = None,
    ) -> set[tuple[GroupKey, int]]:
        """The one counting call: de-duplicate and count a batch grouped by what its events add, each
        group's de-duplication keys (None: always counted). Returns the duplicates as (group key, position
        in the group). The batch's message references `refs` are written first, in the same round trip
        (Redis) or transaction (database): a batch whose references cannot be written is not counted.
        Atomic per IP-day at least (the whole batch on a single Redis node or in the database). The call
        is first a hit of `window`, in the same round trip on a single Redis node: WindowFull, with
        nothing counted, when it is full.
        """
        raise NotImplementedError

    def read_refs(self, tenant_id: int, refs: Iterable[str]) -> dict[str, int]:
        """The IP ids of the references remembered for the tenant (the newest write wins)."""
        raise NotImplementedError

    def write_refs(self, tenant_id: int, refs: Mapping[str, int]) -> None:
        """Remember references (reference -> IP id) for WEBHOOK_MESSAGE_REF_TTL_DAYS."""
        raise NotImplementedError

    def consolidate(self, run) -> None:
        """Move every finished IP-day into `DailyStat` through `run` (`warmup.consolidation.Run`), exactly
        once even if killed at any instant and run again, and while increments keep arriving."""
        raise NotImplementedError

    def sent_by_provider(self, keys: Sequence[tuple[int, date]]) -> dict[tuple[int, date], dict[str, int]]:
        """Live "sent" of several IP-days per mailbox provider (every provider, zero when absent), in one
        round trip."""
        raise NotImplementedError

    def read(self, ip_id: int, day: date) -> dict[str, int]:
        """Live totals of one IP-day (every counter, zero when absent)."""
        raise NotImplementedError

    def ping(self) -> None:
        """Raise CounterStoreUnavailable when the store cannot be reached, refuses writes (a full Redis, a
        replica), or could lose what it holds (a Redis that evicts keys when it reaches its memory limit)."""
        raise NotImplementedError

    def window(self, first: int, last: int) -> dict[tuple[int, str], WindowFigures]:
        """The window counters of buckets first..last (`bucket_of`), per IP and provider, for every IP with
        a throttling deferral among them (the others are left out: there is nothing to judge)."""
        raise NotImplementedError


def dedup_digest(key: str | None) -> bytes:
    """A de-duplication key as both stores keep it, 16 bytes: an event key (32 lower-case hex digits,
    `webhooks.events.event_key`) is its own digest, any other text is hashed, and None (always counted)
    is 16 random bytes."""
    if key is None:
        return os.urandom(16)
    if len(key) == 32:
        try:
            digest = bytes.fromhex(key)
        except ValueError:
            digest = b""
        if digest.hex() == key:
            return digest
    return xxh3_128_digest(key.encode("utf-8", "surrogatepass"))


def stored_ref(ref: str) -> str:
    # Message-Ids are whatever the sender wrote: bound the stored key, keep it free of the unit separator
    # (the counting script's references come joined by it) and valid UTF-8 (a JSON record may hold a lone
    # surrogate).
    if len(ref) <= 200 and "\x1f" not in ref and (ref.isascii() or _is_utf8(ref)):
        return ref
    return "h:" + hashlib.blake2b(ref.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
