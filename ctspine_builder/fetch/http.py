"""Fetch stage: an HTTP client with timeouts, retries and backoff for every source."""
from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3

from ctspine_builder import TOOL_NAME, __version__
from ctspine_builder.errors import FetchError, HostUnreachableError

logger = logging.getLogger(__name__)

# Status codes worth another try: the server is overloaded or failed for a
# moment. 429 is what NBIA returns to clients that go too fast.
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})

DEFAULT_USER_AGENT = f"{TOOL_NAME}/{__version__}"

# Hosts that refused a connection, or never accepted one, through every retry,
# with the time.monotonic() of that failure. Requests to such a host fail at
# once until UNREACHABLE_RECHECK_S has passed. So a build or dry run of 800
# cases against a host that is down gives up after one retry cycle (about a
# minute), not one per case (hours). The record is per process.
_unreachable_hosts: dict[str, float] = {}
UNREACHABLE_RECHECK_S = 300.0


def forget_unreachable_hosts() -> None:
    """Clear the record of unreachable hosts, so that the next request tries them again."""
    _unreachable_hosts.clear()


def redact_url(url: str) -> str:
    """Return the URL without its query string, user name or password, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = "..." if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Return the delay in seconds that a Retry-After header asks for, or None.

    RFC 9110 allows either a number of seconds or an HTTP date.
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class HttpClient:
    """A requests.Session with a timeout on every request and retries with backoff.

    Connection errors, read timeouts, HTTP 5xx and 429 are retried up to
    ``retries`` times. The delay doubles from ``backoff_s`` up to
    ``max_backoff_s``, with random jitter of up to half the delay, unless
    the server sends Retry-After, which is honoured (capped at
    ``max_backoff_s``). ``timeout`` is (connect, read) in seconds. Other
    4xx responses are returned to the caller unchanged.
    """

    def __init__(
        self,
        *,
        timeout: tuple[float, float] = (10.0, 60.0),
        retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        user_agent: str | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = user_agent or DEFAULT_USER_AGENT
        self._sleep = sleep

    def get(
        self,
        url: str,
        *,
        params: dict | None = None,
        headers: dict | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """Send a GET request, retrying transient failures; return the final response."""
        return self.request("GET", url, params=params, headers=headers, stream=stream)

    def post(self, url: str, *, data: dict | None = None, headers: dict | None = None) -> requests.Response:
        """Send a POST request with a form body, retrying transient failures."""
        return self.request("POST", url, data=data, headers=headers)

    def request(self, method: str, url: str, **kwargs) -> requests.Response:
        """Send a request, retrying transient failures; raise FetchError when retries run out.

        Raises HostUnreachableError, a FetchError, when no connection to the
        host could be made through every retry, and at once for a host that
        failed so within the last UNREACHABLE_RECHECK_S seconds.
        """
        host = urlsplit(url).netloc
        _check_reachable(method, url, host)
        attempt = 0
        while True:
            connect_failed = False
            try:
                response = self.session.request(method, url, timeout=self.timeout, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as error:
                cause = describe_exception(error)
                connect_failed = is_connect_failure(error)
                retry_after = None
            else:
                if response.status_code not in RETRY_STATUS:
                    return response
                cause = f"HTTP {response.status_code}"
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                response.close()
            if attempt >= self.retries:
                message = f"{method} {redact_url(url)} failed after {attempt + 1} attempts: {cause}"
                hint = "Check the network and the server's status, then run the command again."
                if connect_failed:
                    _unreachable_hosts[host] = time.monotonic()
                    raise HostUnreachableError(message, hint=hint)
                raise FetchError(message, hint=hint)
            delay = self.backoff_delay(attempt, retry_after)
            remaining = self.retries - attempt
            logger.warning(
                "%s %s: %s; retrying in %.1f s (%d retries left)",
                method, redact_url(url), cause, delay, remaining - 1,
            )
            self._sleep(delay)
            attempt += 1

    def backoff_delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Return the seconds to wait before retry number ``attempt + 1``."""
        if retry_after is not None:
            return min(retry_after, self.max_backoff_s)
        base = min(self.backoff_s * (2 ** attempt), self.max_backoff_s)
        return min(base + random.uniform(0, base / 2), self.max_backoff_s)

    def close(self) -> None:
        """Close the underlying session's connections."""
        self.session.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _check_reachable(method: str, url: str, host: str) -> None:
    """Raise HostUnreachableError if ``host`` failed to connect within the last UNREACHABLE_RECHECK_S."""
    failed_at = _unreachable_hosts.get(host)
    if failed_at is None:
        return
    age = time.monotonic() - failed_at
    if age >= UNREACHABLE_RECHECK_S:
        del _unreachable_hosts[host]
        return
    raise HostUnreachableError(
        f"{method} {redact_url(url)} not sent: the host could not be connected to {age:.0f} s ago, after every retry",
        hint=f"Check the network and the URL options (--nbia-url, --source); the host is tried again "
        f"{UNREACHABLE_RECHECK_S:.0f} s after that failure.",
    )


def is_connect_failure(error: Exception) -> bool:
    """Return True when no connection was made: refused, unresolvable host, connect timeout or proxy down.

    A connection that broke after it was made (reset, read timeout) is not
    one: the host is up, and the next case may well succeed.
    """
    if isinstance(error, (requests.exceptions.ConnectTimeout, requests.exceptions.ProxyError)):
        return True
    if not isinstance(error, requests.ConnectionError):
        return False
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.NameResolutionError))


def describe_exception(error: Exception) -> str:
    """Return a short cause for a network exception, without the URL and query that requests puts in it."""
    # A read timeout while requests reads a non-streamed body arrives as a
    # ConnectionError that wraps urllib3's ReadTimeoutError.
    if isinstance(error, requests.Timeout) or "timed out" in str(error).lower():
        return "timed out"
    if isinstance(error, (requests.ConnectionError, ConnectionError)):
        return "connection failed"
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return "connection closed before the end of the body"
    return type(error).__name__
