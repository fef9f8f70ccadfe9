"""selfimprove: verified chain-of-thought fine-tuning data, earned by the model itself."""

__version__ = "0.1.0"
