"""AIFI: a vendor-neutral path from the hospital PACS to radiology AI products and back."""

__version__ = "0.1.0"
