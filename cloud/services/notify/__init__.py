"""Sending notices (docs/notifications.md): :mod:`.outbox` claims rows across replicas,
:mod:`.templates` renders them, :mod:`.channels` carries them, :mod:`.sender` decides and records,
:mod:`.receipts` stores what the vendors report back, :mod:`.setup` builds it all from settings."""
