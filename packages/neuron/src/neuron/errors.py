"""The neuron's structured errors: a code (docs/neuron.md, "HTTP API"), a message, and details."""

from __future__ import annotations

from typing import Any

from cortex_core.neuron_api import ERROR_STATUS, ErrorCode, ErrorResponse, error_response

__all__ = ["NeuronError"]


class NeuronError(Exception):
    """A failure the neuron answers with ``{"error": {"code", "message", "details"}}``."""

    def __init__(self, code: ErrorCode, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.details = details or {}

    @property
    def status(self) -> int:
        """The HTTP status for this error's code."""
        return ERROR_STATUS[self.code]

    def response(self) -> ErrorResponse:
        """The wire form of this error."""
        return error_response(self.code, self.message, self.details)
