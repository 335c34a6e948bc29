"""The one exception type sisa raises for problems a user can fix."""


class SisaError(ValueError):
    """A problem with the user's input or workspace, with a message that names it.

    The CLI prints the message and exits non-zero; no traceback is shown. It is a
    ``ValueError``, so Python callers can catch it as they catch other bad input.
    """


class ModelChanged(SisaError):
    """The source file of a workspace's own model differs from the one it recorded;
    ``summary`` names the file and both sha256s, the message adds what to do."""

    def __init__(self, summary: str, advice: str) -> None:
        super().__init__(f"{summary}. {advice}")
        self.summary = summary
