"""Connection options for every Kafka client qlane creates: bootstrap servers, TLS, SASL.

One place, so workers, the CLI, replay and the admin client all connect the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time

from aiokafka import errors
from aiokafka.helpers import create_ssl_context
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_delay,
    stop_never,
    wait_exponential_jitter,
)

from streams.settings import Settings

log = logging.getLogger("qlane")

TLS_PROTOCOLS = ("SSL", "SASL_SSL")
SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.security_protocol not in TLS_PROTOCOLS:
        return None
    return create_ssl_context(
        cafile=settings.ssl_cafile, certfile=settings.ssl_certfile, keyfile=settings.ssl_keyfile
    )


# On Apache Kafka, how stale a client's view of the brokers and partition leaders may be
# (aiokafka's default: 300 s; a client left on a view of one broker stopped when it went).
KAFKA_METADATA_MAX_AGE_MS = 5_000


def kafka_options(settings: Settings) -> dict:
    """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
    options: dict = {
        "bootstrap_servers": settings.broker,
        "security_protocol": settings.security_protocol,
    }
    if settings.profile == "kafka":
        options["metadata_max_age_ms"] = KAFKA_METADATA_MAX_AGE_MS
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.security_protocol in SASL_PROTOCOLS:
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password
    return options


def client_options(settings: Settings) -> dict:
    """`kafka_options` for qlane's clients' producers and consumers (submit, cancel, the
    primitives, replay, tail): on the kafka profile they wait for a broker's answer as long
    as the workers do. With aiokafka's 40 s, a frozen node of three held every client submit
    to a partition it led for 40 s, while KRaft had moved its leaders after 9 s (a red-team
    run)."""
    options = kafka_options(settings)
    if settings.profile == "kafka":
        options["request_timeout_ms"] = int(settings.kafka_request_timeout_s * 1000)
    return options


def faust_credentials(settings: Settings) -> dict:
    """Faust app settings carrying the same TLS/SASL configuration."""
    import faust

    context = ssl_context(settings)
    if settings.security_protocol in SASL_PROTOCOLS:
        return {"broker_credentials": faust.SASLCredentials(
            username=settings.sasl_username, password=settings.sasl_password,
            mechanism=settings.sasl_mechanism, ssl_context=context,
        )}
    if context is not None:
        return {"broker_credentials": faust.SSLCredentials(context)}
    return {}


# --- preflight: refuse clearly and at once, instead of retrying a refusal forever ---------
class AccessRefused(RuntimeError):
    """The broker refused this client: wrong credentials, or a missing ACL. Not retryable;
    the message says which, names the principal and never carries a secret."""


class BrokerLacksTransactions(AccessRefused):
    """exactly_once (the kafka profile's default) needs a broker with transactions; this one
    refused a transactional producer. Not retryable."""


def _principal(settings: Settings) -> str:
    if settings.security_protocol in SASL_PROTOCOLS:
        return f"User:{settings.sasl_username}"
    return "the anonymous principal"


async def check_authentication(settings: Settings, timeout_s: float = 15.0) -> None:
    """Open one connection to each bootstrap server and authenticate; raise AccessRefused on
    bad credentials (any server: they share the user store)."""
    import asyncio

    from aiokafka.conn import create_conn

    options = kafka_options(settings)
    options.pop("bootstrap_servers")
    options.pop("metadata_max_age_ms", None)  # a client's, not a connection's
    last: Exception | None = None
    for server in settings.broker.split(","):
        host, _, port = server.rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host, int(port), request_timeout_ms=int(timeout_s * 1000),
                            **options),
                timeout_s,
            )
        except (errors.SaslAuthenticationFailed, errors.AuthenticationFailedError) as error:
            raise AccessRefused(
                f"Kafka refused the credentials of {_principal(settings)} "
                f"({settings.sasl_mechanism} on {server}): {type(error).__name__}. Check "
                "QLANE_SASL_USERNAME / QLANE_SASL_PASSWORD; not retrying."
            ) from None
        except ssl.SSLError as error:
            raise AccessRefused(
                f"TLS handshake with {server} failed ({error.reason or error}); check "
                "QLANE_SSL_CAFILE; not retrying."
            ) from None
        except (TimeoutError, OSError, errors.KafkaError) as error:
            last = error
            continue
        conn.close()
        return
    if last is not None:
        raise last


