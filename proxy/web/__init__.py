"""The HTTP service: the aiohttp application, its handlers, middleware, metrics and edge."""
