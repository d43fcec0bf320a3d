"""The one error tree. Every failure a user can meet is a KafkaMirrorsError with an exit
code and, where there is one, the command to run next; the CLI boundary turns it into a
one-line message on stderr (plus the hint) and that exit code.

Exit codes: 0 ok, 1 the operation failed (or any item of a batch failed), 2 usage.
"""
from __future__ import annotations


class KafkaMirrorsError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}; {self.hint}"


class UsageError(KafkaMirrorsError):
    """Bad arguments or options: nothing was attempted."""

    exit_code = 2


class NotFoundError(KafkaMirrorsError):
    """A named thing (link, mirror, topic, file) does not exist."""


class ConflictError(KafkaMirrorsError):
    """The thing exists already, or its state forbids the operation."""


class RegistryError(KafkaMirrorsError):
    """The link registry file is unreadable, corrupt or of the wrong shape."""


class ConfigError(KafkaMirrorsError):
    """A client setting or link option cannot be honoured."""

    exit_code = 2


class KafkaUnavailableError(KafkaMirrorsError):
    """A cluster could not be reached within the timeout."""


class KafkaAuthError(KafkaMirrorsError):
    """Authentication or authorization failed."""


class KafkaOperationError(KafkaMirrorsError):
    """A Kafka request failed for another reason (error code in the message)."""


class NotWriting(KafkaOperationError):
    """This worker may not write now (its group lease lapsed, its slot moved, or its view
    of the state store is not fresh): nothing is wrong with the mirror, and copying goes
    on once it may write again."""


class ReplicationError(KafkaMirrorsError):
    """The copy broke one of its invariants (offset mismatch, foreign write, ...)."""
