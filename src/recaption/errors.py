"""The one base class of errors a user can fix (params, inputs): the CLI prints these
as a single clear message with exit status 2 instead of a traceback."""


class UserError(Exception):
    """Something in params.yaml or the input data needs changing; the message says what."""
