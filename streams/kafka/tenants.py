"""Tenants and ACLs through Kafka's Admin API: the worker's grants, a tenant's topics and grants.

A tenant is authenticated by Kafka, not by the payload: its principal may write only its own
job topics (`{prefix}.jobs.{tenant}[-{lane}]`) and read only its own result, status and cost
topics (`{prefix}.{results|status|cost}.{tenant}`); the worker takes a job's tenant from the
topic it came from (streams/agents/preprocess.py). Names come from streams/kafka/topics.py.

aiokafka's admin client has no ACL calls, so the CreateAcls/DescribeAcls/DeleteAcls requests
of its protocol module are sent as they are (versions 0-1, which every Kafka >= 2.0 serves).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, for_code
from aiokafka.protocol.admin import CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest

from streams.kafka.security import kafka_options
from streams.kafka.topics import (
    LANES,
    TENANT_READ_KINDS,
    changelog_topic,
    check_tenant,
    job_topic,
    leader_topic,
    parse_job_topic,
    settle_replication_factor,
    tenant_topic,
    topic_configs,
)
from streams.settings import Settings
from workers.errors import InvalidJob, TenantMismatch
from workers.variational.loop import evaluated_workflow

# Kafka's enums (org.apache.kafka.common.resource / acl), as the wire carries them.
RESOURCE_TYPES = {"any": 1, "topic": 2, "group": 3, "cluster": 4, "transactional_id": 5}
OPERATIONS = {
    "any": 1, "all": 2, "read": 3, "write": 4, "create": 5, "delete": 6, "alter": 7,
    "describe": 8, "cluster_action": 9, "describe_configs": 10, "alter_configs": 11,
    "idempotent_write": 12,
}
PATTERNS = {"any": 1, "match": 2, "literal": 3, "prefixed": 4}
PERMISSION_ANY, PERMISSION_ALLOW = 1, 3
CLUSTER = "kafka-cluster"
_NAMES = {kind: {v: k for k, v in table.items()}
          for kind, table in (("resource", RESOURCE_TYPES), ("operation", OPERATIONS),
                              ("pattern", PATTERNS))}


class AclError(RuntimeError):
    """The broker refused an ACL request (e.g. no authorizer, or not allowed to alter ACLs)."""


# The embedded broker (Tansu) lists the ACL requests among its API versions, answers
# DescribeAcls with nothing, and closes the connection on CreateAcls: `tenant add` there
# printed aiokafka's tracebacks and "the cluster cannot answer now" after creating the
# topics (a red-team run).
NO_ACLS = ("the embedded broker has no ACLs: no principal is granted or refused anything "
           "there (README 'Tenants, authenticated by Kafka')")


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW rule: `principal` may `operation` on the resource, from any host."""

    resource: str  # topic, group, cluster, transactional_id
    name: str
    pattern: str  # literal or prefixed
    principal: str  # User:NAME
    operation: str

    def line(self) -> str:
        return (f"{self.principal}: {self.operation.upper()} on {self.resource} "
                f"{self.pattern.upper()} '{self.name}'")


def _grants(principal: str, resource: str, name: str, pattern: str, *operations: str):
    return [Acl(resource, name, pattern, principal, operation) for operation in operations]


def worker_acls(settings: Settings, principal: str) -> list[Acl]:
    """Everything a qlane worker (and an operator's CLI) needs, nothing more.

    - topics `{prefix}.*`: the job, stage, result, status, cost, drift, dead-letter and control
      topics, the tenants' topics included: read, write, describe, and create (the worker
      creates missing topics at start; drop `create` if an administrator creates them first),
      and describe_configs (the start-up check of the largest record each topic takes);
    - topics `{app_id}-workflows-changelog` (the table's changelog) and
      `{app_id}-__assignor-__leader` (Faust's leader election), the same four, by their
      literal names, and describe_configs on the changelog (the start-up check of its
      cleanup policy): a grant on the prefix `{app_id}-` also covered every topic of a
      deployment whose prefix starts with `{app_id}-` (`prod` and `prod-eu`: a red-team run);
    - consumer group `{app_id}`: read (join, commit);
    - transactional ids `{app_id}-*`: write, describe (exactly-once on Kafka: one
      transactional producer per input partition, `{app_id}-{group}-{partition}`, so a
      prefix; deployments whose prefixes start one another's followed by `-` or `.`
      overlap here and in `{prefix}.`: give each its own, README "Security");
    - the cluster: idempotent write (idempotent and transactional producers).
    """
    prefix, app_id = settings.topic_prefix, settings.app_id
    topic_ops = ("read", "write", "describe", "create")
    return [
        *_grants(principal, "topic", f"{prefix}.", "prefixed", *topic_ops, "describe_configs"),
        *_grants(principal, "topic", changelog_topic(settings), "literal", *topic_ops,
                 "describe_configs"),
        *_grants(principal, "topic", leader_topic(settings), "literal", *topic_ops),
        *_grants(principal, "group", app_id, "literal", "read"),
        *_grants(principal, "transactional_id", f"{app_id}-", "prefixed", "write", "describe"),
        *_grants(principal, "cluster", CLUSTER, "literal", "idempotent_write"),
    ]


