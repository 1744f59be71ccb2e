"""What the app holds while it runs: built once by ``create_app``, read by the routes."""

from __future__ import annotations

from dataclasses import dataclass

from ..router import Router
from .chat import ChatServing
from .completions import CompletionServing
from .embeddings import EmbeddingServing
from .messages import MessagesServing
from .responses import ResponseServing

__all__ = ["AppState"]


@dataclass(frozen=True, slots=True)
class AppState:
    router: Router
    chat: ChatServing
    completions: CompletionServing
    embeddings: EmbeddingServing
    responses: ResponseServing
    messages: MessagesServing

    @classmethod
    def build(cls, router: Router) -> AppState:
        return cls(
            router=router,
            chat=ChatServing(router),
            completions=CompletionServing(router),
            embeddings=EmbeddingServing(router),
            responses=ResponseServing(router),
            messages=MessagesServing(router),
        )
