"""A WeChat API server for tests and the demo: see :mod:`vendor_sim.wechat.app`."""
