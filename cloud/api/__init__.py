"""The REST API (FastAPI); the only layer that knows HTTP."""

from cloud.api.app import API_PREFIX, build_app, settle_heap, uvicorn_options

__all__ = ["API_PREFIX", "build_app", "settle_heap", "uvicorn_options"]