async def check_access(settings: Settings, topics: list[str], group: str | None = None) -> None:
    """Raise AccessRefused when the principal may not describe `topics` or use `group`."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import GroupAuthorizationFailedError, KafkaError

    admin = AIOKafkaAdminClient(**{**kafka_options(settings), "request_timeout_ms": 15000})
    await admin.start()
    try:
        refused = []
        for description in await admin.describe_topics(topics):
            if description["error_code"] == 29:  # TOPIC_AUTHORIZATION_FAILED
                refused.append(description["topic"])
        refused.sort()
        if refused:
            raise AccessRefused(
                f"{_principal(settings)} is not authorized for topic(s) {', '.join(refused)} "
                "(TopicAuthorizationFailed): grant the ACLs listed in the README "
                "('Security: SASL_SSL, ACLs, tenants'); not retrying."
            )
        if group is not None:
            try:
                await admin.find_coordinator(group)
            except GroupAuthorizationFailedError:
                raise AccessRefused(
                    f"{_principal(settings)} is not authorized for consumer group {group!r} "
                    "(GroupAuthorizationFailed): grant READ on it; not retrying."
                ) from None
            except KafkaError:
                pass  # e.g. the coordinator is still being elected: the consumer retries
    finally:
        await admin.close()


def broker_unavailable(error: BaseException) -> bool:
    """An error a broker call can succeed after: a node or leader not there yet, a timeout,
    too few brokers up to create a topic with all its replicas."""
    from workers.errors import BrokersMissing

    if isinstance(error, BrokersMissing):
        return True
    if isinstance(error, errors.KafkaError):
        return bool(getattr(error, "retriable", False)) or isinstance(
            error, (errors.KafkaConnectionError, errors.NodeNotReadyError,
                    errors.KafkaTimeoutError))
    return isinstance(error, (TimeoutError, ConnectionError))


def broker_retrying(settings: Settings, what: str, stop=stop_never) -> AsyncRetrying:
    """Attempts of a broker call, again while `broker_unavailable` says so, backing off from
    `retry_backoff_s` to `retry_backoff_max_s`; the last error is raised once `stop` says."""

    def warn(state) -> None:
        log.warning("%s: the cluster cannot answer (%r); trying again", what,
                    state.outcome.exception())

    return AsyncRetrying(
        retry=retry_if_exception(broker_unavailable),
        stop=stop,
        wait=wait_exponential_jitter(multiplier=settings.retry_backoff_s,
                                     max=settings.retry_backoff_max_s,
                                     jitter=settings.retry_backoff_s),
        before_sleep=warn,
        reraise=True,
    )


async def preflight(settings: Settings, ensure_topics) -> list[str]:
    """`checks` retried while the broker is unavailable, for `startup_broker_wait_s`.

    A worker restarted while one node of a cluster is down asked that node (aiokafka's admin
    client picks one at random) and exited with NodeNotReadyError (seen in the 3-node
    reliability run: 2 of its workers' restarts). A refused login or ACL is not retried."""
    wait = settings.startup_broker_wait_s
    deadline = time.monotonic() + wait
    retrying = broker_retrying(settings, "start-up checks", stop=stop_after_delay(wait))
    async for attempt in retrying:
        with attempt:
            # One attempt can wait on a node without end (a leaderless partition): each is
            # bounded, so that the checks end within about the wait (a red-team run).
            bound = max(min(deadline - time.monotonic(), max(wait / 3, 10.0)), 1.0)
            try:
                return await asyncio.wait_for(checks(settings, ensure_topics), bound)
            except TimeoutError:
                raise errors.KafkaTimeoutError(
                    f"the start-up checks got no answer within {bound:.0f}s") from None
    raise AssertionError("unreachable: tenacity re-raises the last error")


async def checks(settings: Settings, ensure_topics) -> list[str]:
    """Before a worker starts: authenticate, create missing topics, check the ACLs it needs.

    Faust and aiokafka retry a refused login or a missing ACL without end (a log line per
    attempt); a worker checks once and stops with the reason instead. Tansu has neither
    authentication nor ACLs, so the embedded profile on PLAINTEXT only creates topics.
    """
    from streams.kafka.topics import TopicNames

    checked = settings.security_protocol != "PLAINTEXT" or settings.profile == "kafka"
    if checked:
        await check_authentication(settings)
    exactly_once = settings.effective_processing_guarantee == "exactly_once"
    try:
        created = await ensure_topics(settings)
    except errors.KafkaConnectionError:
        if exactly_once:
            # The embedded broker closes the connection on the DescribeConfigs of topics
            # that exist: a worker of the kafka profile there retried that for a minute and
            # never said the broker lacks transactions (a red-team run). Asking says so.
            await check_transactions(settings)
        raise
    if checked:
        await check_access(settings, TopicNames.from_settings(settings).all(), settings.app_id)
    if exactly_once:
        from streams.kafka.topic_checks import check_group_tenants

        await check_transactions(settings)
        await check_group_tenants(settings)
    return created


async def check_transactions(settings: Settings) -> None:
    """Begin a transactional producer once (InitProducerId), as every exactly-once worker
    will: a broker without transactions (the embedded Tansu broker, reached with `--broker`
    and no `--profile`) otherwise ends the worker with Faust's bare `UnknownError`."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        **kafka_options(settings),
        transactional_id=f"{settings.app_id}-startup-check-{os.getpid()}")
    try:
        await producer.start()
    except errors.TransactionalIdAuthorizationFailed:
        raise AccessRefused(
            f"{_principal(settings)} may not use transactional ids {settings.app_id}-* "
            "(TransactionalIdAuthorizationFailed): grant the ACLs listed in the README "
            "('Security: SASL_SSL, ACLs, tenants'); not retrying.") from None
    except errors.KafkaError as error:
        if broker_unavailable(error):
            raise
        raise BrokerLacksTransactions(
            f"the broker at {settings.broker} refused a transactional producer "
            f"({type(error).__name__}): the {settings.profile} profile processes exactly-once, "
            "which needs Apache Kafka (or Redpanda) transactions. For the embedded broker "
            "pass --profile embedded; otherwise set QLANE_PROCESSING_GUARANTEE=at_least_once."
        ) from None
    finally:
        await producer.stop()


async def detect_profile(settings: Settings) -> Settings:
    """`settings` with the profile of the broker it reaches, where the profile was not given
    and the broker is the default address, on which both `qlane broker` (Tansu) and
    `qlane kafka` listen: `kafka` if it grants a transactional producer, else `embedded`.
    By the address alone, a worker of the README's own Apache Kafka example ran the embedded
    profile: at-least-once, no changelog policy check, one record per produce request (a
    red-team run). A broker that does not answer leaves the guess; the command then fails
    with its own reason."""
    if not settings.profile_unsure:
        return settings
    import asyncio

    host, _, port = settings.broker.rpartition(":")
    try:  # nothing listening: keep the guess without aiokafka's error lines
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
        writer.close()
    except (OSError, TimeoutError):
        return settings
    probe = settings.with_profile("kafka")
    # aiokafka logs Tansu's refusal at ERROR level: noise for a question, not a failure.
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        await check_transactions(probe)
    except BrokerLacksTransactions:
        return settings.with_profile("embedded")
    except AccessRefused:
        return probe  # a broker with transactions and ACLs: Apache Kafka, not Tansu
    except Exception as error:  # noqa: BLE001 - not reachable now: keep the guess
        log.debug("profile detection at %s failed: %r", settings.broker, error)
        return settings
    finally:
        quiet.setLevel(level)
    log.info("the broker at %s has transactions: kafka profile (--profile to choose)",
             settings.broker)
    return probe  # settled: a client built from it (one per primitive job) asks no more


def explain_refusal(settings: Settings, error: BaseException) -> str | None:
    """A one-line reason when `error` (from a CLI command) is the broker refusing this client:
    bad credentials (checked again, once) or a missing ACL; None for anything else."""
    import asyncio

    authorization = (errors.TopicAuthorizationFailedError, errors.GroupAuthorizationFailedError,
                     errors.ClusterAuthorizationFailedError,
                     errors.TransactionalIdAuthorizationFailed)
    if isinstance(error, authorization):
        return (f"{_principal(settings)} is not authorized ({type(error).__name__}): see the "
                "ACLs in the README ('Security: SASL_SSL, ACLs, tenants')")
    if isinstance(error, errors.KafkaConnectionError) and settings.security_protocol != "PLAINTEXT":
        try:
            asyncio.run(check_authentication(settings))
        except AccessRefused as refused:
            return str(refused)
        except Exception:
            return None
    return None
