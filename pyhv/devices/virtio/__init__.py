"""virtio devices (virtio 1.2): split virtqueues, the device model and its transports."""
