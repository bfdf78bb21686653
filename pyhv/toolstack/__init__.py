"""The toolstack: domain configuration, and (to come) the control domain pyhvd."""
