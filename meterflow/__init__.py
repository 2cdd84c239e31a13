"""Meterflow: open prepaid electricity and water platform."""

__version__ = "0.1.0"
__all__ = ["__version__"]
