"""Read-only mirror topics and fencing by ACL, where the destination has an authorizer
(docs/architecture.md section 2).

    mirror create / worker tick                 promote / failover (after the workers acked)
    ---------------------------                 --------------------------------------------
    ALLOW WRITE <link principal> on T           DENY WRITE <link principal> on T   (fencing)
    DENY  WRITE <every other writer> on T       lift what the left column created

T is the literal mirror topic. "Every other writer" is each principal holding an ALLOW of
WRITE or ALL on a pattern that covers T (literal, prefixed or the wildcard), except:
- `User:*`: Kafka evaluates DENY before ALLOW, so denying every principal would deny the
  link's too. It is reported as a warning and left alone.
- super users: the authorizer never consults ACLs for them; nothing can stop their writes.

Only the bindings kafka-mirrors created are recorded (MirrorRecord.acls, in the state
store, so any host can lift them) and only recorded bindings are ever deleted. A binding
that existed already is left alone and not recorded.

The link's principal is the link option `link.principal`, else `User:<sasl.username>` of
the link's destination settings; when it is unknown, no ACLs are managed at all.

Whether the destination has an authorizer is its broker config `authorizer.class.name`
(kafka/acls.py: Kafka 4.x answers DescribeAcls without one with an empty list). An ACL
call answered SECURITY_DISABLED means no authorizer too: nothing is made, nothing fails,
and the operator is told once that read-only ACLs are not enforced.

Kafka answers DescribeAcls from a principal without DESCRIBE on the cluster with an empty
list, not an error. So after creating the link's ALLOW, the binding must show up in
DescribeAcls: if it does not, the ACLs cannot be read and the mirror would silently stay
writable, so the step fails instead.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from kafka_mirrors.errors import ConflictError, KafkaAuthError, KafkaMirrorsError
from kafka_mirrors.kafka import acls as ka
from kafka_mirrors.kafka.acls import Acl

WRITERS_OPS = ("WRITE", "ALL")


class Info(str):
    """A note that is information, not a warning (the CLI prints it without 'warning:')."""


VISIBLE_WAIT_S = 5.0
EVERYONE = "User:*"


# ---------------------------------------------------------------- the link's principal

def link_principal(link) -> str | None:
    """`link.principal`, else User:<sasl.username> of the destination settings, else None."""
    explicit = (link.option("link.principal") or "").strip()
    if explicit:
        return explicit
    try:
        user = link.destination.client_config().get("sasl.username")
    except KafkaMirrorsError:
        return None
    return f"User:{user}" if user else None


# ---------------------------------------------------------------- pure planning

def _covers_write(a: Acl, topic: str, permission: str) -> bool:
    return a.permission == permission and a.operation in WRITERS_OPS and a.matches_topic(topic)


def link_allow(topic: str, principal: str) -> Acl:
    return Acl(principal, "WRITE", "ALLOW", topic)


def fence(topic: str, principal: str) -> Acl:
    return Acl(principal, "WRITE", "DENY", topic)


def is_fence(a: Acl, topic: str, principal: str | None) -> bool:
    return a == fence(topic, principal) if principal else False


def blocking_denies(topic: str, principal: str, existing: list[Acl], recorded: list[Acl]) -> list[Acl]:
    """DENYs not made by kafka-mirrors that would stop the link's own writes to `topic`."""
    return [a for a in existing if a not in recorded and a.principal in (principal, EVERYONE)
            and _covers_write(a, topic, "DENY")]


