"""Legacy PC devices: 16550 UART, i8042 reset line, debug-exit port, port 0x80, fw_cfg."""
