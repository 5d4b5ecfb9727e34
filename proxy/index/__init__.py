"""The simple API's data model: parsing upstream pages, rendering ours, names, negotiation (pure)."""
