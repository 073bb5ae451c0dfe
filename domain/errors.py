"""The root of every domain error, so entry points can map them in one table."""


class DomainError(Exception):
    """A rule of the domain refused a change."""

    code = "domain_error"

    def __init__(self, message: str, details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
