"""Thin HTTP routers: parse, call the session service, shape the response."""
