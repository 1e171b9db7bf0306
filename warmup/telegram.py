"""The Telegram Bot API client that delivers operator alerts (`sendMessage`, HTML parse mode).

Delivery is bounded in time: a request timeout (TELEGRAM_TIMEOUT_SECONDS), at most TELEGRAM_MAX_ATTEMPTS
attempts, retries only where a retry can help (connection errors, timeouts, 5xx, 429), and a 429's
`parameters.retry_after` honoured up to TELEGRAM_RETRY_AFTER_MAX_SECONDS.

The retry loop is written out rather than left to urllib3's `Retry`: Telegram states how long to wait in
the JSON body of a 429 (`parameters.retry_after`), which `Retry` does not read, and `sendMessage` is a
POST, which `Retry` does not repeat by default.
"""

import html
import logging
import time
from dataclasses import dataclass

import requests
from django.conf import settings

logger = logging.getLogger(__name__)

# Telegram's limit on a message's text, counted after entity parsing; we count the escaped text in
# UTF-16 code units (how Telegram measures), which is never less, so the limit always holds.
MAX_MESSAGE_LENGTH = 4096
TRUNCATION_MARK = "\n… (truncated)"


class TelegramError(Exception):
    """The message could not be delivered; the text says why (status, Telegram's description).

    `retryable` is False when a later attempt cannot help (a bad token, an unknown chat, a blocked bot).
    """

    def __init__(self, message: str, *, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class TelegramConfig:
    token: str
    api_url: str
    timeout: float
    max_attempts: int
    retry_after_max: float
    backoff: float

    @classmethod
    def from_settings(cls) -> "TelegramConfig":
        return cls(
            token=settings.TELEGRAM_BOT_TOKEN,
            api_url=settings.TELEGRAM_API_URL.rstrip("/"),
            timeout=settings.TELEGRAM_TIMEOUT_SECONDS,
            max_attempts=max(1, settings.TELEGRAM_MAX_ATTEMPTS),
            retry_after_max=settings.TELEGRAM_RETRY_AFTER_MAX_SECONDS,
            backoff=settings.TELEGRAM_RETRY_BACKOFF_SECONDS,
        )


def _utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def render_html(text: str, limit: int = MAX_MESSAGE_LENGTH) -> str:
    """The text HTML-escaped for parse_mode=HTML, cut to fit `limit` without splitting an entity."""
    escaped = html.escape(text)
    if _utf16_length(escaped) <= limit:
        return escaped
    budget = limit - _utf16_length(TRUNCATION_MARK)
    pieces: list[str] = []
    used = 0
    # Escape character by character so that a cut never falls inside "&amp;" or a surrogate pair.
    for char in text:
        piece = html.escape(char)
        size = _utf16_length(piece)
        if used + size > budget:
            break
        pieces.append(piece)
        used += size
    return "".join(pieces) + TRUNCATION_MARK


def send_message(text: str, *, chat_id: str, config: TelegramConfig | None = None) -> None:
    """Send `text` (plain text, escaped here) to `chat_id`; raise TelegramError when it cannot be done."""
    config = config or TelegramConfig.from_settings()
    url = f"{config.api_url}/bot{config.token}/sendMessage"
    payload = {
        "chat_id": chat_id,
        "text": render_html(text),
        "parse_mode": "HTML",
        "disable_web_page_preview": True,
    }
    last_error = "no attempt made"
    with requests.Session() as session:
        for attempt in range(1, config.max_attempts + 1):
            wait = config.backoff * (2 ** (attempt - 1))
            try:
                response = session.post(url, json=payload, timeout=config.timeout)
            except requests.RequestException as exc:
                # The token is part of the URL: never let it reach a log line or the alert record.
                last_error = f"{type(exc).__name__}: {str(exc).replace(config.token, '<token>')}"
            else:
                if response.status_code == 200:
                    return
                description = _description(response)
                last_error = f"HTTP {response.status_code}: {description}"
                if response.status_code == 429:
                    wait = min(_retry_after(response, default=wait), config.retry_after_max)
                elif response.status_code < 500:
                    # 400 (chat not found, bad text), 401 (bad token), 403 (bot blocked): retrying won't help.
                    raise TelegramError(last_error, retryable=False)
            if attempt < config.max_attempts:
                logger.info(
                    "Telegram attempt %d/%d failed (%s); retrying in %.1fs",
                    attempt,
                    config.max_attempts,
                    last_error,
                    wait,
                )
                time.sleep(wait)
    raise TelegramError(f"{last_error} (after {config.max_attempts} attempts)")


def _description(response: requests.Response) -> str:
    try:
        return str(response.json().get("description", ""))[:500] or response.reason
    except ValueError:
        return response.reason or "no description"


def _retry_after(response: requests.Response, *, default: float) -> float:
    try:
        return float(response.json()["parameters"]["retry_after"])
    except (ValueError, KeyError, TypeError):
        header = response.headers.get("Retry-After", "")
        return float(header) if header.isdigit() else default
