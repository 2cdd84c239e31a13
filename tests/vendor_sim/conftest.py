"""Fixtures of the WeChat Pay test kit."""

from tests.paykit import pay_site, receiver  # noqa: F401
