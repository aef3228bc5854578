"""How every rf-triton command reports a failure: one `error:` line on stderr and a non-zero exit."""

import typer


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: MESSAGE` on stderr and return the Exit to raise: no traceback for a user's mistake."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries raise paragraphs), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def require_extra(extra: str, what: str) -> None:
    """Stop a command in one `error:` line when the extra it needs is not installed."""
    from .extras import MissingExtra, require

    try:
        require(extra, what)
    except MissingExtra as exc:
        raise fail(str(exc)) from None
