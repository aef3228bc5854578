"""The one exception the export step raises for bad input; the CLI turns it into one line + exit 1."""

from ..errors import first_line  # noqa: F401  (export's modules import it from here)


class ExportError(Exception):
    """A problem with the user's input or model that stops an export before anything is written."""
