"""A real MCP session driven by the official MCP Python SDK, for km's interoperability test.

Usage: python mcp_client.py SERVER_COMMAND [ARGS...]

Starts SERVER_COMMAND (in the test: `km monitor -- node server-everything stdio`) with the SDK's
stdio transport and runs: initialize, tools/list, tools/call echo, tools/call of the
long-running tool with a progress token (progress notifications), a ping, and a tools/call that
the client abandons after a short timeout, which makes the SDK send notifications/cancelled.
Prints one JSON object with what the client observed on stdout; exits non-zero on any failure.
"""

import json
import os
import sys

import anyio
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client


async def main(argv: list[str]) -> dict:
    # Like a real MCP client, pass the server only the SDK's default variables (HOME, PATH, ...),
    # plus the console-logger's settings so the test can read what the plugin saw.
    extra = {k: v for k, v in os.environ.items() if k.startswith("KM_CONSOLE_LOGGER_")}
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=extra)
    observed: dict = {"progress": []}
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write, read_timeout_seconds=30) as session:
            init = await session.initialize()
            observed["server"] = init.server_info.name if hasattr(init, "server_info") else str(init)
            tools = await session.list_tools()
            names = [t.name for t in tools.tools]
            observed["tools"] = names
            echo = await session.call_tool("echo", {"message": "hello through km"})
            observed["echo"] = [c.text for c in echo.content if getattr(c, "type", "") == "text"]

            async def on_progress(progress, total, message):
                observed["progress"].append([progress, total])

            done = await session.call_tool(
                "trigger-long-running-operation",
                {"duration": 0.6, "steps": 3},
                progress_callback=on_progress,
            )
            observed["long_running"] = [c.text for c in done.content if getattr(c, "type", "") == "text"]
            await session.send_ping()
            try:
                await session.call_tool(
                    "trigger-long-running-operation",
                    {"duration": 5, "steps": 5},
                    read_timeout_seconds=0.5,
                )
                observed["abandoned"] = False
            except Exception as e:  # the SDK raises on timeout and sends notifications/cancelled
                observed["abandoned"] = True
                observed["abandon_error"] = type(e).__name__
            # One more round trip after the cancellation: the session is still healthy.
            await session.send_ping()
            observed["after_cancel_ping"] = True
    return observed


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    result = anyio.run(main, sys.argv[1:])
    print(json.dumps(result))
