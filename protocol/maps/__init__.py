"""Package data: one Modbus register map per meter model (see :mod:`protocol.modbus_maps`)."""
