"""Typed errors. Each carries its HTTP status; serving/http.py's error_answer turns every one into {"error": ...}
JSON (the OpenAI routes into OpenAI's error shape, serving/handlers/openai.py), with Retry-After where one says."""


class ServingError(Exception):
    status = 500

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class BadRequest(ServingError):
    status = 400


class NotFound(ServingError):
    status = 404


class MethodNotAllowed(ServingError):
    status = 405


class PayloadTooLarge(ServingError):
    status = 413


class UnsupportedMediaType(ServingError):
    status = 415


class Unavailable(ServingError):
    status = 503

    def __init__(self, message, retry_after=None):
        super().__init__(message)
        self.retry_after = retry_after   # seconds, for a Retry-After header


class DeadlineExceeded(ServingError):
    status = 504


class ConfigError(Exception):
    """config.json does not describe a servable API. Raised at start-up, never per request."""
