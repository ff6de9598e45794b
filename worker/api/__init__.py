"""The HTTP surface: `uvicorn worker.api:app` serves the REST API, the SSE event feed, /metrics and the dashboard.

Embed the pieces in another FastAPI app with ``create_app`` (a whole app) or by using ``get_client`` as a
dependency of your own routes once ``lifespan`` runs (see docs/surfaces.md).
"""

from worker.api.app import app, create_app, lifespan
from worker.api.deps import get_arq, get_client, get_redis

__all__ = ["app", "create_app", "get_arq", "get_client", "get_redis", "lifespan"]