def tenant_topics(prefix: str, tenant: str) -> dict[str, list[str]]:
    """The tenant's topics: `write` (its job topics, one per lane), `read` (its outcomes)."""
    check_tenant(tenant)
    return {
        "write": [job_topic(prefix, tenant, lane) for lane in LANES],
        "read": [tenant_topic(prefix, kind, tenant) for kind in TENANT_READ_KINDS],
    }


def tenant_acls(prefix: str, tenant: str, principal: str) -> list[Acl]:
    """Write (and describe) its job topics; read (and describe) its result, status and cost
    topics; read on consumer groups named `{prefix}.{tenant}.*` for its own consumers."""
    topics = tenant_topics(prefix, tenant)
    acls = []
    for name in topics["write"]:
        acls += _grants(principal, "topic", name, "literal", "write", "describe")
    for name in topics["read"]:
        acls += _grants(principal, "topic", name, "literal", "read", "describe")
    acls += _grants(principal, "group", f"{prefix}.{tenant}.", "prefixed", "read")
    return acls


def topic_tenant(prefix: str, topic: str) -> str | None:
    """The authenticated tenant of a record from `topic`: None for the shared job topics."""
    parsed = parse_job_topic(prefix, topic)
    return parsed[0] if parsed else None


MAX_TENANT_CHARS = 128
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_budget_tenant(name: str) -> str:
    """A QLANE_TENANT_BUDGETS name that some job's tenant can be, else ValueError: one that
    none can be (empty, too long, with control characters) left the tenant meant without a
    limit, unsaid (a red-team run). Names are exact: a tenant's topics name it in
    [a-z0-9_], and a job on the shared topics by its `tenant` field as written."""
    if not name or len(name) > MAX_TENANT_CHARS or CONTROL_CHARS.search(name):
        raise ValueError(f"QLANE_TENANT_BUDGETS names {name[:80]!r}, which no job's tenant "
                         f"can be (1 to {MAX_TENANT_CHARS} characters, no control "
                         "characters)")
    return name


def check_tenant_of(prefix: str, topic: str, request: dict) -> str | None:
    """The authenticated tenant of a JobRequest read from `topic` (None on the shared topics,
    where the payload's tenant stands); TenantMismatch when the payload names another, or
    its workflow id is outside the tenant's ids (`check_id_of`)."""
    claimed_tenant = request.get("tenant")
    if isinstance(claimed_tenant, str) and (
            len(claimed_tenant) > MAX_TENANT_CHARS or CONTROL_CHARS.search(claimed_tenant)):
        # Accounted, budgeted and logged by this name: a hostile one forged log lines.
        raise InvalidJob(f"a job's tenant is at most {MAX_TENANT_CHARS} characters without "
                         f"control characters, not {claimed_tenant[:40]!r}")
    tenant = topic_tenant(prefix, topic)
    if tenant is not None and claimed_tenant != tenant:
        claimed = repr(request.get("tenant"))[:80]
        raise TenantMismatch(f"a job on {topic} belongs to tenant {tenant!r}; "
                             f"its payload names {claimed}")
    check_id_of(tenant, request.get("workflow_id") or "")
    return tenant


def tenant_ids(tenant: str) -> str:
    """The prefix of every workflow id a tenant's topics carry."""
    return f"{tenant}."


