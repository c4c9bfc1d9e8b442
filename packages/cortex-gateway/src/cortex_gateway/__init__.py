"""The cortex gateway (distribution helexa-cortex): one OpenAI + Anthropic endpoint for a fleet."""

__version__ = "0.1.0"
