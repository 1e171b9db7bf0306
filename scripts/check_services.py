"""Say in one line which service the test suite cannot reach, before pytest starts."""

import os
import socket
import sys
from urllib.parse import urlparse


def reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def main() -> int:
    missing = []
    database_url = os.environ.get("DATABASE_URL", "")
    if database_url.startswith("postgres") and not reachable(database_url, 5432):
        missing.append(f"PostgreSQL is not reachable at {urlparse(database_url).netloc} (DATABASE_URL)")
    redis_url = os.environ.get("REDIS_URL", "")
    if redis_url and not reachable(redis_url, 6379):
        missing.append(f"Redis is not reachable at {urlparse(redis_url).netloc} (REDIS_URL)")
    for line in missing:
        print(f"make test: {line}; start it or point the variable elsewhere.", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
