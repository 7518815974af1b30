"""The verification lifecycle, free of Flask: codes, hashing, phone numbers and the service."""
