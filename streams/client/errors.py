"""Errors the client raises for outcomes it reads from Kafka (part of workers.errors' tree)."""

from __future__ import annotations

from workers import errors
from workers.errors import PermanentError, QlaneError, error_classes


class JobCancelled(PermanentError):
    """The workflow was cancelled before it produced a result."""


class RemoteJobFailed(PermanentError):
    """A workflow failed with an error class this client does not know."""


class ResultTimeout(QlaneError):
    """No outcome arrived for a workflow within the client's timeout (retrying may help)."""

    retryable = True


class BrokerTimeout(QlaneError):
    """The broker did not answer within the client's timeout while it connected, submitted
    or cancelled (a broker that takes connections and never answers, a topic that does not
    exist); nothing may have been sent (retrying may help)."""

    retryable = True


class UnknownTenant(PermanentError):
    """The tenant's job topic does not exist, so no worker reads it: its jobs would wait for
    nothing (and a broker that creates topics on first use would make it). An operator adds
    the tenant with `qlane tenant add` and names it in the workers' QLANE_TENANTS."""


class TopicsNotReadable(PermanentError):
    """The broker refuses this principal the outcome topics the client would watch (a
    tenant's principal watching the shared ones: it busy-looped on the refusal until its
    timeout, then blamed the broker's silence). A tenant's principal names its tenant."""


def remote_error(detail: str) -> QlaneError:
    """The typed error for a failure detail "ErrorClass: message" read from Kafka."""
    name, _, message = detail.partition(": ")
    cls = error_classes().get(name.strip())
    if cls is None or not issubclass(cls, QlaneError):
        return RemoteJobFailed(detail or "the workflow failed without a detail")
    return cls(message or name)


__all__ = ["BrokerTimeout", "JobCancelled", "RemoteJobFailed", "ResultTimeout",
           "TopicsNotReadable", "UnknownTenant", "remote_error", "errors"]
