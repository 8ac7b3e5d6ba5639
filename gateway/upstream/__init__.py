"""Sending built requests to upstreams: a pooled aiohttp transport and the built-in echo upstream."""
