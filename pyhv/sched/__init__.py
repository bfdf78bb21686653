"""vCPU scheduling: Borrowed-Virtual-Time policy (``bvt``) apart from the
mechanism that makes the host obey it (``dispatcher``)."""
