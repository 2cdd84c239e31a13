"""Adapters over third-party clients (MQTT, Redis, ...): each maps its library's errors to ours."""
