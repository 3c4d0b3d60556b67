"""Whether a dataset's official mirrors can be reached: a HEAD request each, at once, no retries.

The source stage asks before choosing between the mirrors and the shipped sample; download names network
failures in the same words.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from stages.core.datasets import TRAIN_LABELS, DatasetSpec

USER_AGENT = "mnist-pipeline/0.1 (+dvc pipeline; python-urllib)"


def describe_network_error(reason: object, timeout: float, timeout_key: str = "data.timeout") -> str:
    """A short, human reason for a failed connection (urllib wraps the real cause in URLError.reason)."""
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return f"host name not resolved (offline?): {reason.strerror or reason}"
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s ({timeout_key})"
    if isinstance(reason, http.client.IncompleteRead):
        return f"truncated body: connection closed after {len(reason.partial)} bytes"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__


def probe(url: str, timeout: float) -> str | None:
    """None when the server behind `url` answers at all, else why it cannot be reached.

    Only a connection that never gets an answer (DNS failure, refused, timed out, no route) or a proxy refusing
    with 407 counts as unreachable. Any other answer, an HTTP error or a broken TLS handshake included, means the
    mirror is there: the download then reports what is wrong with it instead of quietly using something else.
    """
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        # A fresh opener reads the proxy settings now (urlopen keeps the first ones it saw).
        urllib.request.build_opener().open(request, timeout=timeout).close()
    except urllib.error.HTTPError as error:
        return "the proxy refused to connect (HTTP 407 Proxy Authentication Required)" if error.code == 407 else None
    except urllib.error.URLError as error:
        return unreachable_reason(error.reason, timeout)
    except OSError as error:  # a timeout while waiting for the status line
        return unreachable_reason(error, timeout)
    return None


def unreachable_reason(reason: object, timeout: float) -> str | None:
    if isinstance(reason, ssl.SSLError) or not isinstance(reason, OSError):
        return None
    # An https proxy's refusal surfaces as http.client's "Tunnel connection failed: 407 ...".
    if "Tunnel connection failed" in str(reason):
        return f"the proxy refused to connect ({reason})" if " 407" in str(reason) else None
    return describe_network_error(reason, timeout, "data.probe_timeout")


def probe_mirrors(spec: DatasetSpec, timeout: float) -> list[str]:
    """`- <mirror>: <why>` for every official mirror when none can be reached; [] when any one answers.

    The mirrors are probed at once, so an offline machine waits one probe_timeout at most (name resolution
    aside: the system resolver keeps its own timeout).
    """
    urls = [f"{mirror.rstrip('/')}/{TRAIN_LABELS}" for mirror in spec.mirrors]
    with ThreadPoolExecutor(max_workers=max(1, len(urls))) as pool:
        reasons = list(pool.map(lambda url: probe(url, timeout), urls))
    if any(reason is None for reason in reasons):
        return []
    return [f"  - {mirror}: {reason}" for mirror, reason in zip(spec.mirrors, reasons, strict=True)]
