"""The error hierarchy: each class carries its HTTP status and OpenAI ``type``/``code``.

It sits at the package root, below every layer, so the router and providers can raise these without
importing the HTTP layer; ``api/errors.py`` turns them into each route's envelope. A class names what
differs from its parent in its header, so a new error is one line:

    class QuotaExceeded(InterferenceError, status=429, type="rate_limit_error", code="quota_exceeded"): ...

    InterferenceError (500 server_error)
    ├── EngineFailure
    ├── InvalidRequest (400 invalid_request_error)
    │   ├── UnsupportedParameter (code unsupported_parameter)
    │   ├── RequestTooLarge (413)
    │   └── ContextLengthExceeded (code context_length_exceeded)
    ├── AuthenticationFailed (401)
    ├── PermissionDenied (403)
    │   └── ModelNotAllowed (code model_not_allowed)
    ├── NotFound (404)
    │   └── ModelNotFound (code model_not_found)
    ├── Overloaded (429, Retry-After: the server's own queue)
    ├── RateLimited (429, Retry-After: a key's own limits)
    ├── RequestTimedOut (504)
    ├── ServiceUnavailable (503)
    │   ├── InsufficientMemory (code insufficient_memory: a model does not fit the memory budget)
    │   ├── ModelLoadTimeout (code model_load_timeout)
    │   └── LimitsUnavailable (code limits_unavailable)
    ├── ServerShuttingDown (503)
    └── UpstreamError (502)
        ├── UpstreamConnectError
        ├── UpstreamTimeout (504)
        ├── UpstreamProtocolError
        ├── UpstreamAuthError (the upstream refused the gateway's key: 401 or 403 there, 502 here)
        └── UpstreamStatusError (the upstream's own status, and its Retry-After)
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "ContextLengthExceeded",
    "EngineFailure",
    "InsufficientMemory",
    "InterferenceError",
    "InvalidRequest",
    "LimitsUnavailable",
    "ModelLoadTimeout",
    "ModelNotAllowed",
    "ModelNotFound",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "RateLimited",
    "RequestTimedOut",
    "RequestTooLarge",
    "ServerShuttingDown",
    "ServiceUnavailable",
    "UnsupportedParameter",
    "UpstreamAuthError",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamStatusError",
    "UpstreamTimeout",
]


class InterferenceError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    retry_after: float | None = None  # seconds; sent as Retry-After when set

    def __init_subclass__(
        cls,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        **kwargs: object,
    ) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in (("status", status), ("type", type), ("code", code), ("retry_after", retry_after)):
            if value is not None:
                setattr(cls, name, value)

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if retry_after is not None:
            self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, message={self.message!r})"


class EngineFailure(InterferenceError):
    """The local engine could not produce this completion."""


class InvalidRequest(InterferenceError, status=400, type="invalid_request_error"): ...


class UnsupportedParameter(InvalidRequest, code="unsupported_parameter"): ...


class RequestTooLarge(InvalidRequest, status=413, code="request_too_large"): ...


class ContextLengthExceeded(InvalidRequest, code="context_length_exceeded"):
    """The prompt (with the tokens asked for) does not fit; ``tokens`` and ``limit`` when they are known,
    for the routes that word it their own way (Anthropic's "prompt is too long: N tokens > M maximum")."""

    def __init__(
        self, message: str, *, param: str | None = None, tokens: int | None = None, limit: int | None = None
    ) -> None:
        super().__init__(message, param=param)
        self.tokens = tokens
        self.limit = limit


class AuthenticationFailed(
    InterferenceError, status=401, type="invalid_request_error", code="invalid_api_key"
): ...


class PermissionDenied(InterferenceError, status=403, type="invalid_request_error", code="permission_denied"):
    """The key is valid but may not do this (an admin route, a model outside its list)."""


class ModelNotAllowed(PermissionDenied, code="model_not_allowed"):
    def __init__(self, model: str) -> None:
        super().__init__(f"This API key may not use the model '{model}'.", param="model")


class NotFound(InterferenceError, status=404, type="invalid_request_error"): ...


class ModelNotFound(NotFound, code="model_not_found"):
    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.", param="model"
        )


class Overloaded(
    InterferenceError, status=429, type="rate_limit_error", code="server_overloaded", retry_after=1.0
):
    """The server's own queue is full."""


class RateLimited(
    InterferenceError, status=429, type="requests", code="rate_limit_exceeded", retry_after=1.0
):
    """A key went over its own rpm, tpm or max_concurrent."""


class RequestTimedOut(InterferenceError, status=504, type="timeout_error", code="request_timeout"): ...


class ServiceUnavailable(InterferenceError, status=503, code="service_unavailable"):
    """The backend cannot take requests at all now (its engine stopped, or the server is stopping)."""


class InsufficientMemory(ServiceUnavailable, code="insufficient_memory"):
    """A local model does not fit the memory budget, alone or beside the models busy now."""


class ModelLoadTimeout(ServiceUnavailable, code="model_load_timeout"): ...


class LimitsUnavailable(ServiceUnavailable, code="limits_unavailable"):
    """The shared limits store cannot be reached and the server fails closed."""


class ServerShuttingDown(InterferenceError, status=503, code="server_shutting_down"):
    """The server is draining on SIGTERM/SIGINT; a stream still running at the deadline ends with this."""


class UpstreamError(InterferenceError, status=502, type="upstream_error"):
    """An upstream deployment failed; ``retryable`` failures may go to another deployment."""

    retryable = True


class UpstreamConnectError(UpstreamError, code="upstream_unreachable"): ...


class UpstreamTimeout(UpstreamError, status=504, code="upstream_timeout"): ...


class UpstreamProtocolError(UpstreamError, code="upstream_protocol_error"): ...


class UpstreamAuthError(UpstreamError, code="upstream_auth_failed"):
    """The upstream refused this deployment's credentials (401 or 403).

    It is the gateway's configuration, not the client's request, that is wrong, so another deployment
    may answer; when none does, the client gets a 502, not a 401 that would blame its own key.
    """

    def __init__(self, upstream_status: int, message: str) -> None:
        super().__init__(
            f"The upstream server refused the gateway's credentials ({upstream_status}): {message}"
        )
        self.upstream_status = upstream_status


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an error status; 4xx other than 429 are the request's fault."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        body: dict[str, object] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status
        self.body = body
        self.retryable = status >= 500 or status == 429
        if status == 429:
            self.type = "rate_limit_error"
        elif status < 500:
            self.type = "invalid_request_error"
