"""An MCP session through `km monitor`, driven by the official MCP Python SDK.

Used by tests/e2e/monitor/interop.rs: a client we did not write (the SDK) talks to a server we did
not write (given on the command line, e.g. the official `mcp-server-everything`) through the real
km binary. Prints one JSON object on stdout describing what happened; exits non-zero on failure.

usage: python client.py KM [KM_ARGS...] -- SERVER [SERVER_ARGS...]
"""

import json
import sys

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def session(km, km_args, server):
    params = StdioServerParameters(command=km, args=[*km_args, "monitor", "--", *server])
    report = {}
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as client:
            init = await client.initialize()
            # SDK 2 spells fields in snake_case, SDK 1 in camelCase.
            info = getattr(init, "server_info", None) or getattr(init, "serverInfo")
            report["server"] = info.name
            report["protocol"] = str(getattr(init, "protocol_version", None) or getattr(init, "protocolVersion"))

            tools = await client.list_tools()
            report["tools"] = sorted(t.name for t in tools.tools)

            echo = await client.call_tool("echo", {"message": "hello through km"})
            report["echo"] = " ".join(c.text for c in echo.content if getattr(c, "text", None))

            progress = []

            async def on_progress(value, total, message):
                progress.append(value)

            done = await client.call_tool(
                "trigger-long-running-operation",
                {"duration": 0.5, "steps": 5},
                progress_callback=on_progress,
            )
            report["progress"] = progress
            report["long_result"] = " ".join(c.text for c in done.content if getattr(c, "text", None))

            # Cancel a long call after its first progress: the SDK sends notifications/cancelled.
            first = anyio.Event()

            async def on_first(value, total, message):
                first.set()

            cancelled = {"completed": False}
            async with anyio.create_task_group() as group:

                async def long_call():
                    await client.call_tool(
                        "trigger-long-running-operation",
                        {"duration": 20, "steps": 100},
                        progress_callback=on_first,
                    )
                    cancelled["completed"] = True

                group.start_soon(long_call)
                with anyio.fail_after(10):
                    await first.wait()
                group.cancel_scope.cancel()
            report["cancelled_call_completed"] = cancelled["completed"]

            # The session is still healthy after the cancellation.
            await client.send_ping()
            report["ping_after_cancel"] = True
    return report


def main():
    argv = sys.argv[1:]
    split = argv.index("--")
    km, km_args, server = argv[0], argv[1:split], argv[split + 1 :]
    report = anyio.run(session, km, km_args, server)
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
