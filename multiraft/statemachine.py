"""What a Raft group replicates: the pluggable state machine (DESIGN §9).

raft-lite made the replicated application pluggable through RaftCallbacks; here
the same role is the `StateMachine` protocol. The core (`multiraft.raft`) never
looks inside commands: it orders opaque `bytes`, and the driver (a worker, the
simulator) hands each committed entry to `apply` in log order. The KV store
(`multiraft.kv.KVStateMachine`) is the default implementation; a user can plug
their own without touching the core.

The contract, which every implementation must keep because every replica runs
it independently and they must never diverge:

- **Deterministic.** `apply` depends only on the current state, the index and
  the bytes: no clock, no randomness, no iteration over unordered containers
  whose order could differ between processes, no configuration that may differ
  between replicas. Equal sequences of `apply` calls give equal states and equal
  `snapshot()` bytes on every replica.
- **Total.** `apply` never raises for bad *command bytes*: a malformed command
  from a client becomes a typed result (the KV store returns `InvalidCommand`)
  and changes nothing, identically on every replica. It may raise only for a
  driver bug (`ApplyOrderError`).
- **Ordered.** `index` strictly increases from one call to the next (gaps are
  allowed: a driver may skip entries that are not for the state machine, such
  as conf changes). `apply(index, b"")` must be a no-op that only advances
  `applied_index`: that is what a new leader's empty entry carries, and what a
  driver may pass for an entry it does not want to interpret.
- **Snapshots are complete.** `snapshot()` is an image of *everything* that
  affects future results, including exactly-once session state and
  `applied_index`; `restore(snapshot())` on a fresh instance followed by the same
  commands gives the same results and the same state as not snapshotting.
  `restore` of bad bytes raises a typed error and leaves the current state
  untouched.
- **Reads outside the log.** `read(query)` answers a read-only query from the
  current state. It is linearizable only when the driver calls it after the
  applied index has reached the query's ReadIndex (DESIGN §4, Ready.read_states);
  the state machine itself does not know about ReadIndex or leases.

This module imports only the standard library, so any layer may use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

__all__ = [
    "ApplyOrderError",
    "StateMachine",
    "StreamingStateMachine",
]


class ApplyOrderError(RuntimeError):
    """The driver applied an entry out of order (index <= applied_index).

    This is a bug in the driver, not a client error: every replica would have to
    make the same mistake for the replicas to stay equal, so refusing loudly is
    the only safe answer.
    """

    def __init__(self, index: int, applied_index: int) -> None:
        super().__init__(
            f"apply(index={index}) after applied_index={applied_index}: "
            "indexes must strictly increase (driver bug)"
        )
        self.index = index
        self.applied_index = applied_index


@runtime_checkable
class StateMachine(Protocol):
    """A deterministic state machine replicated by one Raft group."""

    @property
    def applied_index(self) -> int:
        """The index of the last entry applied (0 before any entry)."""
        ...

    def apply(self, index: int, data: bytes) -> object:
        """Apply the committed entry at `index` and return its result.

        The result is what the waiting client receives (the driver completes
        the client's request with it). Never raises for malformed `data`; raises
        `ApplyOrderError` if `index <= applied_index`.
        """
        ...

    def read(self, query: object) -> object:
        """Answer a read-only query from the current state, outside the log.

        Must not change any state. Linearizable only if called once
        `applied_index` has reached the read's ReadIndex.
        """
        ...

    def snapshot(self) -> bytes:
        """A deterministic image of the whole state as of `applied_index`."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the whole state with the image `data` (from `snapshot`).

        Raises a typed error on malformed data and then leaves the current state
        untouched.
        """
        ...


@runtime_checkable
class StreamingStateMachine(StateMachine, Protocol):
    """A state machine whose snapshots can be produced and consumed in chunks.

    For large states: the driver writes the chunks to the snapshot store or
    sends them to a follower (DESIGN §8, snapshots travel in bounded chunks)
    without building one huge `bytes`. `b"".join(snapshot_chunks(n))` must equal
    `snapshot()`, and `restore_chunks` must accept any split of those bytes.
    """

    def snapshot_chunks(self, chunk_size_bytes: int) -> Iterator[bytes]:
        """The snapshot image as chunks of `chunk_size_bytes` (the last may be
        shorter). The image is taken when this is called; applying further
        entries while iterating does not change it."""
        ...

    def restore_chunks(self, chunks: Iterable[bytes]) -> None:
        """`restore` from an iterable of chunks (any split of the image)."""
        ...