def check_id_of(tenant: str | None, workflow_id: str) -> None:
    """On a tenant's topics a workflow id starts with `<tenant>.`: ids are one namespace, so
    without it one tenant could take another's id first (its job then refused as a conflict),
    and two tenants running one script with the same job id collided (red-team run)."""
    if tenant is not None and not workflow_id.startswith(tenant_ids(tenant)):
        raise TenantMismatch(f"on tenant {tenant!r}'s topics a workflow id starts with "
                             f"{tenant_ids(tenant)!r}, not {workflow_id[:80]!r}")


def source_tenant(prefix: str, entry: dict | None) -> str | None:
    """The tenant of a workflow from its table entry: the address it was admitted from, or
    for a tombstone (a cancel before its job) the topic of its latest cancel."""
    entry = entry or {}
    admitted = admitted_from(entry)
    if admitted is not None:
        return topic_tenant(prefix, admitted)
    topics = entry.get("cancel_topics")
    if not entry.get("source") and isinstance(topics, list) and topics and isinstance(
            topics[-1], str):
        return topic_tenant(prefix, topics[-1])
    return None


def check_cancel_of(prefix: str, topic: str, workflow_id: str, entry: dict | None) -> None:
    """A cancel on a tenant's topic may only cancel that tenant's workflows: ids of its
    namespace (`check_id_of`), and of those, not one a job from elsewhere (the shared topics)
    owns."""
    tenant = topic_tenant(prefix, topic)
    check_id_of(tenant, workflow_id)
    if entry is None or tenant is None or not entry.get("source"):
        return
    owner = source_tenant(prefix, entry)
    if owner != tenant:
        raise TenantMismatch(f"a cancel on {topic} cannot cancel another tenant's workflow")


# Outcome topics a tenant reads: every record qlane writes to the shared one of these for a
# workflow admitted from a tenant's job topic is also written to the tenant's own.
TENANT_COPIES = {"results": "results", "status": "status", "cost": "cost"}


def workflow_entry(runtime, key: bytes | None) -> dict | None:
    """The workflow table's entry for a record key, when the worker has the table."""
    from streams.kafka.topics import WORKFLOW_TABLE

    tables = getattr(runtime.app, "tables", None) if runtime.app is not None else None
    table = tables.get(WORKFLOW_TABLE) if tables is not None else None
    if table is None or not key:
        return None
    workflow_id = key.decode(errors="replace")
    entry = table.get(workflow_id)
    if entry is None and (parent := evaluated_workflow(workflow_id)) is not None:
        # A variational loop's evaluation is charged under "<workflow id>#eval<n>", which
        # has no entry of its own: its costs never reached the tenant's cost topic.
        entry = table.get(parent)
    return entry if isinstance(entry, dict) else None


def admitted_from(entry: dict | None) -> str | None:
    """The job topic a workflow was admitted from (its entry's source address)."""
    source = (entry or {}).get("source") or ""
    return source.rsplit(":", 2)[0] if source.count(":") >= 2 else None


def tenant_copy(runtime, short_name: str, key: bytes | None):
    """The Faust topic of the tenant's copy of a record sent to `short_name`, or None."""
    kind = TENANT_COPIES.get(short_name)
    if kind is None or not key or runtime.app is None:
        return None
    prefix = runtime.settings.topic_prefix
    tenant = source_tenant(prefix, workflow_entry(runtime, key))
    if tenant is None:
        return None
    return runtime.topic_named(tenant_topic(prefix, kind, tenant))


