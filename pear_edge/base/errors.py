"""One exception type for problems the user can fix; the CLI prints it as a single line."""


class PearError(Exception):
    """Bad input or environment: the message says what is wrong and what to do."""
