"""The hospital node: receives studies, pseudonymises them, sends them to the exchange,
and brings re-identified results back to the PACS."""
