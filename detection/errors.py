"""The one error class whose text is written for the people who run the software.

Every error this package (and the web application) raises on purpose about its input (a file
it cannot read, a parameter out of range, a model that does not fit the data) is an
:class:`InputError`, or a subclass such as ``VolumeFormatError``. Its message is a sentence
meant for the user: it names the file, row or field and says what is wrong. Errors of any other
type (a ``KeyError`` from a bug, a ``ValueError`` that a library raised about a value it was
given) are not shown to users as they are: they may quote data or internals.
"""


class InputError(ValueError):
    """Bad input, described for the user who gave it."""
