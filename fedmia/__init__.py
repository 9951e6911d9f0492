"""fedmia: how much each client's data leaks in federated learning, and what protection costs."""

__version__ = "0.1.0"
