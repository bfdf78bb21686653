"""Host-side backends behind devices: disk images, TAPs, vsock's unix sockets,
consoles.  What a device may ask of one is in :mod:`.interfaces`."""
