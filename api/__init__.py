"""The REST API: Flask app factory, one blueprint per resource, auth, request schemas."""
