"""Route modules, each an APIRouter included by aperag.api.app.create_app."""