def plan_read_only(topic: str, principal: str, existing: list[Acl],
                   recorded: list[Acl]) -> tuple[list[Acl], list[Acl], list[str]]:
    """(bindings to create, recorded bindings to delete, warnings) that make `topic`
    writable by `principal` only. `existing`: the cluster's topic ACLs; `recorded`: what
    kafka-mirrors created for this mirror earlier (a fencing DENY from an earlier stop is
    lifted: the topic is a mirror of this link again)."""
    want = [link_allow(topic, principal)]
    warnings = []
    writers = sorted({a.principal for a in existing if _covers_write(a, topic, "ALLOW")} - {principal})
    for w in writers:
        if w == EVERYONE:
            warnings.append(f"every principal ({EVERYONE}) is allowed to write to '{topic}' by an ACL; it cannot "
                            f"be denied without denying the link's principal {principal} too, so the mirror stays "
                            f"writable by principals that hold no other ACL; narrow that ACL to make it read-only")
            continue
        want.append(Acl(w, "WRITE", "DENY", topic))
    have = set(existing)
    to_create = [a for a in want if a not in have]
    to_delete = [a for a in recorded if a.principal == principal and a.permission == "DENY"]
    return to_create, to_delete, warnings


def plan_release(topic: str, principal: str | None, recorded: list[Acl]) -> tuple[list[Acl], list[Acl]]:
    """(to create, to delete) at promote/failover: lift every recorded binding but a
    fence, and fence the link's principal."""
    to_delete = [a for a in recorded if not is_fence(a, topic, principal)]
    to_create = [fence(topic, principal)] if principal else []
    return to_create, to_delete


# ---------------------------------------------------------------- results

@dataclass
class AclChanges:
    created: list[Acl] = field(default_factory=list)
    deleted: list[Acl] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def view(self) -> dict:
        return {"created": [str(a) for a in self.created], "deleted": [str(a) for a in self.deleted],
                "warnings": list(self.warnings)}

    def __bool__(self) -> bool:
        return bool(self.created or self.deleted or self.warnings)


class AclStepError(KafkaMirrorsError):
    """An ACL step failed part way. `recorded` is what kafka-mirrors created and must
    still be recorded (to lift it later); `changes` what was done before the failure."""

    def __init__(self, message: str, hint: str | None, recorded: list[Acl], changes: AclChanges):
        super().__init__(message, hint)
        self.recorded = recorded
        self.changes = changes


def to_json(recorded: list[Acl]) -> list[dict] | None:
    return [a.to_json() for a in recorded] or None


def from_json(value: list[dict] | None) -> list[Acl]:
    return [Acl.from_json(v) for v in value or []]


# ---------------------------------------------------------------- against the cluster

