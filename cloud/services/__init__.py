"""Services: the only code that touches the database; they apply :mod:`cloud.domain` rules to rows.

Each function takes an open SQLAlchemy ``Session`` and leaves committing to its caller (one unit of
work per request, message batch or job), except the ``*Service`` classes that own their units of work
and publish events after commit.
"""
