"""recaption: improve a text-to-image dataset by recaptioning it, and prove the gain."""

__version__ = "0.1.0"
