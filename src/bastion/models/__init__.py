"""Models: the chat protocol every provider speaks, its errors, and a scripted model for tests."""

from bastion._core.usage import Usage
from bastion.models._errors import (
    AuthenticationFailed,
    ContentPolicyViolation,
    ContextLengthExceeded,
    MalformedResponse,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    StreamInterrupted,
)
from bastion.models._router import FallbackChain, ModelChoice, create_fallback_chain
from bastion.models._scripted import Reply, ScriptedModel
from bastion.models._types import (
    Attempt,
    ChatModel,
    ChatRequest,
    Completion,
    FinishReason,
    Message,
    Role,
    StreamChunk,
    ToolCall,
    ToolSpec,
)

__all__ = [
    "Attempt",
    "AuthenticationFailed",
    "ChatModel",
    "ChatRequest",
    "Completion",
    "ContentPolicyViolation",
    "ContextLengthExceeded",
    "FallbackChain",
    "FinishReason",
    "MalformedResponse",
    "Message",
    "ModelChoice",
    "ProviderBadRequest",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderRateLimited",
    "ProviderTimeout",
    "ProviderUnavailable",
    "Reply",
    "Role",
    "ScriptedModel",
    "StreamChunk",
    "StreamInterrupted",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "create_fallback_chain",
]
