"""Translations between the client-facing APIs and the neurons' OpenAI chat API."""
