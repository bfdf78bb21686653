"""Legacy PC devices: 16550 UART, i8042 reset line and Ctrl-Alt-Del keyboard, debug-exit port, port 0x80, fw_cfg."""