# --- the Admin API ------------------------------------------------------------------------
class Admin:
    """An admin client with ACL calls; `async with Admin(settings) as admin:`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = AIOKafkaAdminClient(**{**kafka_options(settings),
                                             "request_timeout_ms": 15000})

    async def __aenter__(self) -> Admin:
        await self.client.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def create_acls(self, acls: list[Acl]) -> None:
        for acl in acls:
            request = CreateAclsRequest(
                RESOURCE_TYPES[acl.resource], acl.name, PATTERNS[acl.pattern], acl.principal,
                "*", OPERATIONS[acl.operation], PERMISSION_ALLOW,
            )
            try:
                response = await self.client._send_request(request)
            except KafkaConnectionError as error:
                raise AclError(
                    f"the broker closed the connection on a CreateAcls request ({error}): a "
                    "broker without ACLs does, as the embedded broker does (pass --profile "
                    "embedded there); otherwise try again") from None
            for error_code, message in response.creation_responses:
                if error_code:
                    raise AclError(f"creating {acl.line()}: {for_code(error_code).__name__} "
                                   f"{message or ''}".rstrip())

    async def describe_acls(self, principal: str | None = None) -> list[Acl]:
        request = DescribeAclsRequest(RESOURCE_TYPES["any"], None, PATTERNS["any"], principal,
                                      None, OPERATIONS["any"], PERMISSION_ANY)
        response = await self.client._send_request(request)
        if response.error_code:
            raise AclError(f"describing ACLs: {for_code(response.error_code).__name__} "
                           f"{response.error_message or ''}".rstrip())
        found = []
        for resource_type, name, pattern, entries in response.resources:
            for entry_principal, _host, operation, permission in entries:
                if permission != PERMISSION_ALLOW:
                    continue
                found.append(Acl(_NAMES["resource"].get(resource_type, str(resource_type)), name,
                                 _NAMES["pattern"].get(pattern, str(pattern)), entry_principal,
                                 _NAMES["operation"].get(operation, str(operation))))
        return sorted(found)

    async def delete_acls(self, acls: list[Acl]) -> int:
        deleted = 0
        for acl in acls:
            request = DeleteAclsRequest(
                RESOURCE_TYPES[acl.resource], acl.name, PATTERNS[acl.pattern], acl.principal,
                "*", OPERATIONS[acl.operation], PERMISSION_ALLOW,
            )
            response = await self.client._send_request(request)
            for error_code, message, matching in response.filter_responses:
                if error_code:
                    raise AclError(f"deleting {acl.line()}: {for_code(error_code).__name__} "
                                   f"{message or ''}".rstrip())
                deleted += len(matching)
        return deleted

    async def create_topics(self, names: list[str]) -> list[str]:
        existing = set(await self.client.list_topics())
        missing = [name for name in names if name not in existing]
        if missing:
            settings = self.settings
            replication = await settle_replication_factor(settings, self.client, existing,
                                                          creating=True)
            response = await self.client.create_topics(
                [NewTopic(name, settings.partitions, replication,
                          topic_configs=topic_configs(settings, name)) for name in missing])
            for name, error_code, *_rest in response.topic_errors:
                if error_code:
                    raise AclError(f"creating topic {name}: {for_code(error_code).__name__}")
        return missing


async def grant_worker(settings: Settings, principal: str) -> list[Acl]:
    if settings.profile == "embedded":
        raise AclError(NO_ACLS)
    acls = worker_acls(settings, principal)
    async with Admin(settings) as admin:
        await admin.create_acls(acls)
    return acls


async def add_tenant(settings: Settings, tenant: str, principal: str) -> dict:
    """Create the tenant's topics (partitions and replication as the job topics) and ACLs
    (on the embedded broker, which has none, the topics alone)."""
    topics = tenant_topics(settings.topic_prefix, tenant)
    embedded = settings.profile == "embedded"
    acls = [] if embedded else tenant_acls(settings.topic_prefix, tenant, principal)
    async with Admin(settings) as admin:
        # The ACLs first: a cluster without an authorizer refuses them (SecurityDisabled),
        # and `tenant add` exited 1 there after creating every topic of the tenant.
        try:
            await admin.create_acls(acls)
        except AclError as error:
            raise AclError(f"{error}; no topic of tenant {tenant!r} was created") from None
        created = await admin.create_topics(topics["write"] + topics["read"])
    answer = {"tenant": tenant, "principal": principal, "created_topics": created,
              "acls": [acl.line() for acl in acls]}
    if embedded:
        answer["note"] = f"{NO_ACLS}; the tenant's topics are created"
    return answer


async def list_tenants(settings: Settings) -> list[dict]:
    """Tenants as the cluster has them: job topics present, with the principals granted."""
    prefix = settings.topic_prefix
    async with Admin(settings) as admin:
        topics = set(await admin.client.list_topics())
        acls = await admin.describe_acls()
    tenants: dict[str, dict] = {}
    for topic in sorted(topics):
        tenant = topic_tenant(prefix, topic)
        if tenant is not None:
            tenants.setdefault(tenant, {"tenant": tenant, "topics": [], "principals": set()})
            tenants[tenant]["topics"].append(topic)
    for acl in acls:
        if acl.resource == "topic" and acl.pattern == "literal":
            tenant = topic_tenant(prefix, acl.name)
            if tenant in tenants:
                tenants[tenant]["principals"].add(acl.principal)
    return [{**entry, "principals": sorted(entry["principals"])} for entry in tenants.values()]


async def remove_tenant(settings: Settings, tenant: str, principal: str,
                        delete_topics: bool = False, force: bool = False) -> dict:
    """Revoke the tenant's ACLs; with `delete_topics`, delete its topics too, unless a
    worker still reads them (`force`: anyway)."""
    topics = tenant_topics(settings.topic_prefix, tenant)
    if delete_topics and not force:
        await refuse_while_read(settings, tenant, set(topics["write"]))
    embedded = settings.profile == "embedded"
    async with Admin(settings) as admin:
        revoked = 0 if embedded else await admin.delete_acls(
            tenant_acls(settings.topic_prefix, tenant, principal))
        deleted = []
        if delete_topics:
            existing = set(await admin.client.list_topics())
            deleted = [name for name in topics["write"] + topics["read"] if name in existing]
            if deleted:
                await admin.client.delete_topics(deleted)
    return {"tenant": tenant, "principal": principal, "revoked_acls": revoked,
            "deleted_topics": deleted}


async def refuse_while_read(settings: Settings, tenant: str, job_topics: set[str]) -> None:
    """ValueError while a member of the workers' group subscribes to `job_topics`. Deleted
    under a running worker, a tenant's topics stopped it for every tenant for 104 s, then
    it exited on a transaction it could not commit (its results and status copies for the
    tenant's jobs in flight; a red-team run)."""
    from streams.kafka.topic_checks import GroupRebalancing, member_subscriptions

    try:
        subscriptions = await member_subscriptions(settings)
    except GroupRebalancing as error:
        raise ValueError(f"{error}: whether a worker reads {tenant!r}'s topics is not known "
                         "yet; try again in a few seconds") from None
    readers = sum(1 for subscription in subscriptions or [] if subscription & job_topics)
    if readers:
        raise ValueError(
            f"{readers} worker(s) of group {settings.app_id} still read {tenant!r}'s job "
            "topics: take the tenant out of their QLANE_TENANTS and restart them first (its "
            "jobs wait in its topics meanwhile), then delete its topics; deleted under a "
            "running worker they stop it for every tenant (--force deletes them anyway)")


# How long `tenant add` tries again while the cluster cannot answer (a node just lost,
# too few brokers for the topics' replicas).
TENANT_COMMAND_WAIT_S = 30.0


async def retried(settings: Settings, what: str, call):
    """`call()` again while the cluster cannot answer, for TENANT_COMMAND_WAIT_S: adding a
    tenant is idempotent, and asked of a node lost seconds before (aiokafka's admin client
    picks one at random), it stopped after creating the topics and some ACLs (a red-team
    run)."""
    from tenacity import stop_after_delay

    from streams.kafka.security import broker_retrying

    async for attempt in broker_retrying(settings, what,
                                         stop=stop_after_delay(TENANT_COMMAND_WAIT_S)):
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity re-raises the last error")


def run_tenant_command(settings: Settings, args) -> int:
    """`qlane tenant add|list|remove|grant-worker`: one JSON line per answer."""
    import asyncio
    import json
    import sys

    try:
        if args.action == "add":
            answer = asyncio.run(retried(settings, "tenant add", lambda: add_tenant(
                settings, args.name, args.principal)))
        elif args.action == "remove":
            answer = asyncio.run(remove_tenant(settings, args.name, args.principal,
                                               args.delete_topics, args.force))
        elif args.action == "grant-worker":
            acls = asyncio.run(grant_worker(settings, args.principal))
            answer = {"principal": args.principal, "acls": [acl.line() for acl in acls]}
        else:
            for entry in asyncio.run(list_tenants(settings)):
                print(json.dumps(entry))
            return 0
    except (AclError, ValueError) as error:
        print(f"qlane tenant {args.action}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(answer))
    return 0
