"""The asyncio pool: native async def tasks on one event loop, plain tasks in threads beside it."""
