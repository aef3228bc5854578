"""The exception the repository format raises: a repository that cannot be read, written or served."""


class RepositoryError(Exception):
    """The message says which model or file and why, in one line."""
