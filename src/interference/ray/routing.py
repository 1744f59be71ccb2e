"""Ray Serve request routers for the engine deployment.

``PrefixAffinityRouter`` sends each turn of a conversation to the engine replica that already holds
its prompt prefix (in its slots' KV or its prompt cache), so the prefix is not computed again; only
when that replica takes no more requests (``busy_at`` in flight) does the turn go to the least-loaded
replica, which then holds the conversation. A conversation the router has not seen goes to the
replica that rendezvous hashing gives it (the same in every ingress replica) if that one has a free
decoding slot (fewer than ``slots`` in flight), else to the least loaded: nothing is cached for it
anywhere, so waiting would gain nothing. Ray Serve builds one router per deployment handle, so each
ingress replica keeps its own table.

The deployment names the class in its ``request_router_config``; ``ROUTERS`` maps the names that
``--routing`` takes to import paths.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from .affinity import AffinityTable, home, prefix_hashes

__all__ = ["DEFAULT_BUSY_AT", "DEFAULT_SLOTS", "DEFAULT_TABLE_SIZE", "ROUTERS", "PrefixAffinityRouter"]

logger = logging.getLogger("interference")

ROUTERS = {
    "prefix": "interference.ray.routing:PrefixAffinityRouter",
    "pow2": "ray.serve._private.request_router:PowerOfTwoChoicesRequestRouter",
}
# Prefix hashes one router remembers (about 100 bytes each); the least recently used go first.
DEFAULT_TABLE_SIZE = 100_000
# Requests in flight at which a conversation's replica counts as busy, and a replica's decoding slots.
DEFAULT_BUSY_AT = 4
DEFAULT_SLOTS = 2
# Chains of requests being routed, kept from choosing a replica to recording it (bounded as well).
_PENDING_CHAINS = 4096


class PrefixAffinityRouter(RequestRouter):
    """The replica holding the longest prefix of the prompt; the least loaded when it is busy."""

    def initialize_state(self, **kwargs: Any) -> None:
        self._busy_at = int(kwargs.get("busy_at", DEFAULT_BUSY_AT))
        self._slots = int(kwargs.get("slots", DEFAULT_SLOTS))
        self._table: AffinityTable[ReplicaID] = AffinityTable(
            int(kwargs.get("table_size", DEFAULT_TABLE_SIZE))
        )
        self._chains: OrderedDict[str, list[bytes]] = OrderedDict()

    def _chain(self, request: PendingRequest) -> tuple[list[bytes], int]:
        if len(request.args) < 2 or not isinstance(request.args[1], str):
            return [], 0
        chain, opening = prefix_hashes(request.args[0], request.args[1])
        key = request.metadata.internal_request_id
        self._chains[key] = chain
        while len(self._chains) > _PENDING_CHAINS:
            self._chains.popitem(last=False)
        return chain, opening

    async def _queue_len(self, replica: RunningReplica) -> int | None:
        cached = self._replica_queue_len_cache.get(replica.replica_id)
        if cached is not None:
            return cached
        for _, queue_len in await self._probe_queue_lens([replica], 0):
            return queue_len
        return None

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        if pending_request is None:
            return [candidate_replicas]
        # Every pass offers every replica: back off between passes when all are full.
        pending_request.routing_context.should_backoff = True
        chain, opening = self._chain(pending_request)
        if not chain:
            return [candidate_replicas]
        by_id = {r.replica_id: r for r in candidate_replicas}
        held = self._table.lookup(chain, by_id)
        if held is not None:
            first, limit = by_id[held], self._busy_at
        else:
            first, limit = home(chain[opening], candidate_replicas, _replica_name), self._slots
        queue_len = await self._queue_len(first)
        if queue_len is not None and queue_len < limit:
            return [[first], candidate_replicas]
        # Busy or not answering: the least loaded of all (Ray Serve picks the shortest queue).
        return [candidate_replicas]

    def on_request_routed(
        self,
        pending_request: PendingRequest,
        replica_id: ReplicaID,
        result: Any,
    ) -> None:
        chain = self._chains.pop(pending_request.metadata.internal_request_id, None)
        if chain:
            self._table.record(chain, replica_id)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        gone = set(self._replicas) - {r.replica_id for r in replicas}
        super().update_replicas(replicas)
        for replica_id in gone:
            self._table.forget(replica_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._table.forget(replica_id)


def _replica_name(replica: RunningReplica) -> str:
    return str(replica.replica_id.unique_id)
