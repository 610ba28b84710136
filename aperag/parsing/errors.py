"""Parse errors; the API maps them to 415 and 422, the pipeline to a `failed` document."""


class UnsupportedDocument(ValueError):
    """The file type is not one we can index (a 415 at upload)."""


class UnparsableDocument(ValueError):
    """The file claims a supported type but cannot be read, holds no text, or exceeds a budget."""
