"""What the app holds while it runs: built once by ``create_app``, read by the routes."""

from __future__ import annotations

from dataclasses import dataclass

from ..router import Router
from ..state import ResponseStore
from .chat import ChatServing
from .completions import CompletionServing
from .embeddings import EmbeddingServing
from .messages import MessagesServing
from .responses import ResponseServing
from .responses_native import NativeResponseServing
from .shutdown import Shutdown
from .stored_responses import StoredResponses

__all__ = ["AppState"]


@dataclass(frozen=True, slots=True)
class AppState:
    router: Router
    chat: ChatServing
    completions: CompletionServing
    embeddings: EmbeddingServing
    responses: ResponseServing
    native_responses: NativeResponseServing
    stored_responses: StoredResponses
    messages: MessagesServing
    shutdown: Shutdown

    @classmethod
    def build(cls, router: Router, store: ResponseStore | None = None) -> AppState:
        shutdown = Shutdown()
        return cls(
            router=router,
            chat=ChatServing(router, shutdown),
            completions=CompletionServing(router, shutdown),
            embeddings=EmbeddingServing(router),
            responses=ResponseServing(router, shutdown, store),
            native_responses=NativeResponseServing(router, shutdown, store),
            stored_responses=StoredResponses(store),
            messages=MessagesServing(router, shutdown),
            shutdown=shutdown,
        )
