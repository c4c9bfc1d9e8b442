"""cortex-gateway: one OpenAI + Anthropic endpoint for a fleet of neurons."""

__version__ = "0.1.0"
