"""A real network fault under a real client: ChaosProxy holds replies, a Timeout cuts them."""

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from resilio import Pipeline, Timeout, TimeoutRejectedError
from resilio.testing import ChaosProxy


async def echo(stream: anyio.abc.SocketStream) -> None:
    async with stream:
        try:
            async for chunk in stream:
                await stream.send(chunk)
        except anyio.BrokenResourceError:
            pass  # the proxy reset the connection


async def ping(port: int) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as conn:
        await conn.send(b"ping")
        return await conn.receive()


async def main() -> None:
    pipeline = Pipeline(Timeout(0.2))
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo)
        async with ChaosProxy("127.0.0.1", listener.extra(SocketAttribute.local_port)) as proxy:
            assert await pipeline.execute(ping, proxy.port) == b"ping"

            proxy.mode, proxy.latency = "latency", 5.0  # every reply held 5 s
            try:
                await pipeline.execute(ping, proxy.port)
                raise AssertionError("the reply was not held")
            except TimeoutRejectedError:
                print("latency: cut after 0.2 s")

            proxy.mode = "pass"
            assert await pipeline.execute(ping, proxy.port) == b"ping"
            print("pass: answered;", proxy.connections, "connections through the proxy")
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main)
