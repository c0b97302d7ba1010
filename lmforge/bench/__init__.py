"""Measuring a deployment: load generation against a server, offline speed, resource sampling."""
