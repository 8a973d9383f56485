"""lightsail-inventory: every Lightsail container service of every account and region."""

__version__ = "0.1.0"
