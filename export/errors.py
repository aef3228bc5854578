"""The one exception the export step raises for bad input; the CLI turns it into one line + exit 1."""


class ExportError(Exception):
    """A problem with the user's input or model that stops an export before anything is written."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries raise paragraphs), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
