"""Runs the KubeBlocks test simulator as a process (for `make demo`, where no KubeBlocks runs).

``python -m e2e.simulators.run_kubeblocks --namespace NS`` until SIGTERM. It is a test simulator: it
sets the status KubeBlocks would set and creates the Secrets and Services KubeBlocks would create; it
runs no database.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from lightkube import AsyncClient, KubeConfig

from e2e.simulators.kubeblocks import KubeBlocksSimulator


async def run(namespace: str, kubeconfig: str | None) -> None:
    config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
    client = AsyncClient(config=config, field_manager="kubeblocks-simulator")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with KubeBlocksSimulator(client, namespace, provisioning_seconds=3.0, interval=0.5):
            await stop.wait()
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--kubeconfig")
    args = parser.parse_args()
    asyncio.run(run(args.namespace, args.kubeconfig))


if __name__ == "__main__":
    main()
