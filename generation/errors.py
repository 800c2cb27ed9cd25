"""The one exception type for problems the caller caused and can fix."""


class UserInputError(ValueError):
    """A request that cannot run as given; the message says what to change."""