class ReadOnlyAcls:
    """The destination's ACLs for one link's mirrors. Opens no connection until used."""

    def __init__(self, link, admin):
        self.link = link
        self.admin = admin
        self.principal = link_principal(link)
        self._authorizer: bool | None = None
        self._told = False  # the no-authorizer note was given by make_read_only

    def authorizer(self) -> bool:
        if self._authorizer is None:
            self._authorizer = ka.has_authorizer(self.admin)
        return self._authorizer

    def managed(self) -> bool:
        """Both a known principal and an authorizer: only then are ACLs managed."""
        return bool(self.principal) and self.authorizer()

    def _no_authorizer(self) -> str | None:
        """The cluster answered an ACL call with SECURITY_DISABLED: from now on it has no
        authorizer. Returns the note to show, the first time only."""
        self._authorizer = False
        if self._told:
            return None
        self._told = True
        return self.no_authorizer_note()

    def no_authorizer_note(self) -> Info | None:
        """Where the link has a principal (so ACLs were expected) but the destination has
        no authorizer; the caller has checked `authorizer()`."""
        if not self.principal:
            return None
        return Info(f"read-only ACLs are not enforced: the {self.admin.label} has no authorizer "
                    f"({ka.AUTHORIZER_CONFIG} is not set), so any client can write to the mirror topics")

    def note(self) -> str | None:
        """What an operator should know about the ACLs of this link's mirrors, if anything:
        none are managed though they could be, or they cannot be (no authorizer). The
        same answer each time it is asked: the caller says it once."""
        if self.principal:
            return None if self.authorizer() else self.no_authorizer_note()
        if self.authorizer():
            return ("the destination has an authorizer but the link's principal is unknown (no link.principal "
                    "option, no sasl.username): no read-only ACLs are set, so principals allowed to write to "
                    f"the mirror topics can write to them; set it with 'kafka-mirrors link alter {self.link.name} "
                    "--config link.principal=User:NAME'")
        return None

    # ---- mirror create, the worker's tick
    def check(self, topic: str, recorded: list[Acl] = ()) -> None:
        """Read-only checks before anything is created: a DENY not made by kafka-mirrors
        that would stop the link's own writes is a conflict."""
        if not self.managed():
            return
        try:
            existing = ka.topic_acls(self.admin)
        except ka.NoAuthorizer:
            self._authorizer = False
            return
        blocking = blocking_denies(topic, self.principal, existing, list(recorded))
        if blocking:
            raise ConflictError(
                f"the link's principal {self.principal} is denied writing to '{topic}' by an ACL that "
                f"kafka-mirrors did not create ({blocking[0]})",
                f"remove it (kafka-acls --remove --deny-principal {blocking[0].principal} --operation "
                f"{blocking[0].operation} --topic {topic}) and try again")

    def make_read_only(self, topic: str, recorded: list[Acl] = (),
                       existing: list[Acl] | None = None) -> tuple[list[Acl], AclChanges]:
        """Make `topic` writable by the link's principal only. Returns (bindings to
        record, changes). On failure, undoes what this call created and raises."""
        recorded = list(recorded)
        changes = AclChanges()
        if not self.managed():
            return recorded, changes
        allow = link_allow(topic, self.principal)
        made: list[Acl] = []
        try:
            if existing is None or allow not in existing:
                existing = ka.topic_acls(self.admin)
            if allow not in existing:
                ka.create(self.admin, [allow])
                made.append(allow)
                existing = self._wait_visible(allow)
                if allow not in existing:
                    raise KafkaAuthError(
                        f"cannot read the ACLs of the {self.admin.label} as {self.principal} (DescribeAcls "
                        f"does not show the binding just created), so '{topic}' cannot be made read-only",
                        "grant the link's principal DESCRIBE and ALTER on the cluster "
                        "(README: 'Running on a cluster with an authorizer')")
            to_create, to_delete, changes.warnings = plan_read_only(topic, self.principal, existing, recorded)
            to_create = [a for a in to_create if a not in made]
            ka.create(self.admin, to_create)
            made += to_create
            deleted = ka.delete(self.admin, to_delete)
            if to_create or to_delete:
                self._wait_applied(to_create, to_delete)
        except ka.NoAuthorizer:
            # SECURITY_DISABLED: nothing was made (no ACL call succeeds on such a cluster)
            note = self._no_authorizer()
            changes.warnings = [note] if note else []
            return recorded, changes
        except KafkaMirrorsError:
            try:
                ka.delete(self.admin, made)
            except KafkaMirrorsError:
                pass  # the first error is the one to report
            raise
        changes.created = made
        changes.deleted = deleted
        kept = [a for a in recorded if a not in to_delete] + made
        return kept, changes

    def _wait_visible(self, acl: Acl) -> list[Acl]:
        return self._wait_applied([acl], [])

    def _wait_applied(self, present: list[Acl], absent: list[Acl]) -> list[Acl]:
        """The topic ACLs once `present` show up in them and `absent` are gone, or as they
        are after a while: a broker answers DescribeAcls (and authorizes) from its metadata
        image, which follows the controller a moment after CreateAcls/DeleteAcls returned."""
        deadline = time.monotonic() + min(VISIBLE_WAIT_S, self.admin.timeout)
        while True:
            existing = ka.topic_acls(self.admin)
            have = set(existing)
            if (all(a in have for a in present) and not any(a in have for a in absent)) \
                    or time.monotonic() >= deadline:
                return existing
            time.sleep(0.1)

    def undo(self, created: list[Acl]) -> None:
        ka.delete(self.admin, created)

    # ---- promote / failover
    def release_and_fence(self, topic: str, recorded: list[Acl]) -> tuple[list[Acl], AclChanges]:
        """Lift the read-only DENYs (others may write now) and deny the link's principal
        WRITE (fencing). The fence comes first, so should a delete fail the link is fenced
        already. Raises AclStepError with what must still be recorded."""
        recorded = list(recorded)
        changes = AclChanges()
        if not self.principal and not recorded:
            return recorded, changes
        try:
            # with ACLs on record, lift them whatever the broker config says (it may be
            # hidden or absent); only SECURITY_DISABLED (NoAuthorizer below) proves none
            if not recorded and not self.authorizer():
                return [], changes
        except KafkaMirrorsError as exc:
            raise AclStepError(f"ACLs of '{topic}' not changed: {exc.message}", exc.hint, recorded, changes) from None
        to_create, to_delete = plan_release(topic, self.principal, recorded)
        try:
            existing = ka.topic_acls(self.admin)
            to_create = [a for a in to_create if a not in existing]
            ka.create(self.admin, to_create)
            changes.created = to_create
            recorded += to_create
            changes.deleted = ka.delete(self.admin, to_delete)
            recorded = [a for a in recorded if a not in to_delete]
            self._wait_applied(to_create, to_delete)
        except ka.NoAuthorizer:
            self._authorizer = False
            return [], AclChanges()  # as above: nothing can be lifted, nothing fences
        except KafkaMirrorsError as exc:
            raise AclStepError(f"ACLs of '{topic}' only partly changed: {exc.message}", exc.hint,
                               recorded, changes) from None
        return recorded, changes

    # ---- the worker's periodic re-check
    def refresh(self, store, topics: list[str], records: dict | None = None) -> list[str]:
        """Deny principals granted WRITE since the mirror was made read-only, for each
        mirror in `topics` that is still ACTIVE or PAUSED. One DescribeAcls for all.
        `records` (topic -> MirrorRecord, e.g. what a worker follows) spares reading the
        state store for mirrors with nothing to change; a mirror that changes is re-read.
        Returns log lines (what changed, warnings); raises KafkaMirrorsError on failure."""
        from kafka_mirrors.state import ACTIVE, PAUSED
        if not topics or not self.managed():
            return []
        existing = ka.topic_acls(self.admin)
        lines = []
        for topic in topics:
            rec = (records or {}).get(topic) or store.get_mirror(topic)
            if rec.state not in (ACTIVE, PAUSED):
                continue
            recorded = from_json(rec.acls)
            to_create, _, _ = plan_read_only(topic, self.principal, existing, recorded)
            if not to_create:
                continue
            kept, changes = self.make_read_only(topic, recorded, existing)
            rec = store.get_mirror(topic)  # re-read: only the acls field is ours to change
            written = False
            if rec.state in (ACTIVE, PAUSED):
                # written only over the state just read: a pause, promote or failover landing
                # in between wins (issue 11: put_mirror wrote ACTIVE back over PENDING_STOPPED)
                try:
                    store.set_state(topic, rec.state, reason=rec.reason, current=rec, acls=to_json(kept))
                    written = True
                except ConflictError:
                    pass
            if not written:
                self.undo(changes.created)  # promoted or failed over meanwhile
                continue
            existing = existing + changes.created
            lines += [f"'{topic}' read-only: created ACL {a}" for a in changes.created]
            lines += [f"'{topic}': {w}" for w in changes.warnings]
        return lines


def refresh_read_only(link, store, admin, topics: list[str], records: dict | None = None) -> list[str]:
    """For the worker's config-sync tick: keep the mirrors in `topics` read-only as new
    principals are granted WRITE on them. Returns log lines; raises KafkaMirrorsError."""
    return ReadOnlyAcls(link, admin).refresh(store, topics, records)
