"""purchasepred: predict which items each shopper will buy next."""

__version__ = "0.1.0"
