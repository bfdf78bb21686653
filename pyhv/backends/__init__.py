"""Host-side backends behind devices: consoles now; files, TAPs and sockets later."""
