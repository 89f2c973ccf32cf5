"""CLI of the real-server area: ``kvbench gateway`` here, ``kvbench model`` and ``kvbench cluster`` from
their own modules."""

from __future__ import annotations

import errno

import typer

from kvbench.errors import fail
from kvbench.http.cluster import register_cluster
from kvbench.http.model import register_model
from kvbench.http.targets import parse_target
from kvbench.params import parse_key_values


def register(app: typer.Typer) -> None:
    @app.command("gateway")
    def gateway(
        workers: str = typer.Option(..., "--workers", help="Comma-separated worker URLs, or a cluster.json."),
        router: str = typer.Option("round_robin", "--router", help="Routing policy (same names as replay)."),
        port: int = typer.Option(8000, "--port", help="Port to listen on."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 exposes the gateway."),
        seed: int = typer.Option(0, "--seed", help="Seed of randomized routers."),
        block_size: int | None = typer.Option(None, "--block-size",
                                                 help="Block size of the router's hashes (default: the worker's)."),
        router_param: list[str] = typer.Option([], "--router-param", help="Router parameter KEY=VALUE (repeatable)."),
        tokenizer: str | None = typer.Option(None, "--tokenizer", help="Local tokenizer dir for text prompts."),
        timeout: float = typer.Option(600.0, "--timeout", help="Per-request upstream timeout in seconds."),
    ) -> None:
        """OpenAI-compatible reverse proxy that routes requests with a kvbench router."""
        from kvbench.http.gateway import GatewayConfig, serve
        from kvbench.routing import ROUTERS, RouterConfig, make_router

        if router not in ROUTERS:
            raise fail(f"--router {router}: unknown router (known: {', '.join(ROUTERS)})")
        if not 0 < port < 65536:
            raise fail(f"--port {port}: must be between 1 and 65535")
        if block_size is not None and block_size <= 0:
            raise fail(f"--block-size {block_size}: must be positive")
        target = parse_target(workers, "--workers")
        config = GatewayConfig(workers=target.urls, router=router, seed=seed,
                               block_size=block_size or target.block_size,
                               router_params=parse_key_values(router_param, "--router-param"),
                               tokenizer=tokenizer, timeout_s=timeout)
        # every parameter is checked before the gateway says it is routing (the real router is built at
        # start-up, once the workers' block size and capacity are known)
        make_router(router, RouterConfig(workers=len(target.urls), block_size=block_size or 16, seed=seed,
                                         params=dict(config.router_params)))
        try:
            serve(config, host=host, port=port)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                raise fail(f"--host {host} --port {port}: cannot listen ({exc.strerror}); pick another port") from None
            raise

    register_model(app)
    register_cluster(app)
