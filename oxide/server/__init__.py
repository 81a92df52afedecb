"""``oxide serve``: an OpenAI-compatible HTTP server over one model, with continuous batching.

Needs the ``server`` extra (``pip install 'oxide[server]'``: FastAPI, uvicorn, sse-starlette). See
:mod:`oxide.server.app` for the endpoints and :mod:`oxide.engine` for the scheduling.
"""

from __future__ import annotations

from ..api import Model
from ..errors import InvalidOptionError


def require_server_extra() -> None:
    """Raise :class:`InvalidOptionError` naming the missing package when the ``server`` extra is not installed."""
    for module in ("fastapi", "uvicorn", "sse_starlette"):
        try:
            __import__(module)
        except ImportError:
            raise InvalidOptionError(f"oxide serve needs the server extra ({module} is missing): "
                                     f"pip install 'oxide[server]'") from None


def check_options(port: int, max_waiting: int, api_key: str | None) -> None:
    """:class:`InvalidOptionError` for a port, queue length or API key the server cannot use."""
    if not 0 <= port <= 65535:
        raise InvalidOptionError(f"--port {port} is not a TCP port (0 to 65535)")
    if max_waiting < 0:
        raise InvalidOptionError(f"--queue {max_waiting} must be 0 or more")
    if api_key is not None and not api_key.strip():
        raise InvalidOptionError("--api-key is empty; give a key or leave the option out")


def serve(model: Model, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_waiting: int = 64, model_name: str | None = None) -> None:
    """Serve ``model`` until interrupted (Ctrl-C). It binds to loopback unless ``host`` says otherwise."""
    require_server_extra()
    import uvicorn

    from .app import ServerOptions, create_app

    check_options(port, max_waiting, api_key)
    options = ServerOptions(model_name=model_name or model.info.source.path.name, max_waiting=max_waiting,
                            api_key=api_key)
    uvicorn.run(create_app(model, options), host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
