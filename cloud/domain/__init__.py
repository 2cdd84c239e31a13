"""Pure cloud rules: money, tariffs and rating, ledger, reading validation, arrears, calendar, control.

Nothing here does I/O or reads the clock, and nothing imports FastAPI, SQLModel, SQLAlchemy, Redis or
an MQTT client (tests/cloud/domain/test_domain_imports.py keeps it so). Import the submodules directly:
``from cloud.domain.tariffs import rate``.
"""
