"""Call Centre Agent: classify and route service-desk tickets through a cheap cascade."""

__version__ = "0.1.0"
