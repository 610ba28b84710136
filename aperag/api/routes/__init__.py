"""The API's routers, one module per resource, included from aperag.api.app."""
