"""OpenRouter access: one client, typed results and typed errors."""

from ai_influencer.openrouter.client import OpenRouterClient
from ai_influencer.openrouter.data_urls import decode_image, image_to_data_url
from ai_influencer.openrouter.errors import (
    AuthError,
    BadRequestError,
    DeadlineExceededError,
    EmptyResponseError,
    FatalError,
    ImageDecodeError,
    InsufficientCreditsError,
    ModerationError,
    NoImageError,
    OpenRouterError,
    RateLimitError,
    RetryableError,
    StructuredOutputError,
    UpstreamError,
)
from ai_influencer.openrouter.types import (
    ChatResult,
    Credits,
    GeneratedImage,
    ImageResult,
    KeyInfo,
    ModelInfo,
    Usage,
)

__all__ = [
    "AuthError",
    "BadRequestError",
    "ChatResult",
    "Credits",
    "DeadlineExceededError",
    "EmptyResponseError",
    "FatalError",
    "GeneratedImage",
    "ImageDecodeError",
    "ImageResult",
    "InsufficientCreditsError",
    "KeyInfo",
    "ModelInfo",
    "ModerationError",
    "NoImageError",
    "OpenRouterClient",
    "OpenRouterError",
    "RateLimitError",
    "RetryableError",
    "StructuredOutputError",
    "UpstreamError",
    "Usage",
    "decode_image",
    "image_to_data_url",
]
