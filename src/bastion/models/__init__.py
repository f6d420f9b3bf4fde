"""Models: the chat protocol every provider speaks, its errors, routing, tokens and cost."""

from bastion._core.usage import Usage
from bastion.models._anthropic import AnthropicModel
from bastion.models._cache import (
    CachedModel,
    CacheStats,
    EmbeddingCache,
    ResponseCache,
    skip_cache,
)
from bastion.models._context import CONTEXT_WINDOWS, ContextWindowManager, context_window_for
from bastion.models._cost import BudgetExceeded, BudgetWarning, CostTracker, ModelSpend
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
from bastion.models._openai import OpenAIModel
from bastion.models._pricing import ModelPrice, PricingTable, UnknownModelError
from bastion.models._router import FallbackChain, ModelChoice, create_fallback_chain
from bastion.models._scripted import Reply, ScriptedModel
from bastion.models._timeouts import ModelTimeouts
from bastion.models._tokens import count_message_tokens, count_tokens, estimate_tokens
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
    "CONTEXT_WINDOWS",
    "AnthropicModel",
    "Attempt",
    "AuthenticationFailed",
    "BudgetExceeded",
    "BudgetWarning",
    "CacheStats",
    "CachedModel",
    "ChatModel",
    "ChatRequest",
    "Completion",
    "ContentPolicyViolation",
    "ContextLengthExceeded",
    "ContextWindowManager",
    "CostTracker",
    "EmbeddingCache",
    "FallbackChain",
    "FinishReason",
    "MalformedResponse",
    "Message",
    "ModelChoice",
    "ModelPrice",
    "ModelSpend",
    "ModelTimeouts",
    "OpenAIModel",
    "PricingTable",
    "ProviderBadRequest",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderRateLimited",
    "ProviderTimeout",
    "ProviderUnavailable",
    "Reply",
    "ResponseCache",
    "Role",
    "ScriptedModel",
    "StreamChunk",
    "StreamInterrupted",
    "ToolCall",
    "ToolSpec",
    "UnknownModelError",
    "Usage",
    "context_window_for",
    "count_message_tokens",
    "count_tokens",
    "create_fallback_chain",
    "estimate_tokens",
    "skip_cache",
]
