"""The counter store: per IP, per day, per mailbox provider counts, de-duplicated and atomic per batch.

Two backends behind one interface (PRODUCT.md section 6): Redis (production) and a transactional table
in the database (the embedded default). Consolidation (`consolidation.py`) moves finished days into
`DailyStat`.

INTERFACE (implemented by the counting-pipeline work):

    @dataclass(frozen=True, slots=True)
    class Increment:
        ip_id: int
        day: date                  # in the tenant's zone
        counts: Mapping[str, int]  # field name of DailyStat.COUNTERS -> n
        provider: str = "other"    # gmail, microsoft, yahoo, apple, other
        dedup_key: str | None = None   # None: counted unconditionally

    class CounterStoreUnavailable(Exception): ...

    class CounterStore:
        def apply(self, increments: Sequence[Increment]) -> list[bool]
            # one round trip / one transaction; True = counted, False = duplicate; raises
            # CounterStoreUnavailable when nothing could be counted.
        def sent_on(self, keys: Sequence[tuple[int, date]]) -> dict[tuple[int, date], int]
            # live "sent" of several IP-days in one round trip
        def read(self, ip_id: int, day: date) -> dict[str, int]     # live totals of one IP-day

    def get_store() -> CounterStore   # per settings.WARMUP_COUNTER_BACKEND
"""
